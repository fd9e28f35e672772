"""
A consumer the broker cancels subscribes again (resubscribe.py): on both
brokers, deleting a queue that has consumers cancels them (RabbitMQ's
basic.cancel to clients announcing consumer_cancel_notify; the embedded
broker does the same), and the connection declares the queue again as
recorded, with its bindings and the exchanges routing to it, and consumes.
The waits between tries are checked on a task.Clock.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from ion.core.messaging.broker import resubscribe
from ion.core.messaging.broker.interface import ChannelError
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory
from ion.test.iontest import IonTestCase
from test.brokers import AckingInbox, BrokerTestMixin, for_each_broker, wait_for


class ConnectionResubscribeTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        self.conn = yield self.connect_broker()
        self.other = yield self.connect_broker()

    @defer.inlineCallbacks
    def consuming(self, queue, exchange, key):
        inbox = AckingInbox()
        consumer = yield self.conn.consume(queue, inbox)
        yield self.conn.publish(exchange, key, b"before")
        yield wait_for(lambda: inbox.bodies == [b"before"])
        return consumer, inbox

    @defer.inlineCallbacks
    def test_deleted_queue_is_declared_again_with_its_binding(self):
        exchange, queue = self.unique_name("x"), self.unique_name("q")
        yield self.conn.exchange_declare(exchange, "topic", auto_delete=False)
        self.addCleanup(self.other.exchange_delete, exchange)
        yield self.conn.queue_declare(queue, auto_delete=False)
        self.addCleanup(self.other.queue_delete, queue)
        yield self.conn.queue_bind(queue, exchange, "k")
        consumer, inbox = yield self.consuming(queue, exchange, "k")
        yield self.other.queue_delete(queue)
        yield wait_for(lambda: not consumer.active)
        yield wait_for(lambda: consumer.active)
        self.assertEqual(consumer.queue, queue)
        yield self.conn.publish(exchange, "k", b"after")
        yield wait_for(lambda: inbox.bodies == [b"before", b"after"])

    @defer.inlineCallbacks
    def test_broker_named_queue_gets_a_new_name(self):
        exchange = self.unique_name("x")
        yield self.conn.exchange_declare(exchange, "fanout", auto_delete=False)
        self.addCleanup(self.other.exchange_delete, exchange)
        queue = yield self.conn.queue_declare("", auto_delete=True)
        yield self.conn.queue_bind(queue, exchange, "")
        consumer, inbox = yield self.consuming(queue, exchange, "")
        yield self.other.queue_delete(queue)
        yield wait_for(lambda: consumer.active and consumer.queue != queue)
        self.assertTrue(consumer.queue.startswith("amq.gen-"), consumer.queue)
        yield self.conn.publish(exchange, "", b"after")
        yield wait_for(lambda: inbox.bodies == [b"before", b"after"])

    @defer.inlineCallbacks
    def test_auto_deleted_route_is_declared_again(self):
        """The queue gone, auto-delete exchanges routing only to it go too (the durable companion's case)."""
        point, companion, queue = self.unique_name("x"), self.unique_name("x"), self.unique_name("q")
        yield self.conn.exchange_declare(point, "topic", auto_delete=True)
        yield self.conn.exchange_declare(companion, "topic", durable=True, auto_delete=True)
        yield self.conn.exchange_bind(companion, point, "#")
        yield self.conn.queue_declare(queue, durable=True, auto_delete=False)
        self.addCleanup(self.other.queue_delete, queue)
        yield self.conn.queue_bind(queue, companion, "a.*")
        consumer, inbox = yield self.consuming(queue, point, "a.b")
        yield self.other.queue_delete(queue)
        yield wait_for(lambda: not consumer.active)
        yield wait_for(lambda: consumer.active)
        yield self.conn.publish(point, "a.c", b"after")
        yield wait_for(lambda: inbox.bodies == [b"before", b"after"])

    @defer.inlineCallbacks
    def test_tries_again_while_the_declaration_is_refused(self):
        queue = self.unique_name("q")
        yield self.conn.queue_declare(queue, auto_delete=True)
        consumer, inbox = yield self.consuming(queue, "", queue)
        yield self.other.queue_delete(queue)
        yield self.other.queue_declare(queue, exclusive=True)  # 405 RESOURCE_LOCKED for the other connection
        yield wait_for(lambda: not consumer.active)
        yield self.other.close()  # its exclusive queue goes with it
        yield wait_for(lambda: consumer.active)
        yield self.conn.publish("", queue, b"after")
        yield wait_for(lambda: inbox.bodies == [b"before", b"after"])

    @defer.inlineCallbacks
    def test_cancelled_consumer_is_not_subscribed_again(self):
        queue = self.unique_name("q")
        yield self.conn.queue_declare(queue, auto_delete=False)
        self.addCleanup(self.other.queue_delete, queue)
        consumer, _ = yield self.consuming(queue, "", queue)
        yield self.other.queue_delete(queue)
        yield wait_for(lambda: not consumer.active)
        yield consumer.cancel()
        yield self.conn.close()
        self.assertFalse((yield self.queue_exists(queue)))

    @defer.inlineCallbacks
    def queue_exists(self, queue):
        try:
            yield self.other.queue_declare(queue, passive=True)
        except ChannelError:
            return False
        return True


ConnectionResubscribeMemoryTest, ConnectionResubscribeRabbitTest = for_each_broker(ConnectionResubscribeTests, globals())


class SubscriberResubscribeTests(BrokerTestMixin):
    """Through the pub/sub API: a durable subscription whose queue was deleted under it gets the next events."""

    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "resubscribe-tester"})
        yield self.proc.spawn()

    @defer.inlineCallbacks
    def test_durable_subscription_survives_its_queue_deleted(self):
        origin, got = self.unique_name("o"), []
        sub = yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin=origin, queue_name=self.unique_name("durable"),
            durable=True, auto_delete=False, handler=lambda data: got.append(data["content"].name))
        manager = self.container.exchange_manager
        self.addCleanup(manager.delete_queue, sub.queue)
        pub = events.InfoLoggingEventPublisher(process=self.proc, origin=origin, persistent=True)
        yield self.proc.register_life_cycle_object(pub)
        yield pub.create_and_publish_event(name="before")
        yield wait_for(lambda: got == ["before"])
        other = yield self.connect_broker()
        yield other.queue_delete(sub.queue)
        yield wait_for(lambda: not sub.consuming)
        yield wait_for(lambda: sub.consuming)
        yield pub.create_and_publish_event(name="after")
        yield wait_for(lambda: got == ["before", "after"])


