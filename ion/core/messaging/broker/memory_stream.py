"""
The embedded broker's streams: RabbitMQ's stream queues as an append-only log.

Every message published to a stream stays in it, numbered from 0 (its
offset) and stamped with the broker's wall-clock time in ms.  Each consumer
reads from its own position, chosen by its x-stream-offset argument when it
starts, and moves on as it is handed messages; acks only make room in its
prefetch, and nothing goes back (a stream has nothing to requeue, and
refuses basic.reject).  Each delivery carries its offset in the
x-stream-offset header, as RabbitMQ's do.

RabbitMQ writes a stream in chunks (the messages that reached its writer
together) and starts 'last' and timestamp offsets at a chunk's first
message.  Here every message is a chunk of its own: a message published
alone after the earlier ones were confirmed is one on RabbitMQ too, and
tests place their windows' edges so.
"""

from collections import deque

from ion.core.messaging.broker.memory_queue import Message
from ion.core.messaging.broker.memory_types import stream_offset_spec

__all__ = ["StreamQueue"]


class StreamQueue:
    """A stream: the log, its consumers (each with a `position`) and bindings."""

    type = "stream"
    overflow = "drop-head"  # never used: a stream refuses length limits
    limited = False
    delivery_limit = None

    def __init__(self, name, durable, owner, auto_delete, arguments, wall_clock):
        self.name = name
        self.durable = durable
        self.owner = owner
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.log = []  # Messages, offset = index
        self.consumers = deque()
        self.bindings = set()
        self._wall_clock = wall_clock

    @property
    def ready(self):
        """True when some consumer has messages left to read (the pump's test for work)."""
        return any(consumer.position < len(self.log) for consumer in self.consumers)

    def enqueue(self, body, properties, exchange, routing_key):
        offset = len(self.log)
        now = int(self._wall_clock.seconds() * 1000)
        self.log.append(Message(body, properties, exchange, routing_key, offset, now))

    def start_position(self, value):
        """Where a consumer with x-stream-offset `value` starts reading."""
        kind, number = stream_offset_spec(value)
        end = len(self.log)
        if kind == "first":
            return 0
        if kind == "last":
            return max(end - 1, 0)  # the last chunk: its last message
        if kind == "next":
            return end
        if kind == "offset":
            return min(max(number, 0), end)
        since = number * 1000 if kind == "timestamp" else int(self._wall_clock.seconds() * 1000) - number * 1000
        return next((m.seq for m in self.log if m.timestamp >= since), end)

    def requeue(self, messages):
        """Nothing goes back to a stream: each consumer's position has moved past them."""
        return []

    def purge(self):
        """Empty the log (the stream is being deleted); RabbitMQ counts nothing for a stream."""
        self.log = []
        return 0

    def depth(self):
        """What RabbitMQ's declare-ok counts for a stream: every message in it."""
        return len(self.log)

    def refuses(self, body):
        return False

    def drop_overflow(self, requeued=False):
        return []

    def deliver(self, budget):
        """Hand each consumer with room the next messages from its position; return how many went."""
        sent = 0
        moved = True
        while moved and sent < budget:
            moved = False
            for consumer in list(self.consumers):
                if sent >= budget:
                    break
                if consumer.active and consumer.position < len(self.log) and consumer.wants_more():
                    message = self.log[consumer.position]
                    consumer.position += 1
                    consumer.deliver(message, {"x-stream-offset": message.seq})
                    sent += 1
                    moved = True
        return sent
