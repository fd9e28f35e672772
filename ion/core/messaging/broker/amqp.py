"""
IBrokerConnection for RabbitMQ (AMQP 0-9-1) over txamqp.

One TCP connection at a time per AMQPConnection; when it drops, the
AMQPConnection reconnects, declares its exchanges, queues and bindings again
and resumes its consumers (see AMQPConnection).  Declarations, binds and
publishes share one channel; each consumer gets its own channel, so its
prefetch is its own and cancelling it (closing the channel) requeues exactly
its unacked messages.  A channel the broker closes with an error is replaced
on next use; the connection stays up.

The rest lives beside it: amqp_codec (the wire encoding, which keeps bodies
bytes), amqp_protocol (the txamqp client and delegate, and the spec),
amqp_errors (txamqp failures as interface exceptions), amqp_topology (what to
declare again) and amqp_consumer (Consumer and Delivery).
"""

import itertools
from collections import deque
from random import random

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from txamqp.client import ChannelClosed, Closed, TwistedEvent
from txamqp.message import Message
from zope.interface import implementer

from ion.core import metrics
from ion.core.messaging.broker.amqp_consumer import Consumer, Delivery
from ion.core.messaging.broker.amqp_errors import (
    broker_error,
    channel_error,
    culprit,
    dropped_under,
    reason_text,
)
from ion.core.messaging.broker.amqp_protocol import (
    SPEC_PATH,
    Client,
    Delegate,
    load_spec,
)
from ion.core.messaging.broker.amqp_topology import Topology
from ion.core.messaging.broker.interface import (
    EXCHANGE_TYPES,
    PROPERTY_NAMES,
    BrokerError,
    ChannelError,
    ConnectionLost,
    IBrokerConnection,
    MessageRefused,
    ResourceLocked,
)

__all__ = ["SPEC_PATH", "AMQPConnection", "Consumer", "Delivery", "connect", "load_spec"]

log = Logger()

# A peer that takes the TCP connection but does not speak AMQP (wrong port, a proxy with nothing
# behind it, a hung broker) is given up on after HANDSHAKE_TIMEOUT s; after HANDSHAKE_NOTICE s the log
# says which handshake step is awaited.  A broker answers the whole handshake in milliseconds.
HANDSHAKE_TIMEOUT = 10
HANDSHAKE_NOTICE = 3
CLOSE_TIMEOUT = 5
# Waits between connection attempts: 0.375 s, growing by half each time up to 3 s, plus up to 0.5 s
# of jitter, so a restarted broker is back in use within about 4 s and containers do not reconnect in step.
RECONNECT_POLICY = backoffPolicy(initialDelay=0.25, maxDelay=3.0, jitter=lambda: random() / 2)


class _PendingConfirms:
    """Publishes on one confirm-mode channel that wait for the broker's basic.ack."""

    def __init__(self, channel):
        self.channel = channel
        self.next_tag = 1
        self.waiting = {}  # delivery tag -> (Deferred, message), in publish order

    def add(self, message):
        d = defer.Deferred()
        self.waiting[self.next_tag] = (d, message)
        self.next_tag += 1
        return d

    def settle(self, tag, multiple, ack):
        tags = [t for t in itertools.takewhile(lambda t: t <= tag, self.waiting)] if multiple else [tag]
        for t in tags:
            d, _ = self.waiting.pop(t, (None, None))
            if d is None:
                continue
            if ack:
                d.callback(None)
            else:
                d.errback(MessageRefused("the broker refused the message (basic.nack)"))

    def take_all(self):
        """Every unconfirmed (Deferred, message), oldest first; none are left waiting."""
        waiting, self.waiting = self.waiting, {}
        return list(waiting.values())

    def fail_all(self, error):
        for d, _ in self.take_all():
            d.errback(error)


class _Turn:
    """
    A publish (`message`) or a synchronous method (`call`: name, kwargs) waiting for its turn on the
    shared channel; `done` fires with its outcome.  `deadline` is when it gives up waiting for a
    lost connection (None while connected).
    """

    __slots__ = ("done", "message", "call", "deadline")

    def __init__(self, message=None, call=None, done=None, deadline=None):
        self.done = defer.Deferred() if done is None else done
        self.message, self.call, self.deadline = message, call, deadline