SubscriberResubscribeMemoryTest, SubscriberResubscribeRabbitTest = for_each_broker(
    SubscriberResubscribeTests, globals(), base=IonTestCase)


class BackoffTest(unittest.TestCase):
    """The waits between tries, on a task.Clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.tried_at = []

    def attempt(self, failures, error=ChannelError("404 NOT_FOUND - home node down", 404)):
        def attempt():
            self.tried_at.append(self.clock.seconds())
            if len(self.tried_at) <= failures:
                return defer.fail(error)
            return defer.succeed(None)
        return attempt

    def test_waits_double_up_to_the_bound(self):
        done = resubscribe.resubscribe(self.attempt(7), lambda: True, self.clock, "test")
        self.clock.pump([0.25] * 200)
        self.assertEqual(self.successResultOf(done), True)
        waits = [b - a for a, b in zip([0] + self.tried_at, self.tried_at)]
        self.assertEqual([round(w, 2) for w in waits], [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0])

    def test_stops_when_no_longer_wanted(self):
        wanted = [True]
        done = resubscribe.resubscribe(self.attempt(100), lambda: wanted[0], self.clock, "test")
        self.clock.advance(0.25)
        self.clock.advance(0.5)
        self.assertEqual(len(self.tried_at), 2)
        wanted[0] = False
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(done), False)
        self.assertEqual(len(self.tried_at), 2)

    def test_gone_stops(self):
        done = resubscribe.resubscribe(self.attempt(5, resubscribe.Gone()), lambda: True, self.clock, "test")
        self.clock.advance(0.25)
        self.assertEqual(self.successResultOf(done), False)
        self.assertEqual(len(self.tried_at), 1)

    def test_stop_ends_every_wait(self):
        running = resubscribe.Resubscriptions(self.clock)
        done = running.start(self.attempt(100), lambda: True, "test")
        self.clock.advance(0.25)
        running.stop()
        self.assertEqual(self.successResultOf(done), False)
        self.assertEqual(self.clock.getDelayedCalls(), [])
