"""
An in-process broker with RabbitMQ's AMQP 0-9-1 semantics.

Connections made to the same named broker share its exchanges and queues just
as connections to one RabbitMQ do, so containers run (and are tested) in one
process with no broker installed.  `EmbeddedBroker` is the server: it owns
exchanges, queues and bindings and enforces RabbitMQ's rules (redeclaration,
exclusivity, auto-delete, dead-lettering).  `MemoryConnection` is a client of
it implementing IBrokerConnection.

Deliveries and returned messages are handed out by a pump that runs from the
reactor, never from inside `publish`, so callers see the same asynchrony as
over a network; one pump turn moves many messages for throughput.
"""

import secrets
from collections import deque
from datetime import datetime, timezone

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ion.core.messaging.broker.interface import (
    EXCHANGE_TYPES,
    PROPERTY_NAMES,
    ChannelError,
    ConnectionLost,
    IBrokerConnection,
    IConsumer,
    IDelivery,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from ion.core.messaging.broker.topic import TopicTrie

__all__ = ["EmbeddedBroker", "MemoryConnection", "connect", "get_broker"]

log = Logger()

# Deliveries handed out in one reactor turn before other events get a go.
_PUMP_BATCH = 2000

# Queue arguments RabbitMQ compares on re-declaration (it ignores the rest).
_EQUIVALENT_ARGUMENTS = (
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-queue-type",
)

_PROPERTY_SET = frozenset(PROPERTY_NAMES)

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


def _copy_properties(properties):
    """A private copy, so a publisher's or consumer's later changes stay its own."""
    copied = {name: value for name, value in properties.items() if value is not None}
    headers = copied.get("headers")
    if headers is not None:
        copied["headers"] = dict(headers)
    return copied


class _Exchange:
    """An exchange's bindings, and how a routing key selects queues from them."""

    def __init__(self, name, durable, auto_delete):
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.bindings = set()  # of (queue, routing_key)

    def bind(self, queue, routing_key):
        if (queue, routing_key) not in self.bindings:
            self.bindings.add((queue, routing_key))
            self._indexed(queue, routing_key)

    def unbind(self, queue, routing_key):
        self.bindings.discard((queue, routing_key))
        self._unindexed(queue, routing_key)


class _DirectExchange(_Exchange):
    type = "direct"

    def __init__(self, name, durable, auto_delete):
        super().__init__(name, durable, auto_delete)
        self._by_key = {}

    def _indexed(self, queue, routing_key):
        self._by_key.setdefault(routing_key, set()).add(queue)

    def _unindexed(self, queue, routing_key):
        queues = self._by_key.get(routing_key, set())
        queues.discard(queue)
        if not queues:
            self._by_key.pop(routing_key, None)

    def route(self, routing_key):
        return self._by_key.get(routing_key, ())


class _FanoutExchange(_Exchange):
    type = "fanout"

    def __init__(self, name, durable, auto_delete):
        super().__init__(name, durable, auto_delete)
        self._queues = frozenset()

    def _indexed(self, queue, routing_key):
        self._queues = frozenset(q for q, _ in self.bindings)

    _unindexed = _indexed

    def route(self, routing_key):
        return self._queues


class _TopicExchange(_Exchange):
    type = "topic"

    # Distinct routing keys remembered before the route cache starts over.
    _CACHE_SIZE = 10000

    def __init__(self, name, durable, auto_delete):
        super().__init__(name, durable, auto_delete)
        self._trie = TopicTrie()
        self._cache = {}

    def _indexed(self, queue, routing_key):
        self._trie.add(routing_key, queue)
        self._cache.clear()

    def _unindexed(self, queue, routing_key):
        self._trie.remove(routing_key, queue)
        self._cache.clear()

    def route(self, routing_key):
        queues = self._cache.get(routing_key)
        if queues is None:
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.clear()
            queues = self._cache[routing_key] = tuple(self._trie.match(routing_key))
        return queues


class _DefaultExchange:
    """The nameless direct exchange every queue is implicitly bound to by name."""

    name = ""
    type = "direct"

    def __init__(self, queues):
        self._queues = queues

    def route(self, routing_key):
        queue = self._queues.get(routing_key)
        return () if queue is None else (queue,)


_EXCHANGE_CLASSES = {cls.type: cls for cls in (_DirectExchange, _FanoutExchange, _TopicExchange)}
assert set(_EXCHANGE_CLASSES) == set(EXCHANGE_TYPES)


class _Message:
    """One message as it sits in one queue (each queue keeps its own redelivered flag)."""

    __slots__ = ("body", "properties", "exchange", "routing_key", "redelivered", "seq")

    def __init__(self, body, properties, exchange, routing_key, seq):
        self.body = body
        self.properties = properties
        self.exchange = exchange
        self.routing_key = routing_key
        self.redelivered = False
        self.seq = seq


class _Queue:
    def __init__(self, name, durable, owner, auto_delete, arguments):
        self.name = name
        self.durable = durable
        self.owner = owner  # the connection of an exclusive queue, else None
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.ready = deque()
        self.consumers = deque()  # round-robin order: the next one is at the left
        self.bindings = set()  # of (exchange, routing_key)
        self._seq = 0

    def enqueue(self, body, properties, exchange, routing_key):
        self._seq += 1
        self.ready.append(_Message(body, properties, exchange, routing_key, self._seq))

    def requeue(self, messages):
        """Put messages back in their original order ahead of newer ones, as RabbitMQ does."""
        for message in messages:
            message.redelivered = True
            position = next((i for i, waiting in enumerate(self.ready) if waiting.seq > message.seq), len(self.ready))
            self.ready.insert(position, message)

    def deliver(self, budget):
        """Hand up to `budget` ready messages to consumers round-robin; return how many went."""
        ready, consumers = self.ready, self.consumers
        sent = 0
        while ready and sent < budget:
            for _ in range(len(consumers)):
                consumer = consumers[0]
                consumers.rotate(-1)
                if consumer.wants_more():
                    break
            else:
                break
            consumer.deliver(ready.popleft())
            sent += 1
        return sent


@implementer(IDelivery)
class _Delivery:
    __slots__ = (
        "body", "properties", "exchange", "routing_key", "redelivered", "delivery_tag", "consumer_tag", "_consumer"
    )

    def __init__(self, message, delivery_tag=None, consumer=None):
        self.body = message.body
        self.properties = _copy_properties(message.properties)
        self.exchange = message.exchange
        self.routing_key = message.routing_key
        self.redelivered = message.redelivered
        self.delivery_tag = delivery_tag
        self.consumer_tag = consumer.tag if consumer is not None else None
        self._consumer = consumer

    def ack(self):
        if self._consumer is not None:
            self._consumer.settle(self.delivery_tag)

    def reject(self, requeue=False):
        if self._consumer is not None:
            self._consumer.settle(self.delivery_tag, reject=True, requeue=requeue)


@implementer(IConsumer)
class _Consumer:
    def __init__(self, broker, connection, queue, callback, prefetch_count, no_ack, exclusive, tag):
        self.queue = queue.name
        self.tag = tag
        self.connection = connection
        self.exclusive = exclusive
        self.active = True
        self.unacked = {}  # delivery tag -> _Message
        self._broker = broker
        self._queue = queue
        self._callback = callback
        self._prefetch = prefetch_count
        self._no_ack = no_ack
        self._next_tag = 1

    def wants_more(self):
        return self._no_ack or not self._prefetch or len(self.unacked) < self._prefetch

    def deliver(self, message):
        tag = self._next_tag
        self._next_tag += 1
        if not self._no_ack:
            self.unacked[tag] = message
        try:
            self._callback(_Delivery(message, tag, self))
        except Exception:
            log.failure("Consumer {tag} of queue {queue} failed", tag=self.tag, queue=self.queue)

    def settle(self, delivery_tag, reject=False, requeue=False):
        """Ack or reject; a no-op once the consumer is gone or the tag was settled."""
        message = self.unacked.pop(delivery_tag, None)
        if message is None:
            return
        if reject and requeue:
            self._queue.requeue((message,))
        elif reject:
            self._broker.dead_letter(self._queue, message, "rejected")
        if self._queue.ready:
            self._broker.wake(self._queue)

    def cancel(self):
        self._broker.cancel(self)
        return defer.succeed(None)


class EmbeddedBroker:
    """
    The in-memory server state: exchanges, queues and bindings, shared by every
    MemoryConnection made to it.  Methods taking `conn` are the server side of
    the MemoryConnection operations and raise ChannelErrors like RabbitMQ.
    """

    def __init__(self, name="default", clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.name = name
        self._clock = clock
        self._connections = set()
        self.reset()

    def reset(self):
        """Close every connection and forget all exchanges and queues (for tests)."""
        for conn in list(self._connections):
            conn.close()
        self._dirty = {}  # queues that may have deliveries to make, in order
        self._returns = deque()  # (connection, delivery) of unroutable mandatory messages
        self._pump_call = None
        self.queues = {}
        self.exchanges = {"": _DefaultExchange(self.queues)}
        for type_ in EXCHANGE_TYPES:
            self.exchanges["amq." + type_] = _EXCHANGE_CLASSES[type_]("amq." + type_, True, False)

    # -- delivery pump

    def wake(self, queue):
        """Note that `queue` may be able to deliver, and make sure the pump runs."""
        self._dirty[queue] = None
        self._schedule()

    def _schedule(self):
        if self._pump_call is None:
            self._pump_call = self._clock.callLater(0, self._pump)

    def _pump(self):
        budget = _PUMP_BATCH
        try:
            while self._returns:
                conn, delivery = self._returns.popleft()
                conn.returned(delivery)
            while self._dirty and budget > 0:
                queue = next(iter(self._dirty))
                del self._dirty[queue]
                budget -= queue.deliver(budget)
                if budget <= 0:
                    self._dirty[queue] = None
        finally:
            self._pump_call = None
            if self._dirty or self._returns:
                self._schedule()

    def _idle(self):
        # With no connections nobody can consume; drop the pending pump so
        # that nothing is left scheduled on the reactor.
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
            self._pump_call = None
        self._dirty.clear()
        self._returns.clear()

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
            self._idle()

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
        if type not in _EXCHANGE_CLASSES:
            raise ChannelError("COMMAND_INVALID - unknown exchange type %r" % type, 503)
        if exchange is None:
            if name.startswith("amq."):
                raise _access_refused("exchange name %r contains reserved prefix 'amq.*'" % name)
            self.exchanges[name] = _EXCHANGE_CLASSES[type](name, durable, auto_delete)
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
        for queue, routing_key in exchange.bindings:
            queue.bindings.discard((exchange, routing_key))
        del self.exchanges[name]

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
        owner = conn if exclusive else None
        queue = self.queues.get(name) if name else None
        if queue is None:
            name = name or _generated_name("amq.gen-")
            queue = self.queues[name] = _Queue(name, durable, owner, auto_delete, arguments)
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
            if arguments.get(arg) != queue.arguments.get(arg):
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
        count = len(queue.ready)
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
        queue.consumers.clear()
        queue.ready.clear()
        for exchange, routing_key in list(queue.bindings):
            self._remove_binding(exchange, queue, routing_key)
        self._dirty.pop(queue, None)

    def queue_purge(self, conn, name):
        queue = self._usable_queue(conn, name)
        count = len(queue.ready)
        queue.ready.clear()
        return count

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

    def _remove_binding(self, exchange, queue, routing_key):
        exchange.unbind(queue, routing_key)
        queue.bindings.discard((exchange, routing_key))
        if exchange.auto_delete and not exchange.bindings and self.exchanges.get(exchange.name) is exchange:
            del self.exchanges[exchange.name]

    # -- messages

    def publish(self, conn, exchange_name, routing_key, body, properties, mandatory):
        if not isinstance(body, bytes):
            raise TypeError("message body must be bytes, not %s" % type(body).__name__)
        properties = properties or {}
        unknown = properties.keys() - _PROPERTY_SET
        if unknown:
            raise ValueError("unknown message properties: %s" % ", ".join(sorted(unknown)))
        properties = _copy_properties(properties)
        exchange = self._exchange(exchange_name)
        if not self._route(exchange, exchange_name, routing_key, body, properties) and mandatory:
            message = _Message(body, properties, exchange_name, routing_key, 0)
            self._returns.append((conn, _Delivery(message)))
            self._schedule()

    def _route(self, exchange, exchange_name, routing_key, body, properties):
        """Enqueue on every queue the exchange selects; return how many."""
        queues = exchange.route(routing_key)
        for queue in queues:
            queue.enqueue(body, properties, exchange_name, routing_key)
            if queue.consumers:
                self.wake(queue)
        return len(queues)

    def dead_letter(self, queue, message, reason):
        """Republish to the queue's x-dead-letter-exchange with RabbitMQ's x-death headers."""
        exchange = self.exchanges.get(queue.arguments.get("x-dead-letter-exchange"))
        if exchange is None:
            return
        properties = _copy_properties(message.properties)
        headers = properties["headers"] = dict(properties.get("headers") or {})
        deaths = [dict(death) for death in headers.get("x-death", ())]
        for death in deaths:
            if death.get("queue") == queue.name and death.get("reason") == reason:
                deaths.remove(death)
                death["count"] = death.get("count", 0) + 1
                break
        else:
            death = {
                "count": 1,
                "reason": reason,
                "queue": queue.name,
                "time": datetime.now(timezone.utc).replace(microsecond=0),
                "exchange": message.exchange,
                "routing-keys": [message.routing_key],
            }
            expiration = properties.pop("expiration", None)
            if expiration is not None:
                death["original-expiration"] = expiration
        headers["x-death"] = [death] + deaths
        for field, value in (("reason", reason), ("queue", queue.name), ("exchange", message.exchange)):
            headers.setdefault("x-first-death-" + field, value)
        routing_key = queue.arguments.get("x-dead-letter-routing-key", message.routing_key)
        self._route(exchange, exchange.name, routing_key, message.body, properties)

    # -- consumers

    def consume(self, conn, queue_name, callback, prefetch_count, no_ack, exclusive, consumer_tag):
        queue = self._usable_queue(conn, queue_name)
        if queue.consumers and (exclusive or queue.consumers[0].exclusive):
            raise _access_refused("queue %r in exclusive use" % queue_name)
        tag = consumer_tag or _generated_name("amq.ctag-")
        consumer = _Consumer(self, conn, queue, callback, prefetch_count, no_ack, exclusive, tag)
        queue.consumers.append(consumer)
        conn.consumers[consumer] = None
        if queue.ready:
            self.wake(queue)
        return consumer

    def cancel(self, consumer):
        """Stop a consumer: its unacked messages go back, an auto-delete queue may go."""
        if not consumer.active:
            return
        consumer.active = False
        consumer.connection.consumers.pop(consumer, None)
        queue = consumer._queue
        queue.consumers.remove(consumer)
        queue.requeue(consumer.unacked.values())
        consumer.unacked.clear()
        if queue.auto_delete and not queue.consumers:
            self._delete_queue(queue)
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
        self._return_listeners = []
        broker.connected(self)

    @property
    def connected(self):
        return not self.closed

    def _call(self, operation, *args):
        if self.closed:
            return defer.fail(ConnectionLost("connection to %s is closed" % self.description))
        return defer.maybeDeferred(operation, self, *args)

    def exchange_declare(self, exchange, type="topic", durable=False, auto_delete=True, passive=False):
        return self._call(self.broker.exchange_declare, exchange, type, durable, auto_delete, passive)

    def exchange_delete(self, exchange, if_unused=False):
        return self._call(self.broker.exchange_delete, exchange, if_unused)

    def queue_declare(self, queue="", durable=False, exclusive=False, auto_delete=True, passive=False, arguments=None):
        return self._call(self.broker.queue_declare, queue, durable, exclusive, auto_delete, passive, arguments)

    def queue_delete(self, queue, if_unused=False, if_empty=False):
        return self._call(self.broker.queue_delete, queue, if_unused, if_empty)

    def queue_purge(self, queue):
        return self._call(self.broker.queue_purge, queue)

    def queue_bind(self, queue, exchange, routing_key):
        return self._call(self.broker.queue_bind, queue, exchange, routing_key)

    def queue_unbind(self, queue, exchange, routing_key):
        return self._call(self.broker.queue_unbind, queue, exchange, routing_key)

    def publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        return self._call(self.broker.publish, exchange, routing_key, body, properties, mandatory)

    def consume(self, queue, callback, prefetch_count=1, no_ack=False, exclusive=False, consumer_tag=None):
        return self._call(self.broker.consume, queue, callback, prefetch_count, no_ack, exclusive, consumer_tag)

    def add_return_listener(self, listener):
        self._return_listeners.append(listener)

    def remove_return_listener(self, listener):
        if listener in self._return_listeners:
            self._return_listeners.remove(listener)

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
            self.broker.disconnected(self)
        return defer.succeed(None)
