"""
Queue types at the broker: classic, quorum and stream queues, written once
and run against the embedded broker and the real RabbitMQ (3.10 here).

What is checked is what RabbitMQ answered when asked (see memory_types.py):
which declarations it refuses, that 'classic' is the default type, the
quorum queue's delivery count and limit, and a stream's offsets.

Stream timestamps: RabbitMQ stamps a stream's chunks with its own clock and
an AMQP timestamp offset has whole seconds, so a window edge given as a time
is only exact with a gap of over a second on each side of it that matters.
On RabbitMQ those gaps are real time (the only waits here); on the embedded
broker its wall clock is a task.Clock the test moves on.
"""

import time
from datetime import datetime, timezone

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from ion.core.messaging.broker import memory
from ion.core.messaging.broker.interface import BrokerError, ChannelError, PreconditionFailed
from test.brokers import BrokerTestMixin, for_each_broker, wait_for
from test.test_broker_semantics import Inbox

NAMED = {"durable": True, "exclusive": False, "auto_delete": False}


def typed(queue_type, **arguments):
    return dict(arguments, **{"x-queue-type": queue_type})


class QueueTypeTests(BrokerTestMixin):
    @inlineCallbacks
    def setUp(self):
        self.admin = yield self.connect_broker()
        self.conn = yield self.connect_broker()

    @inlineCallbacks
    def declare(self, queue_type, name=None, **flags):
        """A named durable queue of `queue_type`, deleted after the test."""
        name = name or self.unique_name("qt")
        arguments = typed(queue_type, **flags.pop("arguments", {}))
        yield self.conn.queue_declare(name, arguments=arguments, **dict(NAMED, **flags))
        self.addCleanup(self.admin.queue_delete, name)
        return name

    @inlineCallbacks
    def refused(self, name, words, arguments, **flags):
        """The declaration fails with 406 whose text has `words`; nothing is left behind."""
        flags = dict(NAMED, **flags)
        try:
            error = yield self.assertFailure(self.conn.queue_declare(name, arguments=arguments, **flags), PreconditionFailed)
        finally:
            if name:
                self.addCleanup(self.admin.queue_delete, name)
        self.assertIn(words, error.text)

    # -- declarations

    @inlineCallbacks
    def test_quorum_and_stream_refuse_what_they_cannot_be(self):
        for queue_type in ("quorum", "stream"):
            arguments = typed(queue_type)
            yield self.refused("", "server-named", arguments)
            yield self.refused(self.unique_name(), "'auto-delete'", arguments, auto_delete=True)
            yield self.refused(self.unique_name(), "'exclusive-owner'", arguments, exclusive=True)
            yield self.refused(self.unique_name(), "'non-durable'", arguments, durable=False)
            # All at once: auto-delete is named first.
            yield self.refused(self.unique_name(), "'auto-delete'", arguments, durable=False, exclusive=True,
                               auto_delete=True)

    @inlineCallbacks
    def test_unknown_queue_types_are_refused(self):
        yield self.refused(self.unique_name(), "unsupported queue type 'bogus'", typed("bogus"))
        yield self.refused(self.unique_name(), "unacceptable_type", typed(1))

    @inlineCallbacks
    def test_arguments_a_type_refuses(self):
        for queue_type, arguments in (
            ("classic", {"x-delivery-limit": 3}),
            ("stream", {"x-max-length": 5}),
            ("stream", {"x-overflow": "drop-head"}),
            ("stream", {"x-delivery-limit": 3}),
            ("stream", {"x-dead-letter-exchange": "dlx"}),
        ):
            arg = next(iter(arguments))
            yield self.refused(self.unique_name(), "invalid arg %r" % arg, typed(queue_type, **arguments))

    @inlineCallbacks
    def test_classic_is_the_default_type(self):
        untyped = self.unique_name()
        yield self.conn.queue_declare(untyped, arguments={}, **NAMED)
        self.addCleanup(self.admin.queue_delete, untyped)
        yield self.conn.queue_declare(untyped, arguments=typed("classic"), **NAMED)
        yield self.conn.queue_declare(untyped, arguments=None, **NAMED)
        error = yield self.assertFailure(self.conn.queue_declare(untyped, arguments=typed("quorum"), **NAMED),
                                         PreconditionFailed)
        self.assertIn("inequivalent arg 'x-queue-type'", error.text)

    @inlineCallbacks
    def test_a_quorum_queue_is_redeclared_only_as_one(self):
        q = yield self.declare("quorum", arguments={"x-delivery-limit": 3})
        yield self.conn.queue_declare(q, arguments=typed("quorum", **{"x-delivery-limit": 3}), **NAMED)
        for arguments in (typed("classic", **{"x-delivery-limit": 3}), {"x-delivery-limit": 3},
                          typed("stream", **{"x-delivery-limit": 3})):
            error = yield self.assertFailure(self.conn.queue_declare(q, arguments=arguments, **NAMED),
                                             PreconditionFailed)
            self.assertIn("inequivalent arg 'x-queue-type'", error.text)
        error = yield self.assertFailure(
            self.conn.queue_declare(q, arguments=typed("quorum", **{"x-delivery-limit": 4}), **NAMED), PreconditionFailed
        )
        self.assertIn("inequivalent arg 'x-delivery-limit'", error.text)
        self.assertEqual((yield self.conn.queue_declare(q, passive=True)), q)

    # -- quorum queues: the delivery count and limit

    @inlineCallbacks
    def dead_letter_queue(self):
        dlx = self.unique_name("dlx")
        yield self.conn.exchange_declare(dlx, "fanout", durable=True, auto_delete=False)
        self.addCleanup(self.admin.exchange_delete, dlx)
        dead = yield self.conn.queue_declare(self.unique_name("dead"), exclusive=True)
        yield self.conn.queue_bind(dead, dlx, "")
        inbox = Inbox()
        yield self.conn.consume(dead, inbox, no_ack=True)
        return dlx, inbox

    @inlineCallbacks
    def test_quorum_redeliveries_count_up_to_the_limit_then_dead_letter(self):
        dlx, dead = yield self.dead_letter_queue()
        q = yield self.declare("quorum", arguments={"x-delivery-limit": 3, "x-dead-letter-exchange": dlx})
        seen = []

        def reject(delivery):
            seen.append((delivery.redelivered, (delivery.properties.get("headers") or {}).get("x-delivery-count")))
            delivery.reject(requeue=True)

        yield self.conn.consume(q, reject, prefetch_count=1)
        yield self.conn.publish("", q, b"poison", {"delivery_mode": 2, "headers": {"mine": "kept"}})
        yield dead.wait(1)
        # Delivered 1 + 3 times: the fourth return is past the limit.
        self.assertEqual(seen, [(False, None), (True, 1), (True, 2), (True, 3)])
        headers = dead.deliveries[0].properties["headers"]
        self.assertEqual((dead.bodies, headers["mine"], headers["x-first-death-reason"]),
                         ([b"poison"], "kept", "delivery_limit"))
        self.assertEqual(headers["x-death"][0]["queue"], q)
        self.assertNotIn("x-delivery-count", headers)

    @inlineCallbacks
    def test_quorum_counts_returns_of_a_cancelled_consumer(self):
        q = yield self.declare("quorum")
        first = Inbox()
        consumer = yield self.conn.consume(q, first, prefetch_count=1)
        yield self.conn.publish("", q, b"m", {"delivery_mode": 2})
        yield first.wait(1)
        yield consumer.cancel()
        second = Inbox()
        yield self.conn.consume(q, second, prefetch_count=1)
        yield second.wait(1)
        self.assertEqual((first.deliveries[0].properties.get("headers") or {}).get("x-delivery-count"), None)
        self.assertEqual(second.deliveries[0].properties["headers"]["x-delivery-count"], 1)
        self.assertTrue(second.deliveries[0].redelivered)
        second.deliveries[0].ack()

    @inlineCallbacks
    def test_quorum_reject_dead_letters(self):
        dlx, dead = yield self.dead_letter_queue()
        q = yield self.declare("quorum", arguments={"x-dead-letter-exchange": dlx})
        yield self.conn.consume(q, lambda delivery: delivery.reject(), prefetch_count=1)
        yield self.conn.publish("", q, b"rejected", {"delivery_mode": 2})
        yield dead.wait(1)
        self.assertEqual(dead.deliveries[0].properties["headers"]["x-first-death-reason"], "rejected")

    # -- streams

    @inlineCallbacks
    def read(self, queue, offset=None, count=None, prefetch_count=10, conn=None):
        """Bodies a new consumer from `offset` reads, all there are (up to a fence) or `count`."""
        conn = conn or self.conn
        inbox = Inbox()
        arguments = None if offset is None else {"x-stream-offset": offset}

        def ack(delivery):
            inbox(delivery)
            delivery.ack()

        consumer = yield conn.consume(queue, ack, prefetch_count=prefetch_count, arguments=arguments)
        if count is None:
            fence = b"fence-" + self.unique_name().encode()
            yield conn.publish("", queue, fence)
            yield wait_for(lambda: fence in inbox.bodies)
            bodies = inbox.bodies[: inbox.bodies.index(fence)]
        else:
            yield inbox.wait(count)
            bodies = inbox.bodies
        yield consumer.cancel()
        return [b for b in bodies if not b.startswith(b"fence-")], inbox

    @inlineCallbacks
    def test_stream_consumers_need_a_prefetch_and_stream_offsets_need_a_stream(self):
        stream = yield self.declare("stream")
        error = yield self.assertFailure(self.conn.consume(stream, Inbox(), prefetch_count=0), PreconditionFailed)
        self.assertIn("consumer prefetch count is not set", error.text)
        classic = yield self.declare("classic")
        error = yield self.assertFailure(
            self.conn.consume(classic, Inbox(), prefetch_count=1, arguments={"x-stream-offset": "first"}),
            PreconditionFailed,
        )
        self.assertIn("invalid arg 'x-stream-offset'", error.text)

    @inlineCallbacks
    def test_stream_offsets_first_last_next_and_numbers(self):
        stream = yield self.declare("stream")
        for i in range(5):
            yield self.conn.publish("", stream, b"m%d" % i)  # confirmed one by one: each its own chunk
        everything = [b"m%d" % i for i in range(5)]
        bodies, inbox = yield self.read(stream, "first", count=5)
        self.assertEqual(bodies, everything)
        self.assertEqual([d.properties["headers"]["x-stream-offset"] for d in inbox.deliveries], [0, 1, 2, 3, 4])
        # Acks removed nothing: another consumer reads it all again.
        self.assertEqual((yield self.read(stream, "first", count=5))[0], everything)
        self.assertEqual((yield self.read(stream, "last", count=1))[0], [b"m4"])
        self.assertEqual((yield self.read(stream, 3, count=2))[0], [b"m3", b"m4"])
        # 'next' (also what no offset means): only what comes after the consumer started.
        for offset in ("next", None):
            bodies, _ = yield self.read(stream, offset)
            self.assertEqual(bodies, [])

    @inlineCallbacks
    def test_stream_time_offsets(self):
        """Offsets by timestamp and by interval ('2s' ago) read back exactly the later batch."""
        if self.on_rabbit:

            def gap(seconds):
                return task.deferLater(reactor, seconds, lambda: None)

            now = time.time
        else:
            clock = task.Clock()
            clock.advance(time.time())
            broker = memory.get_broker()
            broker.wall_clock, saved = clock, broker.wall_clock
            self.addCleanup(setattr, broker, "wall_clock", saved)

            def gap(seconds):
                clock.advance(seconds)

            now = clock.seconds

        stream = yield self.declare("stream")
        for i in range(3):
            yield self.conn.publish("", stream, b"old%d" % i)
        # The edge: over a second after the old batch (timestamps are whole seconds), before the new one.
        yield gap(1.1)
        edge = datetime.fromtimestamp(now(), timezone.utc)
        # Over 2 s from the old batch to the new one, for the interval.
        yield gap(1.1)
        for i in range(3):
            yield self.conn.publish("", stream, b"new%d" % i)
        new = [b"new0", b"new1", b"new2"]
        self.assertEqual((yield self.read(stream, edge))[0], new)
        self.assertEqual((yield self.read(stream, "2s"))[0], new)
        self.assertEqual(len((yield self.read(stream, "1m"))[0]), 6)

    @inlineCallbacks
    def test_a_stream_cannot_be_purged(self):
        """A connection exception: RabbitMQ closes the connection (ours reconnects; the embedded one stays closed)."""
        stream = yield self.declare("stream")
        yield self.conn.publish("", stream, b"kept")
        yield self.assertFailure(self.conn.queue_purge(stream), BrokerError)
        self.assertEqual((yield self.read(stream, "first", count=1, conn=self.admin))[0], [b"kept"])


