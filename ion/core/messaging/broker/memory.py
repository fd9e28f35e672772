"""
An in-process broker with RabbitMQ's AMQP 0-9-1 semantics.

Connections made to the same named broker share its exchanges and queues just
as connections to one RabbitMQ do, so containers run (and are tested) in one
process with no broker installed.  `EmbeddedBroker` is the server: it owns
exchanges, queues and bindings and enforces RabbitMQ's rules (redeclaration,
exclusivity, auto-delete, dead-lettering, length limits, queue types,
cancelling the consumers of a deleted queue).  `MemoryConnection` is a
client of it implementing IBrokerConnection; like the AMQP one, it records
what it declared and subscribes a consumer the broker cancelled again
(resubscribe.py).

The parts it is built from live beside it: exchange routing in
memory_routing.py, queues, consumers and deliveries in memory_queue.py,
streams in memory_stream.py, the queue types' rules in memory_types.py, and
the reactor-driven delivery pump (deliveries and returns are never handed out
from inside `publish`) in memory_pump.py.
"""

import secrets

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ion.core.messaging.broker.interface import (
    EXCHANGE_TYPES,
    ChannelError,
    ConnectionLost,
    IBrokerConnection,
    MessageRefused,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
    unknown_properties,
)
from ion.core.messaging.broker.memory_pump import DeliveryPump
from ion.core.messaging.broker.memory_queue import (
    OVERFLOW_MODES,
    Consumer,
    Delivery,
    Message,
    Queue,
    copy_properties,
    dead_letter_properties,
    is_cycle,
)
from ion.core.messaging.broker.memory_routing import EXCHANGE_CLASSES, DefaultExchange, queues_reached
from ion.core.messaging.broker.memory_stream import StreamQueue
from ion.core.messaging.broker.memory_types import (
    check_consume,
    check_declaration,
    connection_exception,
    queue_type_of,
)
from ion.core.messaging.broker.resubscribe import Resubscriptions, redeclare_queue
from ion.core.messaging.broker.topology import Topology

__all__ = ["EmbeddedBroker", "MemoryConnection", "connect", "get_broker"]

log = Logger()

# Queue arguments RabbitMQ compares on re-declaration (it ignores the rest).
_EQUIVALENT_ARGUMENTS = (
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-delivery-limit",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
)

_LENGTH_ARGUMENTS = ("x-max-length", "x-max-length-bytes")


_brokers = {}


def get_broker(name="default"):
    """The process-wide broker called `name`, created on first use."""
    broker = _brokers.get(name)
    if broker is None:
        broker = _brokers[name] = EmbeddedBroker(name)
    return broker


def connect(name="default"):
    """A new connection to the shared broker `name`; fires with a MemoryConnection."""
    return defer.succeed(MemoryConnection(get_broker(name)))


def _generated_name(prefix):
    # Same shape as RabbitMQ's amq.gen-/amq.ctag- names.
    return prefix + secrets.token_urlsafe(16)


def _access_refused(text):
    return ChannelError("ACCESS_REFUSED - " + text, 403)


def _resource_locked(name):
    return ResourceLocked("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue %r" % name)


def _inequivalent(arg, kind, name, received, current):
    return PreconditionFailed(
        "PRECONDITION_FAILED - inequivalent arg %r for %s %r: received %r but current is %r"
        % (arg, kind, name, received, current)
    )


def _incoming(destination):
    """The (exchange, routing_key) bindings that lead to a queue or exchange."""
    return destination.bindings if isinstance(destination, (Queue, StreamQueue)) else destination.incoming


def _check_limit_arguments(name, arguments):
    """Refuse length-limit arguments RabbitMQ refuses, with its reasons."""

    def invalid(arg, why):
        return PreconditionFailed("PRECONDITION_FAILED - invalid arg %r for queue %r: %s" % (arg, name, why))

    for arg in _LENGTH_ARGUMENTS:
        value = arguments.get(arg)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid(arg, "expected integer, got %s" % type(value).__name__)
        if value < 0:
            raise invalid(arg, "{value_negative,%d}" % value)
    overflow = arguments.get("x-overflow")
    if overflow is not None:
        if not isinstance(overflow, str):
            raise invalid("x-overflow", "{unacceptable_type,%s}" % type(overflow).__name__)
        if overflow not in OVERFLOW_MODES:
            raise invalid("x-overflow", "invalid_overflow")


