"""
The subscriber's handler guarantee on both brokers (issue 11, item 3): one
event at a time, in queue order, each acked before the next handler call,
whatever the prefetch; `concurrency=N` allows N calls at once.
"""

from twisted.internet import defer

from ion.core.messaging.messaging import Message
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.publisher_subscriber import DEFAULT_PREFETCH, SubscriberFactory
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker, wait_for

EVENTS = 30


class Holder:
    """
    An ondata handler that holds each event's handling open until the test
    releases it, noting the order of calls, how many ran at once, and the
    state of every earlier message when each call began.
    """

    def __init__(self):
        self.started = []  # event names, in call order
        self.held = []  # Deferreds of unfinished calls, oldest first
        self.running = 0
        self.most_at_once = 0
        self.unsettled_before = []  # (name, earlier messages not yet settled) at each call
        self.subscriber = None

    def __call__(self, data):
        name = data["content"].name
        earlier = [m for m in self.messages if m.state == Message.RECEIVED and m is not self.current(name)]
        self.unsettled_before.append((name, len(earlier)))
        self.started.append(name)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        d = defer.Deferred()
        self.held.append(d)

        def finished(result):
            self.running -= 1
            return result

        return d.addBoth(finished)

    @property
    def messages(self):
        return list(self.subscriber._recv.processing_messages.values())

    def current(self, name):
        for m in self.messages:
            if m.payload["content"].name == name:
                return m
        return None

    def release(self):
        self.held.pop(0).callback(None)


class HandlerGuaranteeTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "guarantee-tester"})
        yield self.proc.spawn()

    @defer.inlineCallbacks
    def subscriber(self, origin, **kwargs):
        holder = Holder()
        sub = yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin=origin, handler=holder, **kwargs
        )
        holder.subscriber = sub
        self.addCleanup(lambda: [d.callback(None) for d in holder.held if not d.called])
        return sub, holder

    @defer.inlineCallbacks
    def publish(self, origin, count=EVENTS):
        pub = events.InfoLoggingEventPublisher(process=self.proc, origin=origin)
        yield self.proc.register_life_cycle_object(pub)
        # All in flight at once: the broker has them all before the first handler call finishes.
        yield defer.gatherResults([pub.create_and_publish_event(name="e%02d" % i) for i in range(count)])

    def queue_depth(self, sub):
        return self.container.exchange_manager.connection.queue_depth(sub.queue)

    @defer.inlineCallbacks
    def test_default_one_at_a_time_in_order_acked_before_next(self):
        sub, holder = yield self.subscriber("serial")
        self.assertEqual(sub.consumer_config["prefetch_count"], DEFAULT_PREFETCH)
        self.assertGreater(DEFAULT_PREFETCH, 1)
        yield self.publish("serial")
        # Every event has been handed over (prefetched) while the first call is still open.
        yield wait_for(lambda: len(sub._recv._waiting) == EVENTS - 1)
        self.assertEqual(holder.started, ["e00"])
        for i in range(1, EVENTS):
            holder.release()
            yield wait_for(lambda: len(holder.started) == i + 1)
        holder.release()
        self.assertEqual(holder.started, ["e%02d" % i for i in range(EVENTS)])
        self.assertEqual(holder.most_at_once, 1)
        # At each call, no earlier message was still unacked: each was acked before the next call.
        self.assertEqual([n for _, n in holder.unsettled_before], [0] * EVENTS)
        yield wait_for(lambda: not sub._recv.processing_messages)
        depth = yield self.queue_depth(sub)
        self.assertEqual(depth, 0)

    @defer.inlineCallbacks
    def test_synchronous_handler_keeps_order(self):
        seen = []
        sub = yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin="sync",
            handler=lambda data: seen.append(data["content"].name),
        )
        yield self.publish("sync", count=200)
        yield wait_for(lambda: len(seen) == 200)
        self.assertEqual(seen, ["e%02d" % i for i in range(200)])
        yield wait_for(lambda: not sub._recv.processing_messages)

    @defer.inlineCallbacks
    def test_concurrency_n(self):
        sub, holder = yield self.subscriber("parallel", concurrency=4)
        yield self.publish("parallel")
        yield wait_for(lambda: len(holder.started) == 4 and len(sub._recv._waiting) == EVENTS - 4)
        self.assertEqual(holder.started, ["e%02d" % i for i in range(4)])
        # Each finished call lets exactly the next waiting event in, in queue order.
        for i in range(EVENTS - 4):
            holder.release()
            yield wait_for(lambda: len(holder.started) == 5 + i)
            self.assertEqual(holder.running, 4)
        while holder.held:
            holder.release()
        self.assertEqual(holder.started, ["e%02d" % i for i in range(EVENTS)])
        self.assertEqual(holder.most_at_once, 4)
        yield wait_for(lambda: not sub._recv.processing_messages)
        depth = yield self.queue_depth(sub)
        self.assertEqual(depth, 0)

    @defer.inlineCallbacks
    def test_failing_handler_does_not_break_the_sequence(self):
        seen = []

        def handler(data):
            name = data["content"].name
            seen.append(name)
            if name == "e03":
                raise ValueError("boom")
            return defer.succeed(None)

        sub = yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin="fails", handler=handler
        )
        yield self.publish("fails", count=10)
        yield wait_for(lambda: len(seen) == 10)
        self.assertEqual(seen, ["e%02d" % i for i in range(10)])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(sub.stats["handler_failed"], 1)

    @defer.inlineCallbacks
    def test_unsubscribe_hands_waiting_events_back(self):
        name = self.unique_name("handback")
        sub, holder = yield self.subscriber("handback", queue_name=name, auto_delete=False)
        self.addCleanup(self.container.exchange_manager.delete_queue, sub.queue)  # the sysname-prefixed name
        yield self.publish("handback", count=10)
        yield wait_for(lambda: len(sub._recv._waiting) == 9)
        stopping = sub.unsubscribe()
        yield wait_for(lambda: sub._recv._draining)
        self.assertEqual(len(sub._recv._waiting), 0)  # left unacked: the broker takes them back
        holder.release()  # the call in progress finishes; unsubscribe waits for it
        yield stopping
        self.assertEqual(holder.started, ["e00"])
        yield sub.subscribe()
        for i in range(2, 11):
            yield wait_for(lambda: len(holder.started) == i)
            holder.release()
        self.assertEqual(sorted(holder.started[1:]), ["e%02d" % i for i in range(1, 10)])

    def test_concurrency_must_be_positive(self):
        for bad in (0, -1, 1.5, True, "2"):
            self.assertRaises(ValueError, events.InfoLoggingEventSubscriber, process=self.proc, concurrency=bad)


for_each_broker(HandlerGuaranteeTests, globals(), base=IonTestCase)
