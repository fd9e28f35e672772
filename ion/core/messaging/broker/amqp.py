"""
IBrokerConnection for RabbitMQ (AMQP 0-9-1) over txamqp.

One TCP connection at a time per AMQPConnection; when it drops, the
AMQPConnection reconnects, declares its exchanges, queues and bindings again
and resumes its consumers (see AMQPConnection).  Declarations, binds and
publishes share one channel; each consumer gets its own channel, so its
prefetch is its own and cancelling it (closing the channel) requeues exactly
its unacked messages.  A channel the broker closes with an error is replaced
on next use; the connection stays up.

AMQPConnection is a facade over the objects beside it, one job each:
amqp_states (the connection's named states and transitions), amqp_link
(connecting, login, setting up each new connection, shutdown),
amqp_publishing (ordered publishes and calls on the shared channel, confirms,
the in-flight bound), amqp_consumer (Consumer, Delivery and the registry of
running consumers), amqp_topology (what to declare again), amqp_channel (one
channel's plumbing); below them amqp_codec (the wire encoding, which keeps
bodies bytes), amqp_protocol (the txamqp client and delegate, and the spec)
and amqp_errors (txamqp failures as interface exceptions).
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ion.core.messaging.broker.amqp_consumer import Consumer, Consumers, Delivery
from ion.core.messaging.broker.amqp_errors import culprit
from ion.core.messaging.broker.amqp_link import CLOSE_TIMEOUT, HANDSHAKE_NOTICE, HANDSHAKE_TIMEOUT, Link
from ion.core.messaging.broker.amqp_protocol import BASIC, SPEC_PATH, load_spec
from ion.core.messaging.broker.amqp_publishing import Pipeline
from ion.core.messaging.broker.amqp_states import ConnectionState
from ion.core.messaging.broker.amqp_topology import Topology
from ion.core.messaging.broker.resubscribe import redeclare_queue
from ion.core.messaging.broker.interface import EXCHANGE_TYPES, ChannelError, IBrokerConnection, unknown_properties

__all__ = ["CLOSE_TIMEOUT", "HANDSHAKE_NOTICE", "HANDSHAKE_TIMEOUT", "SPEC_PATH", "AMQPConnection", "Consumer",
           "Delivery", "connect", "load_spec"]

log = Logger()


@implementer(IBrokerConnection)
class AMQPConnection:
    """
    IBrokerConnection to RabbitMQ that survives losing its TCP connection;
    make it with `connect(address)`.  It hands each job to one object:

    - `ConnectionState` (amqp_states): CONNECTING, READY, RECONNECTING,
      CLOSING, CLOSED and the transitions between them;
    - `Link` (amqp_link): the ClientService that keeps one TCP connection up,
      login, and what a new connection does before it is READY: declare again
      every exchange, queue and binding recorded in the `Topology`
      (amqp_topology; broker-named queues get new names, which
      `Consumer.queue` and later calls follow) and resume every consumer;
    - `Pipeline` (amqp_publishing): publishes and calls in order on the shared
      channel, publisher confirms, the in-flight bound;
    - `Consumers` (amqp_consumer): the running consumers, each on its own
      channel, and their deliveries; one the broker cancels subscribes
      again (resubscribe.py).

    A cluster address's nodes are taken in turn (nodes.py): each connection
    attempt after a failure or a loss goes to the next one; `node` says
    which one the connection is on.

    While disconnected, a call waits for that up to the address's
    `reconnect_timeout`, then fails with ConnectionLost.  A call in flight
    when the connection dropped is made again on the new one (declarations
    and binds are idempotent; a publish whose confirm had not come is
    published again: at-least-once, so a consumer may see it twice).
    Deliveries of the old connection can no longer be acked: the broker
    redelivers them with redelivered=True.  With confirms off, publishes
    written just before a drop may be lost.

    Backpressure: at most the address's `max_in_flight` publishes are
    written and unconfirmed at a time (`in_flight`); while the transport's
    write buffer is full (it pauses us, as our IPushProducer) nothing more is
    written.  Publishes past either limit wait in call order (`waiting`) and
    their Deferreds fire once they are written and confirmed, so a publisher
    that waits for its publishes is slowed to what the broker takes.
    Calls and publishes take their turns on the shared channel in the order
    they were made, across reconnects too.

    `reactor` makes the TCP connections; every wait (reconnect backoff,
    handshake and close timeouts, heartbeats, reconnect_timeout) is on
    `clock`, the reactor unless given.  The first connection must succeed:
    `connect()` fails at once with the reason if the broker cannot be
    reached or refuses the login.
    """

    def __init__(self, address, reactor=None, clock=None):
        if reactor is None:
            from twisted.internet import reactor
        clock = reactor if clock is None else clock
        self.description = address.description
        self._address = address
        self._state = ConnectionState(address.description, clock)
        self._topology = Topology()
        self._pipeline = Pipeline(self._state, address, self._topology, clock)
        self._consumers = Consumers(self._state, address, self._topology,
                                    lambda queue: redeclare_queue(self, self._topology, queue), clock)
        self._link = Link(self, self._state, self._pipeline, self._consumers, self._topology, address, reactor, clock)
        self._return_listeners = []

    def __repr__(self):
        return "<AMQPConnection %s>" % self.description

    @property
    def max_in_flight(self):
        return self._address.max_in_flight

    @property
    def in_flight(self):
        """Publishes written on the current connection and not yet confirmed (0 with confirms off)."""
        return self._pipeline.in_flight

    @property
    def waiting(self):
        """Calls and publishes made and not yet written (past the bounds, or while disconnected)."""
        return self._pipeline.waiting

    @property
    def connected(self):
        return self._state.ready

    @property
    def node(self):
        """'host:port' of the cluster node of the latest connection (None before the first)."""
        return self._link.node

    # -- IBrokerConnection

    def _call(self, name, **kwargs):
        return self._pipeline.call(name, kwargs)

    def exchange_declare(self, exchange, type="topic", durable=False, auto_delete=True, passive=False):
        if type not in EXCHANGE_TYPES + ("headers",):
            # RabbitMQ answers an unknown type with a connection error; keep the connection.
            return defer.fail(ChannelError("unknown exchange type %r" % (type,), 503))
        flags = dict(type=type, durable=durable, auto_delete=auto_delete)
        d = self._call("exchange_declare", exchange=exchange, passive=passive, **flags)
        return d.addCallback(lambda _: None if passive else self._topology.add_exchange(exchange, flags))

    def exchange_delete(self, exchange, if_unused=False):
        d = self._call("exchange_delete", exchange=exchange, if_unused=if_unused)
        return d.addCallback(lambda _: self._topology.remove_exchange(exchange))

    def queue_declare(self, queue="", durable=False, exclusive=False, auto_delete=True, passive=False, arguments=None):
        flags = dict(durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=arguments or {})

        def declared(reply):
            if not passive:
                self._topology.add_queue(reply.queue, flags)
            return reply.queue

        return self._call("queue_declare", queue=queue, passive=passive, **flags).addCallback(declared)

    def queue_delete(self, queue, if_unused=False, if_empty=False):
        name = self._topology.current(queue)
        # Its consumers, cancelled by the broker, are not subscribed again (a cancel coming after the reply
        # finds the queue unrecorded and gone, and stops the consumer too).
        self._topology.deleting.add(name)

        def deleted(reply):
            self._topology.remove_queue(name)
            return reply.message_count

        def done(result):
            self._topology.deleting.discard(name)
            return result

        d = self._call("queue_delete", queue=queue, if_unused=if_unused, if_empty=if_empty)
        return d.addCallback(deleted).addBoth(done)

    def queue_purge(self, queue):
        return self._call("queue_purge", queue=queue).addCallback(lambda r: r.message_count)

    def queue_depth(self, queue):
        return self._call("queue_declare", queue=queue, passive=True).addCallback(lambda r: r.message_count)

    def queue_bind(self, queue, exchange, routing_key):
        d = self._call("queue_bind", queue=queue, exchange=exchange, routing_key=routing_key)
        return d.addCallback(lambda _: self._topology.bind(queue, exchange, routing_key))

    def queue_unbind(self, queue, exchange, routing_key):
        d = self._call("queue_unbind", queue=queue, exchange=exchange, routing_key=routing_key)
        return d.addCallback(lambda _: self._topology.unbind(queue, exchange, routing_key))

    def exchange_bind(self, destination, source, routing_key):
        d = self._call("exchange_bind", destination=destination, source=source, routing_key=routing_key)
        return d.addCallback(lambda _: self._topology.bind_exchange(destination, source, routing_key))

    def exchange_unbind(self, destination, source, routing_key):
        d = self._call("exchange_unbind", destination=destination, source=source, routing_key=routing_key)
        return d.addCallback(lambda _: self._topology.unbind_exchange(destination, source, routing_key))

    def publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        """Written at once when READY and the shared channel is idle, else queued behind the pending calls."""
        try:
            if self._state.closing:
                raise self._state.not_connected()
            if not isinstance(body, bytes):
                raise TypeError("message body must be bytes, not %s" % type(body).__name__)
            properties = properties or {}
            unknown = unknown_properties(properties)
            if unknown:
                raise ValueError("unknown AMQP properties: %s" % ", ".join(unknown))
        except Exception:
            return defer.fail()
        return self._pipeline.publish((exchange, routing_key, body, properties, mandatory))

    def consume(self, queue, callback, prefetch_count=1, no_ack=False, exclusive=False, consumer_tag=None,
                arguments=None):
        return self._consumers.consume(queue, callback, prefetch_count, no_ack, exclusive, consumer_tag, arguments)

    def add_return_listener(self, listener):
        self._return_listeners.append(listener)

    def remove_return_listener(self, listener):
        if listener in self._return_listeners:
            self._return_listeners.remove(listener)

    def close(self):
        """Stop consumers, close the connection and stop reconnecting; calls still waiting fail."""
        return self._link.close()

    # -- from the txamqp delegate and client (amqp_protocol), to whichever object it concerns

    def _connection_lost(self, client, reason):
        self._link.lost(client, reason)

    def _writing_paused(self, client, paused):
        """The transport's write buffer is full (or has room again)."""
        if client is self._state.client:
            self._pipeline.writing_paused(paused)

    def _confirmed(self, channel, delivery_tag, multiple, ack):
        self._pipeline.confirmed(channel, delivery_tag, multiple, ack)

    def _deliver(self, channel, msg):
        self._consumers.deliver(channel, msg)

    def _cancelled_by_broker(self, channel, msg):
        self._consumers.cancelled_by_broker(channel)

    def _returned(self, msg):
        content = msg.content
        delivery = Delivery(content.body, content.properties, msg.exchange, msg.routing_key)
        for listener in list(self._return_listeners):
            try:
                listener(delivery, msg.reply_code, msg.reply_text)
            except Exception:
                log.failure("return listener {listener} failed", listener=listener)

    def _channel_closed(self, channel, msg):
        """The broker closed a channel: a call failed (and reports it) or something failed unasked (log it)."""
        reported = self._pipeline.channel_closed(channel, msg)
        consumer = self._consumers.channel_closed(channel)
        if reported:
            log.debug("{conn}: broker closed channel {id}: {code} {text}", conn=self.description, id=channel.id,
                      code=msg.reply_code, text=msg.reply_text)
        elif not channel.responses.waiting or culprit(msg) == BASIC["publish"]:
            what = "consumer %s on %r" % (consumer.tag, consumer.queue) if consumer else "channel %d" % channel.id
            log.error("{conn}: broker closed {what}: {code} {text}", conn=self.description, what=what,
                      code=msg.reply_code, text=msg.reply_text)


@defer.inlineCallbacks
def connect(address, reactor=None, clock=None):
    """
    A Deferred firing with an open AMQPConnection to `address` (a BrokerAddress
    of kind 'amqp'); it waits on `clock` (the reactor unless given).
    """
    connection = AMQPConnection(address, reactor, clock)
    yield connection._link.start()
    return connection
