"""
The embedded broker's queues and what flows out of them, as RabbitMQ does it.

A `Queue` holds `Message`s in publish order and hands them round-robin to its
`Consumer`s within their prefetch limits; each delivery is a `Delivery` whose
ack or reject settles it with its consumer.  Requeued messages go back ahead
of newer ones, and `dead_letter_properties` writes the x-death record a
rejected message carries on to its dead-letter exchange.

Length limits (x-max-length, x-max-length-bytes of bodies, x-overflow) count
ready messages only, as RabbitMQ's classic queues do.  RabbitMQ hands a
message straight to a consumer with room for it, so it never counts; here the
pump hands it over a moment later, and until then such messages at the head
are not counted either (`_deliverable`).
"""

from collections import deque
from datetime import datetime, timezone
from itertools import islice

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ion.core.messaging.broker.interface import IConsumer, IDelivery

__all__ = [
    "OVERFLOW_MODES", "Consumer", "Delivery", "Message", "Queue", "copy_properties", "dead_letter_properties", "is_cycle"
]

log = Logger()

# x-overflow values: drop the oldest ready messages (the default), refuse the new one, or refuse and dead-letter it.
OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")


def copy_properties(properties):
    """A private copy, so a publisher's or consumer's later changes stay its own."""
    copied = {name: value for name, value in properties.items() if value is not None}
    headers = copied.get("headers")
    if headers is not None:
        copied["headers"] = dict(headers)
    return copied


def _consumer_copy(stored):
    """copy_properties of properties the broker stored (copied already, so without None values): a plain copy."""
    copied = stored.copy()
    headers = copied.get("headers")
    if headers is not None:
        copied["headers"] = dict(headers)
    return copied


def dead_letter_properties(queue, message, reason):
    """A copy of the message's properties with RabbitMQ's x-death headers for leaving `queue`."""
    properties = copy_properties(message.properties)
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
    return properties


def is_cycle(queue_name, properties):
    """
    RabbitMQ's rule for dead-lettering into `queue_name` a message with these
    (updated) x-death headers: a cycle back to a queue it already died in is
    dropped unless a consumer rejected it somewhere on the way.
    """
    deaths = (properties.get("headers") or {}).get("x-death") or []
    for index, death in enumerate(deaths):
        if death.get("queue") == queue_name:
            return all(d.get("reason") != "rejected" for d in deaths[: index + 1])
    return False


class Message:
    """One message as it sits in one queue (each queue keeps its own redelivered flag)."""

    __slots__ = ("body", "properties", "exchange", "routing_key", "redelivered", "seq", "returns", "timestamp")

    def __init__(self, body, properties, exchange, routing_key, seq, timestamp=None):
        self.body = body
        self.properties = properties
        self.exchange = exchange
        self.routing_key = routing_key
        self.redelivered = False
        self.seq = seq
        self.returns = 0  # times handed back unsettled (a quorum queue's x-delivery-count)
        self.timestamp = timestamp  # when a stream took it, in ms


class Queue:
    """
    A classic or quorum queue's ready messages, consumers and bindings; the
    broker enforces its flags.  A quorum queue counts the times each message
    went back unsettled (rejected with requeue, or its consumer gone): its
    deliveries carry that count as x-delivery-count, and past x-delivery-limit
    the broker dead-letters it (reason delivery_limit) instead.  Without the
    argument there is no limit, as in RabbitMQ 3.10 (4.0 defaults it to 20).
    """

    def __init__(self, name, durable, owner, auto_delete, arguments, queue_type="classic"):
        self.name = name
        self.type = queue_type
        limit = arguments.get("x-delivery-limit") if queue_type == "quorum" else None
        self.delivery_limit = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
        self.durable = durable
        self.owner = owner  # the connection of an exclusive queue, else None
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.max_length = arguments.get("x-max-length")
        self.max_bytes = arguments.get("x-max-length-bytes")
        self.overflow = arguments.get("x-overflow", "drop-head")
        self.limited = self.max_length is not None or self.max_bytes is not None  # else nothing is ever refused or dropped
        self.ready = deque()
        self.ready_bytes = 0  # of the ready messages' bodies
        self.consumers = deque()  # round-robin order: the next one is at the left
        self.bindings = set()  # of (exchange, routing_key)
        self._seq = 0

    def enqueue(self, body, properties, exchange, routing_key):
        self._seq += 1
        self.ready.append(Message(body, properties, exchange, routing_key, self._seq))
        self.ready_bytes += len(body)

    def requeue(self, messages):
        """
        Put messages back in their original order ahead of newer ones, as
        RabbitMQ does; return those past the delivery limit, which are not.
        """
        over = []
        for message in messages:
            message.redelivered = True
            message.returns += self.type == "quorum"
            if self.delivery_limit is not None and message.returns > self.delivery_limit:
                over.append(message)
                continue
            position = next((i for i, waiting in enumerate(self.ready) if waiting.seq > message.seq), len(self.ready))
            self.ready.insert(position, message)
            self.ready_bytes += len(message.body)
        return over

    def purge(self):
        """Drop every ready message; return how many there were."""
        count = len(self.ready)
        self.ready.clear()
        self.ready_bytes = 0
        return count

    # -- length limits

    def _deliverable(self):
        """How many ready messages at the head consumers with room take on the pump's next turn."""
        room = 0
        for consumer in self.consumers:
            room += consumer.room()
            if room >= len(self.ready):
                return len(self.ready)
        return room

    def _counted(self, skip):
        """(messages, body bytes) that count against the limits, all but the first `skip` ready ones."""
        if skip >= len(self.ready):
            return 0, 0
        return len(self.ready) - skip, self.ready_bytes - sum(len(m.body) for m in islice(self.ready, skip))

    def _over(self, count, size):
        return (self.max_length is not None and count > self.max_length) or (
            self.max_bytes is not None and size > self.max_bytes
        )

    def depth(self):
        """Ready messages as RabbitMQ counts them (queue.declare-ok's message_count)."""
        return len(self.ready) - self._deliverable()

    def refuses(self, body):
        """True when a reject-publish(-dlx) queue is too full to take a message with `body`."""
        if self.overflow == "drop-head" or not self.limited:
            return False
        count, size = self._counted(self._deliverable())
        return self._over(count + 1, size + len(body))

    def drop_overflow(self, requeued=False):
        """
        Under drop-head, remove the oldest counted messages while the queue is
        over its limits; return them (for dead-lettering with reason maxlen).
        After a requeue RabbitMQ trims before it delivers, so nothing is skipped.
        """
        if self.overflow != "drop-head" or not self.limited:
            return []
        skip = 0 if requeued else self._deliverable()
        count, size = self._counted(skip)
        dropped = []
        while self._over(count, size):
            message = self.ready[skip]
            del self.ready[skip]
            self.ready_bytes -= len(message.body)
            count, size = count - 1, size - len(message.body)
            dropped.append(message)
        return dropped

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
            message = ready.popleft()
            self.ready_bytes -= len(message.body)
            consumer.deliver(message, {"x-delivery-count": message.returns} if message.returns else None)
            sent += 1
        return sent


