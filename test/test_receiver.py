"""Receivers on both brokers: handlers, manual acks, deactivate, fanout and worker queues."""

import msgpack
from twisted.internet import defer

from ion.core.messaging.broker.interface import NotFound
from ion.core.messaging.messaging import MessageStateError
from ion.core.messaging.receiver import FanoutReceiver, Receiver, WorkerReceiver
from ion.core.process.process import Process
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker, wait_for


class Inbox:
    """A handler that keeps (data, msg) and acks unless told otherwise."""

    def __init__(self, ack=True):
        self.items = []
        self.ack = ack
        self._waiters = []

    def __call__(self, data, msg):
        self.items.append((data, msg))
        if self.ack:
            msg.ack()
        for count, d in list(self._waiters):
            if len(self.items) >= count:
                self._waiters.remove((count, d))
                d.callback(self.items)

    def wait(self, count):
        if len(self.items) >= count:
            return defer.succeed(self.items)
        d = defer.Deferred()
        self._waiters.append((count, d))
        return d

    @property
    def contents(self):
        return [data["content"] for data, _ in self.items]


class ReceiverTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "receiver-test"})
        yield self.proc.spawn()
        self.sender = Receiver("sender", process=self.proc)

    @defer.inlineCallbacks
    def make(self, kind, name, inbox, **kwargs):
        receiver = kind(name, process=self.proc, handler=inbox, **kwargs)
        yield receiver.attach()
        self.addCleanup(self._terminate, receiver)
        return receiver

    def _terminate(self, receiver):
        if receiver.state in ("READY", "ACTIVE"):
            return receiver.terminate()

    def send(self, to, content, op="note"):
        return self.sender.send(to, op, content)

    @defer.inlineCallbacks
    def test_handler_gets_data_and_msg(self):
        inbox = Inbox()
        name = self.unique_name("work")
        yield self.make(WorkerReceiver, name, inbox)
        sent = yield self.send(name, {"x": 1})
        (data, msg), = yield inbox.wait(1)
        self.assertEqual(data["content"], {"x": 1})
        self.assertEqual(data["op"], "note")
        self.assertEqual(data["receiver"], name)
        self.assertEqual(data["conv-seq"], sent["conv-seq"])
        self.assertEqual(msg.content_type, "application/msgpack")
        self.assertEqual(msg.payload, data)

    @defer.inlineCallbacks
    def test_second_ack_raises(self):
        inbox = Inbox()
        name = self.unique_name("work")
        yield self.make(WorkerReceiver, name, inbox)
        yield self.send(name, "one")
        (_, msg), = yield inbox.wait(1)
        error = self.assertRaises(MessageStateError, msg.ack)
        self.assertIn("already ACK", str(error))
        self.assertRaises(MessageStateError, msg.reject)
        self.assertRaises(MessageStateError, msg.requeue)

    @defer.inlineCallbacks
    def test_requeue_redelivers(self):
        seen = []

        def handler(data, msg):
            seen.append(msg.delivery.redelivered)
            if len(seen) == 1:
                msg.requeue()
            else:
                msg.ack()

        inbox = Inbox(ack=False)
        name = self.unique_name("work")
        yield self.make(WorkerReceiver, name, handler)
        yield self.send(name, "again")
        yield wait_for(lambda: len(seen) == 2)
        self.assertEqual(seen, [False, True])
        self.assertEqual(inbox.items, [])

    @defer.inlineCallbacks
    def test_deactivate_cancels_consumer(self):
        inbox = Inbox()
        name = self.unique_name("work")
        receiver = yield self.make(WorkerReceiver, name, inbox)
        yield self.send(name, "before")
        yield inbox.wait(1)
        yield receiver.deactivate()
        self.assertIsNone(receiver.consumer)
        # Its auto-delete queue went with its last consumer, as on RabbitMQ.
        connection = self.container.exchange_manager.connection
        yield self.assertFailure(connection.queue_declare(name, passive=True), NotFound)
        yield self.send(name, "while inactive")
        yield receiver.activate()
        yield self.send(name, "after")
        yield inbox.wait(2)
        self.assertEqual(inbox.contents, ["before", "after"])

    @defer.inlineCallbacks
    def test_deactivate_waits_for_message_in_progress(self):
        release = defer.Deferred()
        done = []

        @defer.inlineCallbacks
        def slow(data, msg):
            yield release
            msg.ack()
            done.append(data["content"])

        name = self.unique_name("work")
        receiver = yield self.make(WorkerReceiver, name, slow)
        yield self.send(name, "slow")
        yield wait_for(lambda: receiver.processing_messages)
        stopping = receiver.deactivate()
        self.assertNoResult(stopping)
        release.callback(None)
        yield stopping
        self.assertEqual(done, ["slow"])

    @defer.inlineCallbacks
    def test_fanout_every_receiver_gets_a_copy(self):
        first, second = Inbox(), Inbox()
        name = self.unique_name("fan")
        yield self.make(FanoutReceiver, name, first)
        yield self.make(FanoutReceiver, name, second)
        for i in range(3):
            yield self.send(name, i)
        yield first.wait(3)
        yield second.wait(3)
        self.assertEqual(first.contents, [0, 1, 2])
        self.assertEqual(second.contents, [0, 1, 2])

    @defer.inlineCallbacks
    def test_worker_receivers_compete(self):
        first, second = Inbox(), Inbox()
        name = self.unique_name("work")
        yield self.make(WorkerReceiver, name, first)
        yield self.make(WorkerReceiver, name, second)
        for i in range(10):
            yield self.send(name, i)
        yield wait_for(lambda: len(first.items) + len(second.items) == 10)
        self.assertEqual(sorted(first.contents + second.contents), list(range(10)))
        self.assertTrue(first.items and second.items)

    @defer.inlineCallbacks
    def test_undecodable_message_rejected_receiver_goes_on(self):
        inbox = Inbox()
        reasons = []
        name = self.unique_name("work")
        receiver = yield self.make(WorkerReceiver, name, inbox)
        receiver.add_error_handler(lambda data, msg, reason: reasons.append(reason))
        connection = self.container.exchange_manager.connection
        yield connection.publish("magnet.topic", name, msgpack.packb(["not", "a", "map"]))
        yield self.send(name, "good")
        yield inbox.wait(1)
        self.assertEqual(inbox.contents, ["good"])
        self.assertEqual(len(reasons), 1)
        self.assertIn("not a map", reasons[0])

    @defer.inlineCallbacks
    def test_failing_handler_rejects_and_goes_on(self):
        inbox = Inbox()

        def handler(data, msg):
            if data["content"] == "bad":
                raise ValueError("handler refuses bad")
            inbox(data, msg)

        name = self.unique_name("work")
        yield self.make(WorkerReceiver, name, handler)
        yield self.send(name, "bad")
        yield self.send(name, "good")
        yield inbox.wait(1)
        self.assertEqual(inbox.contents, ["good"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @defer.inlineCallbacks
    def test_text_content_with_multibyte_characters(self):
        inbox = Inbox()
        name = self.unique_name("work")
        yield self.make(WorkerReceiver, name, inbox)
        text = "€ ✓ 雪 " * 50000
        yield self.send(name, text)
        yield self.send(name, b"\xff\x00raw")
        yield inbox.wait(2)
        self.assertEqual(inbox.contents, [text, b"\xff\x00raw"])


for_each_broker(ReceiverTests, globals(), base=IonTestCase)