QueueTypeMemoryTest, QueueTypeRabbitTest = for_each_broker(QueueTypeTests, globals())


class EmbeddedStreamTest(unittest.TestCase):
    """What RabbitMQ answers with a connection exception, on the embedded broker (RabbitMQ's is not tested:
    our AMQPConnection reconnects at once)."""

    @inlineCallbacks
    def setUp(self):
        self.broker = memory.get_broker(self.id())
        self.addCleanup(self.broker.reset)
        self.conn = yield memory.connect(self.id())
        yield self.conn.queue_declare("s", arguments=typed("stream"), **NAMED)
        yield self.conn.publish("", "s", b"m")

    @inlineCallbacks
    def closed(self):
        yield wait_for(lambda: not self.conn.connected)
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_consuming_without_acks_closes_the_connection(self):
        error = yield self.assertFailure(self.conn.consume("s", Inbox(), no_ack=True), ChannelError)
        self.assertEqual(error.code, 540)
        self.assertIn("automatic acknowledgement not supported by stream queues", error.text)
        yield self.closed()

    @inlineCallbacks
    def test_rejecting_closes_the_connection(self):
        inbox = Inbox()
        yield self.conn.consume("s", inbox, prefetch_count=1, arguments={"x-stream-offset": "first"})
        yield inbox.wait(1)
        inbox.deliveries[0].reject(requeue=True)
        yield self.closed()

    @inlineCallbacks
    def test_bad_offsets_and_retention_are_refused(self):
        for bad in ("bogus", 1.5, True):
            error = yield self.assertFailure(
                self.conn.consume("s", Inbox(), prefetch_count=1, arguments={"x-stream-offset": bad}), ChannelError
            )
            self.assertIn("invalid x-stream-offset", error.text)
        error = yield self.assertFailure(
            self.conn.queue_declare("r", arguments=typed("stream", **{"x-max-length-bytes": 10}), **NAMED), ChannelError
        )
        self.assertIn("not implemented by the embedded broker", error.text)