@implementer(IBrokerConnection)
class AMQPConnection:
    """
    IBrokerConnection to RabbitMQ that survives losing its TCP connection;
    make it with `connect(address)`.

    A `ClientService` keeps one txamqp connection up, reconnecting with
    backoff.  Each new connection logs in, declares again every exchange,
    queue and binding recorded in its `Topology` (broker-named queues get new
    names, which `Consumer.queue` and later calls follow) and resumes every
    consumer; only then do calls go on.

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

    The first connection must succeed: `connect()` fails at once with the
    reason if the broker cannot be reached or refuses the login.
    """

    def __init__(self, address, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.description = address.description
        self._address = address
        self._reactor = reactor
        self._spec = load_spec()
        self._basic = self._spec.classes.byname["basic"].methods.byname
        factory = Factory.forProtocol(lambda: Client(Delegate(self), address.vhost, self._spec, address.heartbeat,
                                                      reactor))
        factory.noisy = False
        # prepareConnection only starts the AMQP handshake: ClientService cannot take a connection
        # lost while it is being prepared (no transition for it), so _setup drops a connection it
        # cannot use, and ClientService connects again.
        self._service = ClientService(address.endpoint(reactor), factory, retryPolicy=RECONNECT_POLICY, clock=reactor,
                                      prepareConnection=self._connection_made)
        self._client = None  # the current txamqp connection, from TCP connect until it is lost
        self._ready = False  # logged in, topology restored: calls may go on
        self._waiters = []  # Deferreds of calls waiting for _ready
        self._ops = None  # channel for declarations, binds and publishes
        self._pending = None  # _PendingConfirms of the ops channel, with confirms on
        self._turns = deque()  # _Turns of calls and publishes waiting for the ops channel, in call order
        self._taking_turns = False  # _take_turns is running
        self._wake = None  # Deferred _take_turns waits on until something changes
        self._paused = False  # the transport's write buffer is full
        self._warned_waiting = False  # about publishes piling up, since the queue was last empty
        self._topology = Topology()
        self._consumers = []  # every running Consumer, resumed after a reconnect
        self._channels = {}  # channel id -> Consumer, on the current connection
        self._return_listeners = []
        self._first = None  # Deferred of the first connection attempt
        self._lost_at = None  # when a ready connection was lost
        self._closing = False
        self._closed = TwistedEvent()

    def __repr__(self):
        return "<AMQPConnection %s>" % self.description

    @property
    def max_in_flight(self):
        return self._address.max_in_flight

    @property
    def in_flight(self):
        """Publishes written on the current connection and not yet confirmed (0 with confirms off)."""
        return len(self._pending.waiting) if self._pending is not None else 0

    @property
    def waiting(self):
        """Calls and publishes made and not yet written (past the bounds, or while disconnected)."""
        return len(self._turns)

    # -- connecting

    @defer.inlineCallbacks
    def _start(self):
        """Connect for the first time; fails (and gives up) if that does not work."""
        self._first = defer.Deferred()
        self._service.startService()
        self._service.whenConnected(failAfterFailures=1).addErrback(self._first_failed)
        try:
            yield self._first
        except BaseException:
            yield self._service.stopService()
            raise
        finally:
            self._first = None

    def _first_failed(self, failure):
        if failure.check(defer.CancelledError):
            return
        error = ConnectionLost("cannot connect to %s: %s" % (self.description, reason_text(failure)))
        # Later: ClientService is in the middle of a transition and cannot be stopped from inside it.
        self._reactor.callLater(0, lambda: self._first is None or self._first.called or self._first.errback(error))

    def _connection_made(self, proxy):
        """A new TCP connection: set it up on its own (see __init__); ClientService has nothing to wait for."""
        self._setup(proxy.delegate.client)

    @defer.inlineCallbacks
    def _setup(self, client):
        """Log in on a new TCP connection, declare everything again and resume consumers; then calls go on."""
        self._client = client
        self._paused = False
        try:
            yield self._login(client)
            yield self._ops_channel()
            resumed = yield self._restore()
        except Exception as e:
            self._setup_failed(client, e)
            return
        if self._closing:
            return  # close() is dropping this connection
        self._ready = True
        if self._lost_at is None:
            log.info("connected to {conn}", conn=self.description)
        else:
            log.info("reconnected to {conn} after {seconds:.1f} s; resumed {count} consumers", conn=self.description,
                     seconds=self._reactor.seconds() - self._lost_at, count=resumed)
            self._lost_at = None
            metrics.broker_reconnects.inc()
        if self._first is not None:
            self._first.callback(None)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        for turn in self._turns:
            turn.deadline = None
        self._kick()

    def _setup_failed(self, client, e):
        if self._first is not None and not self._first.called:
            self._first.errback(e if isinstance(e, BrokerError) else
                                ConnectionLost("cannot connect to %s: %s" % (self.description, reason_text(e))))
        elif isinstance(e, BrokerError):
            if not self._closing:
                log.warn("{e}; retrying", e=e)
        else:  # a bug: show where
            log.failure("setting up the connection to {conn} failed; retrying", conn=self.description)
        client.transport.abortConnection()

    @defer.inlineCallbacks
    def _login(self, client):
        address = self._address
        peer = _peer_of(client, self.description)
        login = client.authenticate(address.username, address.password, mechanism="PLAIN")
        login.addTimeout(HANDSHAKE_TIMEOUT, self._reactor)
        notice = self._reactor.callLater(
            HANDSHAKE_NOTICE, lambda: log.info("{conn}: connected to {peer}, still waiting for AMQP {step} after {s} s"
                                               " (giving up after {limit} s)", conn=self.description, peer=peer,
                                               step=client.waiting_for, s=HANDSHAKE_NOTICE, limit=HANDSHAKE_TIMEOUT))
        try:
            yield login
        except Exception as e:
            if isinstance(e, defer.TimeoutError):
                raise ConnectionLost("no AMQP %s from %s within %d s (is it an AMQP 0-9-1 broker?)"
                                     % (client.waiting_for, peer, HANDSHAKE_TIMEOUT)) from None
            if isinstance(e, Closed) and e.args and isinstance(e.args[0], Message):  # the broker said no
                raise BrokerError("%s refused to open as %r: %s" % (self.description, address.username, reason_text(e))) from None
            raise ConnectionLost("cannot connect to %s: %s" % (self.description, reason_text(e))) from None
        finally:
            if notice.active():
                notice.cancel()

    @defer.inlineCallbacks
    def _restore(self):
        """
        Exchanges, exchange bindings, queues, queue bindings, then consumers, as
        recorded; fires with the number of consumers resumed.
        """
        topology = self._topology
        for name, flags in list(topology.exchanges.items()):
            if (yield self._redo("exchange %r" % name, "exchange_declare", exchange=name, **flags)) is None:
                topology.remove_exchange(name)
        for destination, source, key in list(topology.exchange_bindings):
            what = "binding of exchange %r to %r with %r" % (destination, source, key)
            if (yield self._redo(what, "exchange_bind", destination=destination, source=source, routing_key=key)) is None:
                topology.exchange_bindings.pop((destination, source, key), None)
        for name, (flags, broker_named) in list(topology.queues.items()):
            reply = yield self._redo("queue %r" % name, "queue_declare", queue="" if broker_named else name, **flags)
            if reply is None:
                topology.remove_queue(name)
            elif reply.queue != name:
                topology.rename(name, reply.queue)  # consumers follow in _start_consumer
        for queue, exchange, key in list(topology.bindings):
            what = "binding of %r to %r with %r" % (queue, exchange, key)
            if (yield self._redo(what, "queue_bind", queue=queue, exchange=exchange, routing_key=key)) is None:
                topology.bindings.pop((queue, exchange, key), None)
        resumed = 0
        for consumer in list(self._consumers):
            if consumer._stopping:
                continue
            try:
                yield self._start_consumer(consumer)
                resumed += 1
            except ChannelError as e:
                if isinstance(e, ResourceLocked):
                    raise  # an exclusive consumer of the old connection, not yet noticed gone
                log.error("{conn}: cannot resume consumer {tag} on {queue}: {e}; it is stopped", conn=self.description,
                          tag=consumer.tag, queue=consumer.queue, e=e)
                consumer._stop()
        return resumed

    @defer.inlineCallbacks
    def _redo(self, what, name, **kwargs):
        """
        One declaration again on the ops channel.  One the broker refuses for
        good is logged and forgotten (fires None); ResourceLocked (the broker
        has not yet noticed the old connection is gone) fails the setup, so
        ClientService tries again later.
        """
        channel = yield self._ops_channel()
        try:
            return (yield self._invoke(channel, name, **kwargs))
        except ChannelError as e:
            if isinstance(e, ResourceLocked):
                raise
            log.error("{conn}: cannot declare {what} again: {e}; forgetting it", conn=self.description, what=what, e=e)
            return None

    def _when_ready(self):
        """Fires once calls can go on; fails with ConnectionLost after reconnect_timeout or on close()."""
        if self._ready:
            return defer.succeed(None)
        timeout = self._address.reconnect_timeout
        if self._closing or timeout <= 0:
            return defer.fail(self._not_connected())
        d = defer.Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        d.addTimeout(timeout, self._reactor)

        def timed_out(failure):
            failure.trap(defer.TimeoutError)
            raise ConnectionLost("not reconnected to %s within %g s (reconnect_timeout)" % (self.description, timeout))

        return d.addErrback(timed_out)

    @property
    def connected(self):
        return self._ready and not self._closing

    def _not_connected(self):
        state = "closed" if self._closing else "lost"
        return ConnectionLost("connection to %s is %s" % (self.description, state))

    # -- plumbing

    def _check_open(self):
        if self._client is None or self._closing:
            raise self._not_connected()

    def _invoke(self, channel, name, **kwargs):
        return getattr(channel, name)(**kwargs).addErrback(broker_error)

    @defer.inlineCallbacks
    def _open_channel(self):
        self._check_open()
        client = self._client
        channel = client.new_channel()
        try:
            yield self._invoke(channel, "channel_open")
        except BrokerError:
            client.forget_channel(channel)
            raise
        return channel

    @defer.inlineCallbacks
    def _ops_channel(self):
        """The shared channel, opened (in confirm mode when asked) if it is not open."""
        if self._ops is None or self._ops.closed:
            channel = yield self._open_channel()
            if self._address.confirms:
                yield self._invoke(channel, "confirm_select", nowait=False)
                self._pending = _PendingConfirms(channel)
            self._ops = channel
        return self._ops

    @defer.inlineCallbacks
    def _close_channel(self, channel):
        try:
            yield self._invoke(channel, "channel_close", reply_code=200, reply_text="done", class_id=0, method_id=0)
        finally:
            channel.client.forget_channel(channel)

    def _call(self, name, **kwargs):
        """One synchronous method on the shared channel; calls queue up so an error belongs to one call."""
        return self._enqueue(_Turn(call=(name, kwargs))).addErrback(broker_error)

    # -- turns on the shared channel

    def _enqueue(self, turn):
        if not self._ready:
            turn.deadline = self._reactor.seconds() + self._address.reconnect_timeout
        self._turns.append(turn)
        if len(self._turns) > self._address.max_in_flight and not self._warned_waiting:
            self._warned_waiting = True
            log.warn("{conn}: {count} publishes and calls are waiting to be sent ({why}); a publisher that does not"
                     " wait for publish() to fire keeps adding to them", conn=self.description, count=len(self._turns),
                     why=self._why_waiting())
        self._kick()
        return turn.done

    def _why_waiting(self):
        if not self._ready:
            return "not connected"
        if self._paused:
            return "the connection's write buffer is full"
        return "%d publishes await the broker's confirm, max_in_flight" % self.in_flight

    def _room(self):
        """May one more publish be written now?"""
        return not self._paused and (self._pending is None or len(self._pending.waiting) < self._address.max_in_flight)

    def _kick(self):
        """Something changed (a confirm, the transport, the connection): waiting turns may go on."""
        if self._taking_turns:
            wake, self._wake = self._wake, None
            if wake is not None:
                wake.callback(None)
        elif self._turns:
            self._take_turns()

    def _until_kicked(self, timeout=None):
        self._wake = d = defer.Deferred()
        if timeout is not None:
            timer = self._reactor.callLater(timeout, self._kick)
            d.addCallback(lambda _: timer.cancel() if timer.active() else None)
        return d

    @defer.inlineCallbacks
    def _take_turns(self):
        """Write waiting publishes and make waiting calls, oldest first, as the bounds and the connection allow."""
        self._taking_turns = True
        try:
            while self._turns:
                turn = self._turns[0]
                if self._closing:
                    self._give_up(self._not_connected())
                elif not self._ready:
                    if turn.deadline is None:
                        turn.deadline = self._reactor.seconds() + self._address.reconnect_timeout
                    left = turn.deadline - self._reactor.seconds()
                    if left > 0:
                        yield self._until_kicked(left)
                    else:
                        self._give_up(self._not_reconnected(), self._reactor.seconds())
                elif turn.call is not None:
                    yield self._take_call(turn)
                elif self._ops is None or self._ops.closed:
                    yield self._open_ops_for(turn)
                elif self._room():
                    self._turns.popleft()
                    defer.maybeDeferred(self._send, turn.message).chainDeferred(turn.done)
                else:
                    yield self._until_kicked()
        except Exception:
            log.failure("{conn}: sending waiting publishes failed", conn=self.description)
            self._give_up(BrokerError("internal error sending to %s" % self.description))
        finally:
            self._taking_turns = False
            self._wake = None
            if not self._turns:
                self._warned_waiting = False

    @defer.inlineCallbacks
    def _take_call(self, turn):
        name, kwargs = turn.call
        if "queue" in kwargs:
            kwargs["queue"] = self._topology.current(kwargs["queue"])
        try:
            result = yield self._call_once(name, kwargs)
        except Exception as e:
            if not self._closing and dropped_under(e):
                return  # in flight when the connection dropped: made again once reconnected
            self._turns.remove(turn)  # publishes to send again may have been put before it meanwhile
            turn.done.errback()
        else:
            self._turns.remove(turn)
            turn.done.callback(result)

    @defer.inlineCallbacks
    def _open_ops_for(self, turn):
        """(Re)open the shared channel for a waiting publish; a refusal is that publish's failure."""
        try:
            yield self._ops_channel()
        except Exception as e:
            if self._closing or not dropped_under(e):
                self._turns.remove(turn)
                turn.done.errback()

    def _give_up(self, error, now=None):
        """Fail every waiting turn, or (with `now`) those whose reconnect deadline has passed."""
        while self._turns and (now is None or self._turns[0].deadline <= now):
            self._turns.popleft().done.errback(error)

    def _not_reconnected(self):
        timeout = self._address.reconnect_timeout
        if timeout <= 0:
            return self._not_connected()
        return ConnectionLost("not reconnected to %s within %g s (reconnect_timeout)" % (self.description, timeout))

    @defer.inlineCallbacks
    def _call_once(self, name, kwargs):
        for retry in (True, False):
            channel = yield self._ops_channel()
            try:
                return (yield getattr(channel, name)(**kwargs))
            except ChannelClosed as e:
                # A publish sent just before us failed and took the channel down: not our error.
                if not (retry and culprit(e.args[0]) == self._basic["publish"]):
                    raise

    # -- IBrokerConnection

    def exchange_declare(self, exchange, type="topic", durable=False, auto_delete=True, passive=False):
        if type not in EXCHANGE_TYPES + ("headers",):
            # RabbitMQ answers an unknown type with a connection error; keep the connection.
            return defer.fail(ChannelError("unknown exchange type %r" % (type,), 503))
        flags = dict(type=type, durable=durable, auto_delete=auto_delete)

        def declared(_):
            if not passive:
                self._topology.exchanges[exchange] = flags

        return self._call("exchange_declare", exchange=exchange, passive=passive, **flags).addCallback(declared)

    def exchange_delete(self, exchange, if_unused=False):
        d = self._call("exchange_delete", exchange=exchange, if_unused=if_unused)
        return d.addCallback(lambda _: self._topology.remove_exchange(exchange))

    def queue_declare(self, queue="", durable=False, exclusive=False, auto_delete=True, passive=False, arguments=None):
        flags = dict(durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=arguments or {})

        def declared(reply):
            if not passive:
                # RabbitMQ reserves 'amq.' for the names it makes: such a queue is declared with '' again.
                self._topology.queues[reply.queue] = (flags, reply.queue.startswith("amq."))
            return reply.queue

        return self._call("queue_declare", queue=queue, passive=passive, **flags).addCallback(declared)

    def queue_delete(self, queue, if_unused=False, if_empty=False):
        def deleted(reply):
            self._topology.remove_queue(self._topology.current(queue))
            return reply.message_count

        return self._call("queue_delete", queue=queue, if_unused=if_unused, if_empty=if_empty).addCallback(deleted)

    def queue_purge(self, queue):
        return self._call("queue_purge", queue=queue).addCallback(lambda r: r.message_count)

    def queue_depth(self, queue):
        return self._call("queue_declare", queue=queue, passive=True).addCallback(lambda r: r.message_count)

    def queue_bind(self, queue, exchange, routing_key):
        def bound(_):
            self._topology.bindings[self._topology.current(queue), exchange, routing_key] = None

        return self._call("queue_bind", queue=queue, exchange=exchange, routing_key=routing_key).addCallback(bound)

    def queue_unbind(self, queue, exchange, routing_key):
        def unbound(_):
            self._topology.bindings.pop((self._topology.current(queue), exchange, routing_key), None)

        return self._call("queue_unbind", queue=queue, exchange=exchange, routing_key=routing_key).addCallback(unbound)

    def exchange_bind(self, destination, source, routing_key):
        def bound(_):
            self._topology.exchange_bindings[destination, source, routing_key] = None

        d = self._call("exchange_bind", destination=destination, source=source, routing_key=routing_key)
        return d.addCallback(bound)

    def exchange_unbind(self, destination, source, routing_key):
        def unbound(_):
            self._topology.exchange_bindings.pop((destination, source, routing_key), None)

        d = self._call("exchange_unbind", destination=destination, source=source, routing_key=routing_key)
        return d.addCallback(unbound)

    def publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        """Written at once when connected and the shared channel is idle, else queued behind the pending calls."""
        try:
            if self._closing:
                raise self._not_connected()
            if not isinstance(body, bytes):
                raise TypeError("message body must be bytes, not %s" % type(body).__name__)
            properties = properties or {}
            unknown = set(properties) - set(PROPERTY_NAMES)
            if unknown:
                raise ValueError("unknown AMQP properties: %s" % ", ".join(sorted(unknown)))
        except Exception:
            return defer.fail()
        message = (exchange, routing_key, body, properties, mandatory)
        if not self._turns and self._ready and self._ops is not None and not self._ops.closed and self._room():
            return defer.maybeDeferred(self._send, message).addErrback(broker_error)
        return self._enqueue(_Turn(message=message)).addErrback(broker_error)

    def _send(self, message):
        """Write one publish on the ops channel; a Deferred for its confirm (or already fired)."""
        self._check_open()
        exchange, routing_key, body, properties, mandatory = message
        if not exchange:  # straight to a queue, which may be a broker-named one renamed since
            routing_key = self._topology.current(routing_key)
        args = (0, exchange, routing_key, mandatory, False)
        frames = self._client.content_frames(self._ops.id, self._basic["publish"], args, body, properties)
        confirmed = self._pending.add(message) if self._address.confirms else defer.succeed(None)
        self._client.write(frames)
        return confirmed

    @defer.inlineCallbacks
    def consume(self, queue, callback, prefetch_count=1, no_ack=False, exclusive=False, consumer_tag=None):
        queue = self._topology.current(queue)
        consumer = Consumer(self, queue, callback, prefetch_count, no_ack, exclusive, consumer_tag)
        while True:
            yield self._when_ready()
            try:
                yield self._start_consumer(consumer)
                break
            except Exception as e:
                if self._closing or not dropped_under(e):
                    raise
        if not consumer._stopping:
            self._consumers.append(consumer)
        return consumer

    @defer.inlineCallbacks
    def _start_consumer(self, consumer):
        """basic.consume on a new channel of the current connection."""
        channel = yield self._open_channel()
        consumer.queue = self._topology.current(consumer.queue)
        consumer._channel = channel
        self._channels[channel.id] = consumer
        try:
            yield self._invoke(channel, "basic_qos", prefetch_size=0, prefetch_count=consumer._prefetch_count,
                               global_=False)
            reply = yield self._invoke(channel, "basic_consume", queue=consumer.queue,
                                       consumer_tag=consumer._requested_tag or "", no_ack=consumer._no_ack,
                                       exclusive=consumer._exclusive)
        except BaseException:
            if self._channels.get(channel.id) is consumer:
                del self._channels[channel.id]
            if not channel.closed:
                yield self._close_channel(channel).addErrback(lambda _: None)
            raise
        consumer.tag = reply.consumer_tag
        if consumer._stopping:  # cancelled meanwhile
            yield consumer._cancel()

    def _forget_consumer(self, consumer):
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        channel = consumer._channel
        if channel is not None and self._channels.get(channel.id) is consumer:
            del self._channels[channel.id]
        # The broker deletes an auto-delete queue with its last consumer: do not declare it again.
        flags, _ = self._topology.queues.get(consumer.queue, ({}, False))
        if flags.get("auto_delete") and not any(c.queue == consumer.queue for c in self._consumers):
            self._topology.remove_queue(consumer.queue)

    def add_return_listener(self, listener):
        self._return_listeners.append(listener)

    def remove_return_listener(self, listener):
        if listener in self._return_listeners:
            self._return_listeners.remove(listener)

    def close(self):
        """Stop consumers, close the connection and stop reconnecting; calls still waiting fail."""
        if not self._closing:
            self._closing = True
            self._shutdown().addErrback(lambda f: log.failure("closing {conn}", f, conn=self.description))
        return self._closed.wait().addCallback(lambda _: None)

    @defer.inlineCallbacks
    def _shutdown(self):
        try:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.errback(self._not_connected())
            self._kick()  # waiting publishes and calls fail
            if self._ready:
                yield defer.DeferredList([c.cancel() for c in list(self._consumers)])
            if self._ready:
                closing = self._client.channel_now(0).connection_close(reply_code=200, reply_text="Goodbye",
                                                                       class_id=0, method_id=0)
                closing.addTimeout(CLOSE_TIMEOUT, self._reactor)
                try:
                    yield closing
                except Exception as e:
                    log.debug("connection.close on {conn}: {e}", conn=self.description, e=e)
            for consumer in list(self._consumers):
                consumer._stop()
            abort_later = None
            if self._client is not None:  # a broker that stopped reading must not keep us waiting
                self._client.transport.loseConnection()
                abort_later = self._reactor.callLater(CLOSE_TIMEOUT, self._client.transport.abortConnection)
            yield self._service.stopService()
            if abort_later is not None and abort_later.active():
                abort_later.cancel()
        finally:
            # Not from inside ClientService's state transition, which may have resumed us: whoever
            # waits for close() must be free to call it.
            self._reactor.callLater(0, self._closed.fire)

    # -- from the delegate

    def _deliver(self, channel, msg):
        consumer = self._channels.get(channel.id)
        if consumer is None or consumer._channel is not channel:
            log.debug("delivery for a cancelled consumer on channel {id} dropped", id=channel.id)
            return
        consumer._deliver(channel, msg)

    def _returned(self, msg):
        content = msg.content
        delivery = Delivery(content.body, content.properties, msg.exchange, msg.routing_key)
        for listener in list(self._return_listeners):
            try:
                listener(delivery, msg.reply_code, msg.reply_text)
            except Exception:
                log.failure("return listener {listener} failed", listener=listener)

    def _cancelled_by_broker(self, channel, msg):
        consumer = self._channels.get(channel.id)
        if consumer is not None:
            log.warn("broker cancelled consumer {tag} on {queue} (queue deleted?)", tag=consumer.tag, queue=consumer.queue)
            self._topology.remove_queue(consumer.queue)
            consumer.cancel()

    def _confirmed(self, channel, delivery_tag, multiple, ack):
        if self._pending is not None and self._pending.channel is channel:
            self._pending.settle(delivery_tag, multiple, ack)
            if self._turns:
                self._kick()

    def _writing_paused(self, client, paused):
        """From the transport, through Client: its write buffer is full (or has room again)."""
        if client is self._client:
            self._paused = paused
            if not paused:
                self._kick()

    def _channel_closed(self, channel, msg):
        """The broker closed a channel: a call failed (and reports it) or something failed unasked (log it)."""
        if channel is self._ops:
            self._ops = None
        reported = False
        if self._pending is not None and self._pending.channel is channel:
            pending, self._pending = self._pending, None
            if culprit(msg) == self._basic["publish"]:
                # One of the unconfirmed publishes was refused, which one is not said: they all carry the reason.
                reported = bool(pending.waiting)
                pending.fail_all(channel_error(msg))
            else:
                # A call's error closed the channel: the publishes written before it go again, on a new one.
                self._turns.extendleft(reversed([_Turn(message=m, done=d) for d, m in pending.take_all()]))
            self._kick()
        consumer = self._channels.get(channel.id)
        if consumer is not None:
            consumer._stop()
        if reported:
            log.debug("{conn}: broker closed channel {id}: {code} {text}", conn=self.description, id=channel.id,
                      code=msg.reply_code, text=msg.reply_text)
        elif not channel.responses.waiting or culprit(msg) == self._basic["publish"]:
            what = "consumer %s on %r" % (consumer.tag, consumer.queue) if consumer else "channel %d" % channel.id
            log.error("{conn}: broker closed {what}: {code} {text}", conn=self.description, what=what,
                      code=msg.reply_code, text=msg.reply_text)

    def _connection_lost(self, client, reason):
        """The TCP connection `client` is gone: calls wait for the next one, unconfirmed publishes go again."""
        if client is not self._client:
            return
        was_ready = self._ready
        self._client, self._ready, self._ops, self._channels = None, False, None, {}
        pending, self._pending = self._pending, None
        if self._closing:
            if pending is not None:
                pending.fail_all(self._not_connected())
            self._kick()
            return
        if was_ready:
            self._lost_at = self._reactor.seconds()
            log.warn("connection to {conn} lost: {why}; reconnecting", conn=self.description, why=reason_text(reason))
        # Unconfirmed publishes go again first, in their order: they were made before anything waiting.
        deadline = self._reactor.seconds() + self._address.reconnect_timeout
        again = [_Turn(message=message, done=confirmed) for confirmed, message in
                 (pending.take_all() if pending is not None else ())]
        self._turns.extendleft(reversed(again))
        for turn in self._turns:
            if turn.deadline is None:
                turn.deadline = deadline
        self._kick()


def _peer_of(client, fallback):
    """'host:port' of the other end of a client's transport, for messages about the handshake."""
    try:
        peer = client.transport.getPeer()
        return "%s:%d" % (peer.host, peer.port)
    except (AttributeError, TypeError):
        return fallback


@defer.inlineCallbacks
def connect(address, reactor=None):
    """A Deferred firing with an open AMQPConnection to `address` (a BrokerAddress of kind 'amqp')."""
    connection = AMQPConnection(address, reactor)
    yield connection._start()
    return connection