class EmbeddedBroker:
    """
    The in-memory server state: exchanges, queues and bindings, shared by every
    MemoryConnection made to it.  Methods taking `conn` are the server side of
    the MemoryConnection operations and raise ChannelErrors like RabbitMQ.
    """

    def __init__(self, name="default", clock=None, wall_clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.name = name
        self.clock = clock
        # Stamps stream messages and resolves relative stream offsets (tests may give a task.Clock).
        self.wall_clock = clock if wall_clock is None else wall_clock
        self._pump = DeliveryPump(clock)
        self._connections = set()
        self.reset()

    def reset(self):
        """Close every connection and forget all exchanges and queues (for tests)."""
        for conn in list(self._connections):
            conn.close()
        self._pump.reset()
        self.queues = {}
        self.exchanges = {"": DefaultExchange(self.queues)}
        for type_ in EXCHANGE_TYPES:
            self.exchanges["amq." + type_] = EXCHANGE_CLASSES[type_]("amq." + type_, True, False)

    # -- delivery pump

    def wake(self, queue):
        """Note that `queue` may be able to deliver, and make sure the pump runs."""
        self._pump.wake(queue)

    # -- connections

    def connected(self, conn):
        self._connections.add(conn)

    def disconnected(self, conn):
        for consumer in list(conn.consumers):
            self.cancel(consumer)
        for queue in list(conn.exclusive_queues):
            self._delete_queue(queue)
        self._connections.discard(conn)
        if not self._connections:
            # Nobody is left to consume: leave nothing scheduled on the reactor.
            self._pump.stop()

    # -- exchanges

    def _refuse_default(self, exchange):
        if exchange == "":
            raise _access_refused("operation not permitted on the default exchange")

    def exchange_declare(self, conn, name, type, durable, auto_delete, passive):
        self._refuse_default(name)
        exchange = self.exchanges.get(name)
        if passive:
            if exchange is None:
                raise NotFound("NOT_FOUND - no exchange %r" % name)
            return
        if type not in EXCHANGE_CLASSES:
            raise ChannelError("COMMAND_INVALID - unknown exchange type %r" % type, 503)
        if exchange is None:
            if name.startswith("amq."):
                raise _access_refused("exchange name %r contains reserved prefix 'amq.*'" % name)
            self.exchanges[name] = EXCHANGE_CLASSES[type](name, durable, auto_delete)
            return
        for arg, received, current in (
            ("type", type, exchange.type),
            ("durable", durable, exchange.durable),
            ("auto_delete", auto_delete, exchange.auto_delete),
        ):
            if received != current:
                raise _inequivalent(arg, "exchange", name, received, current)

    def exchange_delete(self, conn, name, if_unused):
        self._refuse_default(name)
        if name.startswith("amq."):
            raise _access_refused("deletion of system exchange %r not allowed" % name)
        exchange = self.exchanges.get(name)
        if exchange is None:
            return
        if if_unused and exchange.bindings:
            raise PreconditionFailed("PRECONDITION_FAILED - exchange %r in use" % name)
        del self.exchanges[name]
        for destination, routing_key in list(exchange.bindings):
            _incoming(destination).discard((exchange, routing_key))
        for source, routing_key in list(exchange.incoming):
            self._remove_binding(source, exchange, routing_key)

    def _exchange(self, name):
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise NotFound("NOT_FOUND - no exchange %r" % name)
        return exchange

    # -- queues

    def _usable_queue(self, conn, name):
        """The queue `conn` may use (it exists and is not another connection's exclusive one)."""
        queue = self.queues.get(name)
        if queue is None:
            raise NotFound("NOT_FOUND - no queue %r" % name)
        if queue.owner is not None and queue.owner is not conn:
            raise _resource_locked(name)
        return queue

    def queue_declare(self, conn, name, durable, exclusive, auto_delete, passive, arguments):
        if passive:
            return self._usable_queue(conn, name).name
        if name.startswith("amq."):
            # Even a broker-named queue may only be re-declared passively.
            raise _access_refused("queue name %r contains reserved prefix 'amq.*'" % name)
        arguments = dict(arguments or {})
        _check_limit_arguments(name, arguments)
        owner = conn if exclusive else None
        queue = self.queues.get(name) if name else None
        if queue is None:
            queue_type = check_declaration(name, durable, exclusive, auto_delete, arguments)
            name = name or _generated_name("amq.gen-")
            if queue_type == "stream":
                queue = StreamQueue(name, durable, owner, auto_delete, arguments, self)
            else:
                queue = Queue(name, durable, owner, auto_delete, arguments, queue_type)
            self.queues[name] = queue
            if owner is not None:
                conn.exclusive_queues.add(queue)
            return name
        if queue.owner is not owner:
            raise _resource_locked(name)
        for arg, received, current in (
            ("durable", durable, queue.durable),
            ("auto_delete", auto_delete, queue.auto_delete),
        ):
            if received != current:
                raise _inequivalent(arg, "queue", name, received, current)
        for arg in _EQUIVALENT_ARGUMENTS:
            received, current = arguments.get(arg), queue.arguments.get(arg)
            if arg == "x-queue-type":  # 'classic' and no type are the same
                received, current = queue_type_of(arguments), queue_type_of(queue.arguments)
            if received != current:
                raise _inequivalent(arg, "queue", name, arguments.get(arg), queue.arguments.get(arg))
        return name

    def queue_delete(self, conn, name, if_unused, if_empty):
        if name not in self.queues:
            return 0
        queue = self._usable_queue(conn, name)
        if if_unused and queue.consumers:
            raise PreconditionFailed("PRECONDITION_FAILED - queue %r in use" % name)
        if if_empty and queue.ready:
            raise PreconditionFailed("PRECONDITION_FAILED - queue %r not empty" % name)
        count = queue.purge()
        self._delete_queue(queue)
        return count

    def _delete_queue(self, queue):
        # Messages still unacked by its consumers are lost, as in RabbitMQ.
        del self.queues[queue.name]
        if queue.owner is not None:
            queue.owner.exclusive_queues.discard(queue)
        for consumer in queue.consumers:
            consumer.active = False
            consumer.unacked.clear()
            consumer.connection.consumers.pop(consumer, None)
            # RabbitMQ's basic.cancel to a consumer_cancel_notify client: later, not from inside this call.
            self.clock.callLater(0, consumer.connection.cancelled_by_broker, consumer)
        queue.consumers.clear()
        queue.purge()
        for exchange, routing_key in list(queue.bindings):
            self._remove_binding(exchange, queue, routing_key)
        self._pump.forget(queue)

    def queue_purge(self, conn, name):
        queue = self._usable_queue(conn, name)
        if queue.type == "stream":
            error = connection_exception("queue.purge not supported by stream queues queue %r in vhost '/'" % name)
            self.connection_exception(conn, error.text)
            raise error
        return queue.purge()

    def queue_depth(self, conn, name):
        return self._usable_queue(conn, name).depth()

    # -- bindings

    def queue_bind(self, conn, queue_name, exchange_name, routing_key):
        self._refuse_default(exchange_name)
        exchange = self._exchange(exchange_name)
        queue = self._usable_queue(conn, queue_name)
        exchange.bind(queue, routing_key)
        queue.bindings.add((exchange, routing_key))

    def queue_unbind(self, conn, queue_name, exchange_name, routing_key):
        self._refuse_default(exchange_name)
        queue = self.queues.get(queue_name)
        exchange = self.exchanges.get(exchange_name)
        if queue is None or exchange is None or (exchange, routing_key) not in queue.bindings:
            return
        self._usable_queue(conn, queue_name)
        self._remove_binding(exchange, queue, routing_key)

    def exchange_bind(self, conn, destination_name, source_name, routing_key):
        self._refuse_default(destination_name)
        self._refuse_default(source_name)
        source, destination = self._exchange(source_name), self._exchange(destination_name)
        source.bind(destination, routing_key)
        destination.incoming.add((source, routing_key))

    def exchange_unbind(self, conn, destination_name, source_name, routing_key):
        self._refuse_default(destination_name)
        self._refuse_default(source_name)
        source, destination = self.exchanges.get(source_name), self.exchanges.get(destination_name)
        if source is not None and destination is not None and (source, routing_key) in destination.incoming:
            self._remove_binding(source, destination, routing_key)

    def _remove_binding(self, exchange, destination, routing_key):
        """Remove one binding; an auto-delete exchange goes with its last one (and so may what it fed)."""
        exchange.unbind(destination, routing_key)
        _incoming(destination).discard((exchange, routing_key))
        if exchange.auto_delete and not exchange.bindings and self.exchanges.get(exchange.name) is exchange:
            self.exchange_delete(None, exchange.name, False)

    # -- messages

    def publish(self, conn, exchange_name, routing_key, body, properties, mandatory):
        if not isinstance(body, bytes):
            raise TypeError("message body must be bytes, not %s" % type(body).__name__)
        properties = properties or {}
        unknown = unknown_properties(properties)
        if unknown:
            raise ValueError("unknown message properties: %s" % ", ".join(unknown))
        properties = copy_properties(properties)
        exchange = self._exchange(exchange_name)
        queues = queues_reached(exchange, routing_key)
        if not queues and mandatory:
            message = Message(body, properties, exchange_name, routing_key, 0)
            self._pump.schedule_return(conn, Delivery(message))
        if self._enqueue(queues, exchange_name, routing_key, body, properties):
            # What RabbitMQ's confirm says when a queue refused it; the queues with room keep it.
            raise MessageRefused("the broker refused the message (basic.nack)")

    def _enqueue(self, queues, exchange_name, routing_key, body, properties):
        """Put the message on each of `queues` that takes it, enforcing their limits; return how many refused."""
        refused = 0
        for queue in queues:
            if queue.limited and queue.refuses(body):
                refused += 1
                if queue.overflow == "reject-publish-dlx":
                    self.dead_letter(queue, Message(body, properties, exchange_name, routing_key, 0), "maxlen")
                continue
            queue.enqueue(body, properties, exchange_name, routing_key)
            if queue.limited:
                self._drop_overflow(queue)
            if queue.consumers:
                self.wake(queue)
        return refused

    def _drop_overflow(self, queue, requeued=False):
        for message in queue.drop_overflow(requeued):
            self.dead_letter(queue, message, "maxlen")

    def requeue(self, queue, messages):
        """
        Give messages back to their queue; a drop-head queue then trims its
        oldest, as RabbitMQ does.  A quorum queue dead-letters those past its
        x-delivery-limit instead (gone, without a dead-letter exchange).
        """
        for message in queue.requeue(messages):
            self.dead_letter(queue, message, "delivery_limit")
        self._drop_overflow(queue, requeued=True)

    def dead_letter(self, queue, message, reason):
        """Republish to the queue's x-dead-letter-exchange with RabbitMQ's x-death headers."""
        exchange = self.exchanges.get(queue.arguments.get("x-dead-letter-exchange"))
        if exchange is None:
            return
        properties = dead_letter_properties(queue, message, reason)
        routing_key = queue.arguments.get("x-dead-letter-routing-key", message.routing_key)
        targets = [target for target in queues_reached(exchange, routing_key) if not is_cycle(target.name, properties)]
        # A dead letter a queue refuses is gone: RabbitMQ dead-letters at most once, unconfirmed.
        self._enqueue(targets, exchange.name, routing_key, message.body, properties)

    # -- consumers

    def consume(self, conn, queue_name, callback, prefetch_count, no_ack, exclusive, consumer_tag, arguments):
        arguments = dict(arguments or {})
        queue = self._consumable_queue(conn, queue_name, prefetch_count, no_ack, exclusive, arguments)
        tag = consumer_tag or _generated_name("amq.ctag-")
        consumer = Consumer(self, conn, queue, callback, prefetch_count, no_ack, exclusive, tag)
        consumer.arguments = arguments
        self._attach(consumer, queue)
        return consumer

    def consume_again(self, conn, consumer, queue_name):
        """A consumer this broker cancelled (its queue was deleted) consumes from `queue_name`."""
        queue = self._consumable_queue(conn, queue_name, consumer._prefetch, consumer._no_ack, consumer.exclusive,
                                       consumer.arguments)
        consumer.attach(queue)
        self._attach(consumer, queue)

    def _consumable_queue(self, conn, queue_name, prefetch_count, no_ack, exclusive, arguments):
        queue = self._usable_queue(conn, queue_name)
        try:
            check_consume(queue, prefetch_count, no_ack, arguments)
        except ChannelError as e:
            if e.code == 540:
                self.connection_exception(conn, e.text)
            raise
        if queue.consumers and (exclusive or queue.consumers[0].exclusive):
            raise _access_refused("queue %r in exclusive use" % queue_name)
        return queue

    def _attach(self, consumer, queue):
        if queue.type == "stream":
            consumer.position = queue.start_position(consumer.arguments.get("x-stream-offset", "next"))
        queue.consumers.append(consumer)
        consumer.connection.consumers[consumer] = None
        if queue.ready:
            self.wake(queue)

    def connection_exception(self, conn, text):
        """What RabbitMQ does on a connection exception: log it and close the connection (on the next turn)."""
        log.error("{conn}: connection exception: {text}; closing the connection", conn=conn.description, text=text)
        self.clock.callLater(0, conn.close)

    def seconds(self):
        """The wall clock's time (for streams)."""
        return self.wall_clock.seconds()

    def cancel(self, consumer):
        """Stop a consumer: its unacked messages go back, an auto-delete queue may go."""
        if not consumer.active:
            return
        consumer.active = False
        consumer.connection.consumers.pop(consumer, None)
        queue = consumer._queue
        queue.consumers.remove(consumer)
        self.requeue(queue, list(consumer.unacked.values()))
        consumer.unacked.clear()
        if queue.auto_delete and not queue.consumers:
            self._delete_queue(queue)
            consumer.connection.topology.remove_queue(queue.name)  # gone with its consumer: not declared again
        elif queue.ready:
            self.wake(queue)


@implementer(IBrokerConnection)
class MemoryConnection:
    """A connection to an EmbeddedBroker; operations complete synchronously, deliveries do not."""

    def __init__(self, broker):
        self.broker = broker
        self.description = "embedded broker %r" % broker.name
        self.closed = False
        self.consumers = {}  # ordered set of this connection's consumers
        self.exclusive_queues = set()
        self.topology = Topology()  # what it declared, to declare again for a consumer the broker cancelled
        self._resubscriptions = Resubscriptions(broker.clock)
        self._return_listeners = []
        broker.connected(self)

    @property
    def connected(self):
        return not self.closed

    # A publish is routed before publish() returns: nothing is ever in flight or waiting.
    in_flight = 0
    waiting = 0

    def _call(self, operation, *args):
        if self.closed:
            return defer.fail(ConnectionLost("connection to %s is closed" % self.description))
        return defer.maybeDeferred(operation, self, *args)

    def _recorded(self, d, record, *args):
        """`d`, recording its success in the topology with record(*args)."""
        return d.addCallback(lambda result: (record(*args), result)[1])

    def exchange_declare(self, exchange, type="topic", durable=False, auto_delete=True, passive=False):
        d = self._call(self.broker.exchange_declare, exchange, type, durable, auto_delete, passive)
        if passive:
            return d
        flags = dict(type=type, durable=durable, auto_delete=auto_delete)
        return self._recorded(d, self.topology.add_exchange, exchange, flags)

    def exchange_delete(self, exchange, if_unused=False):
        d = self._call(self.broker.exchange_delete, exchange, if_unused)
        return self._recorded(d, self.topology.remove_exchange, exchange)

    def queue_declare(self, queue="", durable=False, exclusive=False, auto_delete=True, passive=False, arguments=None):
        d = self._call(self.broker.queue_declare, queue, durable, exclusive, auto_delete, passive, arguments)
        if passive:
            return d
        flags = dict(durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=arguments or {})
        return d.addCallback(lambda name: (self.topology.add_queue(name, flags), name)[1])

    def queue_delete(self, queue, if_unused=False, if_empty=False):
        d = self._call(self.broker.queue_delete, queue, if_unused, if_empty)
        return self._recorded(d, self.topology.remove_queue, queue)

    def queue_purge(self, queue):
        return self._call(self.broker.queue_purge, queue)

    def queue_depth(self, queue):
        return self._call(self.broker.queue_depth, queue)

    def queue_bind(self, queue, exchange, routing_key):
        d = self._call(self.broker.queue_bind, queue, exchange, routing_key)
        return self._recorded(d, self.topology.bind, queue, exchange, routing_key)

    def queue_unbind(self, queue, exchange, routing_key):
        d = self._call(self.broker.queue_unbind, queue, exchange, routing_key)
        return self._recorded(d, self.topology.unbind, queue, exchange, routing_key)

    def exchange_bind(self, destination, source, routing_key):
        d = self._call(self.broker.exchange_bind, destination, source, routing_key)
        return self._recorded(d, self.topology.bind_exchange, destination, source, routing_key)

    def exchange_unbind(self, destination, source, routing_key):
        d = self._call(self.broker.exchange_unbind, destination, source, routing_key)
        return self._recorded(d, self.topology.unbind_exchange, destination, source, routing_key)

    def publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        # _call without maybeDeferred: the broker's publish returns nothing or raises.
        if self.closed:
            return defer.fail(ConnectionLost("connection to %s is closed" % self.description))
        try:
            self.broker.publish(self, exchange, routing_key, body, properties, mandatory)
        except Exception:
            return defer.fail()
        return defer.succeed(None)

    def consume(self, queue, callback, prefetch_count=1, no_ack=False, exclusive=False, consumer_tag=None,
                arguments=None):
        return self._call(
            self.broker.consume, queue, callback, prefetch_count, no_ack, exclusive, consumer_tag, arguments
        )

    def add_return_listener(self, listener):
        self._return_listeners.append(listener)

    def remove_return_listener(self, listener):
        if listener in self._return_listeners:
            self._return_listeners.remove(listener)

    def cancelled_by_broker(self, consumer):
        """The broker deleted `consumer`'s queue: declare it again as recorded and consume (see resubscribe.py)."""
        if self.closed or consumer.stopped:
            return
        queue = consumer.queue
        if queue not in self.topology.queues:  # deleted by this connection, or never declared by it: gone
            log.debug("{conn}: queue {queue} deleted; consumer {tag} is stopped", conn=self.description, queue=queue,
                      tag=consumer.tag)
            return
        log.warn("{conn}: the broker cancelled consumer {tag} on {queue} (queue deleted); declaring it again and"
                 " subscribing again", conn=self.description, tag=consumer.tag, queue=queue)

        @defer.inlineCallbacks
        def attempt():
            name = yield redeclare_queue(self, self.topology, queue)
            yield self._call(self.broker.consume_again, consumer, name)

        def wanted():
            return not (self.closed or consumer.stopped or consumer.active)

        self._resubscriptions.start(attempt, wanted, "%s: consumer on %r" % (self.description, queue))

    def returned(self, delivery):
        """Hand an unroutable mandatory message to the return listeners (from the pump)."""
        if self.closed:
            return
        for listener in list(self._return_listeners):
            try:
                listener(delivery, 312, "NO_ROUTE")
            except Exception:
                log.failure("Return listener {listener!r} failed", listener=listener)

    def close(self):
        if not self.closed:
            self.closed = True
            self._resubscriptions.stop()
            self.broker.disconnected(self)
        return defer.succeed(None)