@implementer(IDelivery)
class Delivery:
    """A message as handed to a consumer, or returned unroutable (then with no consumer to settle with)."""

    __slots__ = (
        "body", "properties", "exchange", "routing_key", "redelivered", "delivery_tag", "consumer_tag", "_consumer"
    )

    def __init__(self, message, delivery_tag=None, consumer=None, headers=None):
        self.body = message.body
        self.properties = _consumer_copy(message.properties)  # the consumer's own
        if headers:
            self.properties["headers"] = dict(self.properties.get("headers") or {}, **headers)
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
class Consumer:
    """One consume on a queue; settling goes back through the broker to dead-letter and wake the pump."""

    def __init__(self, broker, connection, queue, callback, prefetch_count, no_ack, exclusive, tag):
        self.queue = queue.name
        self.tag = tag
        self.connection = connection
        self.exclusive = exclusive
        self.active = True  # False once cancelled, and while subscribing again after its queue was deleted
        self.stopped = False  # cancelled by its connection
        self.unacked = {}  # delivery tag -> Message
        self._broker = broker
        self._queue = queue
        self._callback = callback
        self._prefetch = prefetch_count
        self._no_ack = no_ack
        self._next_tag = 1
        self.position = None  # a stream consumer's next offset
        self.arguments = {}  # basic.consume's x-arguments (x-stream-offset)

    def wants_more(self):
        return self._no_ack or not self._prefetch or len(self.unacked) < self._prefetch

    def room(self):
        """How many more messages it takes now (unbounded without ack or prefetch limit)."""
        if self._no_ack or not self._prefetch:
            return float("inf")
        return max(self._prefetch - len(self.unacked), 0)

    def deliver(self, message, headers=None):
        """Hand `message` to the callback, with `headers` added to the delivery's (the queue type's own)."""
        tag = self._next_tag
        self._next_tag += 1
        if not self._no_ack:
            self.unacked[tag] = message
        try:
            self._callback(Delivery(message, tag, self, headers))
        except Exception:
            log.failure("Consumer {tag} of queue {queue} failed", tag=self.tag, queue=self.queue)

    def settle(self, delivery_tag, reject=False, requeue=False):
        """Ack or reject; a no-op once the consumer is gone or the tag was settled."""
        message = self.unacked.pop(delivery_tag, None)
        if message is None:
            return
        if reject and self._queue.type == "stream":
            self._broker.connection_exception(
                self.connection, "basic.nack and basic.reject not supported by stream queues queue %r in vhost '/'"
                % self.queue
            )
        elif reject and requeue:
            self._broker.requeue(self._queue, (message,))
        elif reject:
            self._broker.dead_letter(self._queue, message, "rejected")
        if self._queue.ready:
            self._broker.wake(self._queue)

    def attach(self, queue):
        """Consume from `queue` (again, after the broker cancelled it)."""
        self._queue = queue
        self.queue = queue.name
        self.active = True

    def cancel(self):
        self.stopped = True
        self._broker.cancel(self)
        return defer.succeed(None)
