"""
Queue length limits (x-max-length, x-max-length-bytes, x-overflow) and
queue_depth, written once and run against the embedded broker and RabbitMQ:
the embedded broker must drop, refuse and dead-letter exactly as RabbitMQ
3.10's classic queues do.

"Nothing else arrived" is proven by counting with queue_depth (a fence
message, as test_broker_semantics uses, would itself overflow the queue).
"""

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks

from ion.core.messaging.broker.interface import MessageRefused, NotFound, PreconditionFailed
from test.brokers import BrokerTestMixin, for_each_broker, wait_for
from test.test_broker_semantics import Inbox


class QueueLimitTests(BrokerTestMixin):
    @inlineCallbacks
    def setUp(self):
        self.conn = yield self.connect_broker()

    @inlineCallbacks
    def queue(self, arguments=None, **flags):
        flags.setdefault("auto_delete", False)  # drain() consumes and cancels
        name = yield self.conn.queue_declare(self.unique_name("lim"), arguments=arguments, **flags)
        self.addCleanup(self.conn.queue_delete, name)
        return name

    @inlineCallbacks
    def dead_letter_queue(self):
        """A fanout dead-letter exchange with one queue; fires with (exchange, queue)."""
        exchange = self.unique_name("lim-dlx")
        yield self.conn.exchange_declare(exchange, "fanout", auto_delete=False)
        self.addCleanup(self.conn.exchange_delete, exchange)
        queue = yield self.queue()
        yield self.conn.queue_bind(queue, exchange, "")
        return exchange, queue

    @inlineCallbacks
    def drain(self, queue):
        """Every ready message of `queue`, in order (nothing else is published to it meanwhile)."""
        count = yield self.conn.queue_depth(queue)
        inbox = Inbox()
        consumer = yield self.conn.consume(queue, inbox, no_ack=True)
        yield inbox.wait(count)
        yield consumer.cancel()
        self.assertEqual(len(inbox.deliveries), count)
        return inbox.deliveries

    @inlineCallbacks
    def wait_depth(self, queue, depth, timeout=10.0):
        """Fires once queue_depth(queue) is `depth` (the broker may still be settling)."""
        deadline = reactor.seconds() + timeout
        while (yield self.conn.queue_depth(queue)) != depth:
            if reactor.seconds() > deadline:
                self.fail("queue %r never held %d ready messages" % (queue, depth))
            yield task.deferLater(reactor, 0.01, lambda: None)

    @inlineCallbacks
    def bodies(self, queue):
        return [d.body for d in (yield self.drain(queue))]

    @inlineCallbacks
    def publish_all(self, queue, bodies):
        """Publish each body to `queue`; fires with the list of bodies refused."""
        refused = []
        for body in bodies:
            try:
                yield self.conn.publish("", queue, body)
            except MessageRefused:
                refused.append(body)
        return refused

    # -- drop-head

    @inlineCallbacks
    def test_drop_head_keeps_newest_and_dead_letters_oldest_as_maxlen(self):
        dlx, dlq = yield self.dead_letter_queue()
        queue = yield self.queue({"x-max-length": 2, "x-dead-letter-exchange": dlx})
        refused = yield self.publish_all(queue, [b"m0", b"m1", b"m2", b"m3", b"m4"])
        self.assertEqual(refused, [])
        self.assertEqual((yield self.conn.queue_depth(queue)), 2)
        self.assertEqual((yield self.bodies(queue)), [b"m3", b"m4"])
        dead = yield self.drain(dlq)
        self.assertEqual([d.body for d in dead], [b"m0", b"m1", b"m2"])
        headers = dead[0].properties["headers"]
        self.assertEqual(headers["x-first-death-reason"], "maxlen")
        self.assertEqual(headers["x-first-death-queue"], queue)
        death = headers["x-death"][0]
        self.assertEqual((death["count"], death["reason"], death["queue"], list(death["routing-keys"])),
                         (1, "maxlen", queue, [queue]))

    @inlineCallbacks
    def test_drop_head_by_body_bytes(self):
        queue = yield self.queue({"x-max-length-bytes": 10})
        yield self.publish_all(queue, [b"12345", b"12345", b"1"])  # 11 bytes: the oldest goes
        self.assertEqual((yield self.bodies(queue)), [b"12345", b"1"])
        yield self.publish_all(queue, [b"12345", b"123456", b"abc"])
        self.assertEqual((yield self.bodies(queue)), [b"123456", b"abc"])
        yield self.publish_all(queue, [b"abc", b"0123456789ABC"])  # bigger than the limit on its own
        self.assertEqual((yield self.conn.queue_depth(queue)), 0)

    @inlineCallbacks
    def test_a_consumer_with_room_gets_messages_a_full_queue_would_drop(self):
        queue = yield self.queue({"x-max-length": 0})
        inbox = Inbox()
        yield self.conn.consume(queue, inbox, no_ack=True)
        yield self.publish_all(queue, [b"z0", b"z1", b"z2"])
        yield inbox.wait(3)
        self.assertEqual(inbox.bodies, [b"z0", b"z1", b"z2"])

    @inlineCallbacks
    def test_burst_past_a_busy_consumer_then_requeue_into_a_full_queue(self):
        queue = yield self.queue({"x-max-length": 2})
        inbox = Inbox()
        consumer = yield self.conn.consume(queue, inbox, prefetch_count=1)
        for i in range(6):  # not waiting for each: a burst
            self.conn.publish("", queue, b"p%d" % i)
        yield wait_for(lambda: inbox.bodies == [b"p0"])
        yield self.wait_depth(queue, 2)
        # Requeued ahead of p4, p5: three is too many, so RabbitMQ drops p0 itself.
        inbox.deliveries[0].reject(requeue=True)
        yield inbox.wait(2)
        self.assertEqual(inbox.bodies, [b"p0", b"p4"])
        yield consumer.cancel()  # p4 goes back: two fit
        self.assertEqual((yield self.bodies(queue)), [b"p4", b"p5"])

    @inlineCallbacks
    def test_dead_lettering_into_itself_is_a_cycle_and_dropped(self):
        name = self.unique_name("lim-self")
        queue = yield self.conn.queue_declare(
            name, auto_delete=False,
            arguments={"x-max-length": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": name},
        )
        self.addCleanup(self.conn.queue_delete, queue)
        yield self.publish_all(queue, [b"a", b"b", b"c"])
        self.assertEqual((yield self.bodies(queue)), [b"c"])

    # -- reject-publish

    @inlineCallbacks
    def test_reject_publish_refuses_the_new_message(self):
        dlx, dlq = yield self.dead_letter_queue()
        queue = yield self.queue({"x-max-length": 2, "x-overflow": "reject-publish", "x-dead-letter-exchange": dlx})
        refused = yield self.publish_all(queue, [b"r0", b"r1", b"r2", b"r3"])
        self.assertEqual(refused, [b"r2", b"r3"])
        self.assertEqual((yield self.bodies(queue)), [b"r0", b"r1"])
        self.assertEqual((yield self.conn.queue_depth(dlq)), 0)

    @inlineCallbacks
    def test_reject_publish_by_bytes_and_even_with_a_waiting_consumer(self):
        queue = yield self.queue({"x-max-length-bytes": 10, "x-overflow": "reject-publish"})
        refused = yield self.publish_all(queue, [b"12345", b"12345", b"1"])
        self.assertEqual(refused, [b"1"])
        empty = yield self.queue({"x-max-length": 0, "x-overflow": "reject-publish"})
        inbox = Inbox()
        yield self.conn.consume(empty, inbox, no_ack=True)
        self.assertEqual((yield self.publish_all(empty, [b"z"])), [b"z"])

    @inlineCallbacks
    def test_reject_publish_dlx_dead_letters_the_refused_message(self):
        dlx, dlq = yield self.dead_letter_queue()
        queue = yield self.queue(
            {"x-max-length": 2, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": dlx}
        )
        refused = yield self.publish_all(queue, [b"d0", b"d1", b"d2", b"d3"])
        self.assertEqual(refused, [b"d2", b"d3"])
        self.assertEqual((yield self.bodies(queue)), [b"d0", b"d1"])
        dead = yield self.drain(dlq)
        self.assertEqual([d.body for d in dead], [b"d2", b"d3"])
        self.assertEqual(dead[0].properties["headers"]["x-first-death-reason"], "maxlen")

    @inlineCallbacks
    def test_queues_with_room_keep_a_message_another_refused(self):
        exchange = self.unique_name("lim-fan")
        yield self.conn.exchange_declare(exchange, "fanout", auto_delete=False)
        self.addCleanup(self.conn.exchange_delete, exchange)
        full = yield self.queue({"x-max-length": 0, "x-overflow": "reject-publish"})
        roomy = yield self.queue()
        for queue in (full, roomy):
            yield self.conn.queue_bind(queue, exchange, "")
        returned = []
        self.conn.add_return_listener(lambda *args: returned.append(args))
        yield self.assertFailure(self.conn.publish(exchange, "", b"f", mandatory=True), MessageRefused)
        self.assertEqual((yield self.bodies(roomy)), [b"f"])
        self.assertEqual(returned, [])  # it was routed: nothing comes back

    # -- declaring

    @inlineCallbacks
    def test_x_overflow_is_compared_on_redeclaration(self):
        queue = yield self.queue({"x-max-length": 5})
        error = yield self.assertFailure(
            self.conn.queue_declare(queue, auto_delete=False, arguments={"x-max-length": 5, "x-overflow": "drop-head"}),
            PreconditionFailed,
        )
        self.assertIn("x-overflow", error.text)
        other = yield self.queue({"x-overflow": "reject-publish"})
        yield self.assertFailure(
            self.conn.queue_declare(other, auto_delete=False, arguments={"x-overflow": "drop-head"}), PreconditionFailed
        )
        yield self.conn.queue_declare(other, auto_delete=False, arguments={"x-overflow": "reject-publish"})

    @inlineCallbacks
    def test_invalid_limit_arguments_are_refused(self):
        for arguments in (
            {"x-max-length": -1},
            {"x-max-length": "a"},
            {"x-max-length": True},
            {"x-max-length-bytes": -3},
            {"x-overflow": "foo"},
            {"x-overflow": 5},
        ):
            name = self.unique_name("lim-bad")
            error = yield self.assertFailure(self.conn.queue_declare(name, arguments=arguments), PreconditionFailed)
            self.assertIn("invalid arg '%s'" % next(iter(arguments)), error.text)

    # -- depth

    @inlineCallbacks
    def test_queue_depth_counts_ready_messages_not_unacked(self):
        queue = yield self.queue()
        self.assertEqual((yield self.conn.queue_depth(queue)), 0)
        yield self.publish_all(queue, [b"a", b"b", b"c"])
        self.assertEqual((yield self.conn.queue_depth(queue)), 3)
        inbox = Inbox()
        yield self.conn.consume(queue, inbox, prefetch_count=1)
        yield inbox.wait(1)
        yield self.wait_depth(queue, 2)
        yield self.assertFailure(self.conn.queue_depth(self.unique_name("lim-missing")), NotFound)


QueueLimitMemoryTest, QueueLimitRabbitTest = for_each_broker(QueueLimitTests, globals())
