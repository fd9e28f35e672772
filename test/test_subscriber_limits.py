"""
Bounded queues on both brokers: a subscriber's max_length with each overflow
behaviour, the warning about a queue that keeps growing (on an injected
clock), and the bounds of the dead letters.
"""

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from ion.core import ioninit
from ion.core.messaging.broker.interface import MessageRefused
from ion.core.process.process import Process
from ion.services.dm.distribution import dead_letters, events
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker, wait_for
from test.test_events import Collector

ORIGIN = "limits"
DEAD_LETTERS = "ion.services.dm.distribution.dead_letters"


class HoldingHandler(Collector):
    """Keeps each event's handling open until `release()`: the subscriber's queue fills meanwhile."""

    def __init__(self):
        super().__init__()
        self.held = []
        self.holding = True

    def __call__(self, data):
        if not self.holding:
            return super().__call__(data)
        d = defer.Deferred()
        self.held.append(d)  # first: a test waiting for this event resumes inside the next line
        super().__call__(data)
        return d

    def release(self):
        held, self.held = self.held, []
        for d in held:
            d.callback(None)


class SubscriberLimitTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "limits-tester"})
        yield self.proc.spawn()
        self.connection = self.container.exchange_manager.connection
        self.pub = events.InfoLoggingEventPublisher(process=self.proc, origin=ORIGIN)
        yield self.proc.register_life_cycle_object(self.pub)
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    @defer.inlineCallbacks
    def subscribe(self, handler, **kwargs):
        # Prefetch 1: a held handler keeps every later event ready in the queue, where its limits apply.
        kwargs.setdefault("prefetch_count", 1)
        sub = yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin=ORIGIN, handler=handler, **kwargs
        )
        return sub

    @defer.inlineCallbacks
    def wait_depth(self, queue, depth, timeout=10.0):
        deadline = reactor.seconds() + timeout
        while (yield self.connection.queue_depth(queue)) != depth:
            if reactor.seconds() > deadline:
                self.fail("queue %r never held %d ready events" % (queue, depth))
            yield task.deferLater(reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def publish(self, names):
        """Publish an event per name, each confirmed before the next; fires with the names refused."""
        refused = []
        for name in names:
            try:
                yield self.pub.create_and_publish_event(name=name)
            except MessageRefused:
                refused.append(name)
        return refused

    @defer.inlineCallbacks
    def release_all(self, handler, count):
        """Let the handler finish events until it has seen `count`."""
        while len(handler.events) < count:
            handler.release()
            yield wait_for(lambda: handler.held or len(handler.events) >= count)
        handler.release()

    def lines(self, text):
        return [e for e in self.logged if text in (e.get("log_format") or "")]

    # --- max_length

    @defer.inlineCallbacks
    def test_max_length_drop_head_keeps_the_newest(self):
        handler = HoldingHandler()
        sub = yield self.subscribe(handler, max_length=3)
        refused = yield self.publish(["e%d" % i for i in range(8)])
        self.assertEqual(refused, [])
        yield handler.wait(1)
        yield self.wait_depth(sub.queue, 3)
        yield self.release_all(handler, 4)
        self.assertEqual(handler.names(), ["e0", "e5", "e6", "e7"])
        yield self.wait_depth(sub.queue, 0)

    @defer.inlineCallbacks
    def test_max_length_reject_publish_fails_the_publish(self):
        handler = HoldingHandler()
        sub = yield self.subscribe(handler, max_length=3, overflow="reject-publish")
        refused = yield self.publish(["e%d" % i for i in range(8)])
        self.assertEqual(refused, ["e4", "e5", "e6", "e7"])
        yield self.wait_depth(sub.queue, 3)
        yield self.release_all(handler, 4)
        self.assertEqual(handler.names(), ["e0", "e1", "e2", "e3"])

    @defer.inlineCallbacks
    def test_max_length_bytes_bounds_the_queue(self):
        handler = HoldingHandler()
        sub = yield self.subscribe(handler, max_length_bytes=1)
        yield self.publish(["first", "second", "third"])
        yield handler.wait(1)
        yield self.wait_depth(sub.queue, 0)  # no event fits in one byte
        handler.release()
        self.assertEqual(handler.names(), ["first"])

    # --- depth warning

    @defer.inlineCallbacks
    def test_growing_queue_is_warned_about_once_until_it_recovers(self):
        clock = task.Clock()
        handler = HoldingHandler()
        sub = yield self.subscribe(handler, depth_warning=5, clock=clock)
        watch = sub._depth_watch
        self.assertEqual(watch.interval, 10)
        yield self.publish(["e%d" % i for i in range(8)])
        yield handler.wait(1)
        yield self.wait_depth(sub.queue, 7)
        clock.advance(9.9)
        self.assertEqual(watch.checks, 0)
        clock.advance(0.1)
        yield wait_for(lambda: watch.checks == 1)
        warnings = self.lines("over the warning threshold")
        self.assertEqual(len(warnings), 1)
        self.assertEqual((warnings[0]["queue"], warnings[0]["depth"], warnings[0]["threshold"]), (sub.queue, 7, 5))
        clock.advance(10)
        yield wait_for(lambda: watch.checks == 2)
        self.assertEqual(len(self.lines("over the warning threshold")), 1)  # once
        yield self.release_all(handler, 8)
        yield self.wait_depth(sub.queue, 0)
        clock.advance(10)
        yield wait_for(lambda: watch.checks == 3)
        self.assertEqual(self.lines("is down to")[0]["depth"], 0)
        yield self.publish(["again%d" % i for i in range(7)])
        yield self.wait_depth(sub.queue, 6)
        clock.advance(10)
        yield wait_for(lambda: watch.checks == 4)
        self.assertEqual(len(self.lines("over the warning threshold")), 2)
        handler.holding = False
        handler.release()
        yield sub.deactivate()
        self.assertEqual(clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_depth_check_stops_with_the_subscriber(self):
        clock = task.Clock()
        sub = yield self.subscribe(Collector(), clock=clock)
        self.assertEqual(sub._depth_watch.threshold, 10000)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        yield sub.deactivate()
        self.assertEqual(clock.getDelayedCalls(), [])
        yield sub.activate()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        yield sub.terminate()
        self.assertEqual(clock.getDelayedCalls(), [])
        off = yield self.subscribe(Collector(), clock=clock, depth_warning=0)
        self.assertIsNone(off._depth_watch)
        self.assertEqual(clock.getDelayedCalls(), [])


for_each_broker(SubscriberLimitTests, globals(), base=IonTestCase)


class DeadLetterBoundTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.connection = self.container.exchange_manager.connection
        self.broker = self.container.exchange_manager
        self.addCleanup(dead_letters.delete, self.broker)
        self.name = dead_letters.dead_letter_name()

    def configure(self, **settings):
        ioninit.merge_config({DEAD_LETTERS: settings})
        self.addCleanup(ioninit.load_config)

    @defer.inlineCallbacks
    def read(self, count):
        """The `count` dead letters the queue holds, in order (and that it holds no more)."""
        self.assertEqual((yield self.connection.queue_depth(self.name)), count)
        letters = []
        reader = yield dead_letters.consume(self.broker, letters.append)
        yield wait_for(lambda: len(letters) >= count)
        yield reader.cancel()
        return letters

    @defer.inlineCallbacks
    def test_count_bound_from_config_drops_the_oldest(self):
        self.configure(max_length=3)
        yield dead_letters.declare(self.broker)
        bodies = [bytes([i, 0, 255, 0x80]) * (i + 1) for i in range(5)]  # not text, sizes differ
        for body in bodies:
            yield self.connection.publish(self.name, "k.%d" % len(body), body)
        letters = yield self.read(3)
        self.assertEqual([letter.body for letter in letters], bodies[2:])

    @defer.inlineCallbacks
    def test_byte_bound_from_config_drops_the_oldest(self):
        self.configure(max_length_bytes=100)
        yield dead_letters.declare(self.broker)
        bodies = [b"%02d" % i + b"\x00" * 38 for i in range(4)]  # 40 bytes each: two fit
        for body in bodies:
            yield self.connection.publish(self.name, "k", body)
        letters = yield self.read(2)
        self.assertEqual([letter.body for letter in letters], bodies[2:])

    @defer.inlineCallbacks
    def test_subscriber_dead_letters_are_bounded_and_byte_exact(self):
        self.configure(max_length=2)
        proc = Process(spawnargs={"proc-name": "dead-letter-bounds"})
        yield proc.spawn()
        collector = Collector()
        sub = yield SubscriberFactory(process=proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin=ORIGIN, handler=collector, dead_letter=True
        )
        bodies = [b"\xc1undecodable %d \xff" % i for i in range(4)]
        for body in bodies:
            yield self.connection.publish(sub._xp_name, "3003.%s" % ORIGIN, body)
        yield wait_for(lambda: sub.stats["dead_lettered"] == 4)
        letters = yield self.read(2)
        self.assertEqual([letter.body for letter in letters], bodies[2:])
        self.assertEqual(collector.events, [])

    @defer.inlineCallbacks
    def test_existing_unbounded_queue_is_used_with_one_warning(self):
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        # As an older version declared it: no bounds.
        yield self.connection.exchange_declare(self.name, type="topic", durable=True, auto_delete=False)
        yield self.connection.queue_declare(self.name, durable=True, auto_delete=False)
        yield dead_letters.declare(self.broker)
        yield dead_letters.declare(self.broker)
        warnings = [e for e in logged if "these bounds are not applied" in (e.get("log_format") or "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["name"], self.name)
        for i in range(3):
            yield self.connection.publish(self.name, "k", b"kept %d" % i)
        letters = yield self.read(3)
        self.assertEqual([letter.body for letter in letters], [b"kept 0", b"kept 1", b"kept 2"])


for_each_broker(DeadLetterBoundTests, globals(), base=IonTestCase)


class ArgumentTest(unittest.TestCase):
    """Bad limits are refused before anything reaches a broker, naming what was wrong."""

    def test_dead_letter_bounds_default_and_validation(self):
        self.assertEqual(
            dead_letters.queue_arguments(),
            {"x-max-length": 10000, "x-max-length-bytes": 64 * 1024 * 1024, "x-overflow": "drop-head"},
        )
        self.addCleanup(ioninit.load_config)
        ioninit.merge_config({DEAD_LETTERS: {"max_length": None, "max_length_bytes": None}})
        self.assertEqual(dead_letters.queue_arguments(), {})
        ioninit.merge_config({DEAD_LETTERS: {"max_length": "10"}})
        with self.assertRaisesRegex(ValueError, "max_length must be"):
            dead_letters.queue_arguments()

    def test_subscriber_limits_validated(self):
        proc = Process(spawnargs={"proc-name": "limits-arguments"})

        def make(**kwargs):
            return events.InfoLoggingEventSubscriber(process=proc, origin=ORIGIN, **kwargs)

        # Unbounded: only the queue type, always explicit.
        self.assertEqual(make().consumer_config["arguments"], {"x-queue-type": "classic"})
        self.assertEqual(
            make(max_length=5, max_length_bytes=100, overflow="reject-publish").consumer_config["arguments"],
            {"x-max-length": 5, "x-max-length-bytes": 100, "x-overflow": "reject-publish", "x-queue-type": "classic"},
        )
        self.assertEqual(make(max_length=5).consumer_config["arguments"]["x-overflow"], "drop-head")
        for kwargs, named in (
            ({"max_length": 0}, "max_length"),
            ({"max_length": True}, "max_length"),
            ({"max_length_bytes": "1k"}, "max_length_bytes"),
            ({"max_length": 5, "overflow": "reject-publish-dlx"}, "overflow"),
            ({"overflow": "drop-head"}, "overflow"),
            ({"depth_warning": -1}, "depth_warning"),
        ):
            with self.assertRaisesRegex(ValueError, named):
                make(**kwargs)
        self.addCleanup(ioninit.load_config)
        ioninit.merge_config({"ion.services.dm.distribution.publisher_subscriber": {"queue_depth_check_interval": 0}})
        with self.assertRaisesRegex(ValueError, "queue_depth_check_interval"):
            make()
