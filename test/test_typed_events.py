"""
Typed event content and rate-limited failure logs, on both brokers.

An event subscriber's handler gets only events: hostile envelopes pushed by a
raw client to the events exchange under a matching routing key (a wrong
encoding, content of any other type, GPB objects that are not events) are
undecodable for it, counted, rejected or dead-lettered, and the next event
arrives.  A flood of failing handlers logs a bounded number of lines.  Every
rate limit runs on an injected task.Clock, so the counts are exact.
"""

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from ion.core.messaging.envelope import encode
from ion.core.messaging.message_client import new_message_instance
from ion.core.messaging.receiver import FailureThrottle, Receiver, WorkerReceiver
from ion.core.object.codec import ION_R1_GPB, pack
from ion.core.object.object_utils import create_type_identifier
from ion.core.object.repository import Repository
from ion.core.process.process import Process
from ion.services.dm.distribution import dead_letters, events
from ion.services.dm.distribution.publisher_subscriber import Subscriber, SubscriberFactory
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker, wait_for
from test.test_events import Collector
from test.test_poison import DeadLetterBox

ORIGIN = "typed"
KEY = "3003.%s" % ORIGIN
# One bit of the last character flipped: "ION R1 GPC".
FLIPPED_ENCODING = ION_R1_GPB[:-1] + chr(ord(ION_R1_GPB[-1]) ^ 1)
EVENT_MONITOR_SUBSCRIBE_TYPE = create_type_identifier(object_id=2335)  # GPB, but not an event


def envelope(content, encoding=None):
    """The body of an ION message from a hostile sender: `content` as is, `encoding` if given."""
    return encode("hostile", KEY, None, content, None if encoding is None else {"encoding": encoding}).body


def gpb_envelope(content_type):
    """A well-formed 'ION R1 GPB' envelope whose IonMsg holds a new object of `content_type` (None: nothing)."""
    return encode("hostile", KEY, None, new_message_instance(content_type)).body


@defer.inlineCallbacks
def hostile_envelopes(pub):
    """[(what it is, body)]: each a way for an envelope on an event route not to be an event."""
    event = yield pub.create_event(name="almost an event")
    sealed = encode("hostile", KEY, None, event)
    event_content, encoding = sealed.message["content"], sealed.message["encoding"]
    bare_event = Repository().create_object(events.EVENT_MESSAGE_TYPE)
    bare_event.name = "bare"
    return [
        ("encoding with a flipped bit", envelope(event_content, encoding=FLIPPED_ENCODING)),
        ("event bytes in build_message's default 'json' encoding", envelope(event_content)),
        ("int", envelope(7)),
        ("None", envelope(None)),
        ("list", envelope([1, "two"])),
        ("bytes", envelope(b"\x00raw")),
        ("dict", envelope({"name": "not an event"})),
        ("IonMsg holding a non-event", gpb_envelope(EVENT_MONITOR_SUBSCRIBE_TYPE)),
        ("IonMsg holding an event payload", gpb_envelope(events.LOGGING_EVENT_MESSAGE_TYPE)),
        ("IonMsg holding nothing", gpb_envelope(None)),
        ("bare EventMessage", envelope(pack(bare_event), encoding=encoding)),
        ("int labelled GPB", envelope(7, encoding)),
        ("None labelled GPB", envelope(None, encoding)),
        ("list labelled GPB", envelope([1, "two"], encoding)),
        ("dict labelled GPB", envelope({"name": "not an event"}, encoding)),
    ]


def is_not_an_event_reason(reason):
    """What an event subscriber says of a message that decodes but is no event, or cannot be GPB at all."""
    return reason.startswith("not an event: ") or "'ION R1 GPB' content must be bytes" in reason


def failing(data):
    raise ValueError("handler refuses %s" % (data["content"].name,))


class TypedEventTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "typed-tester"})
        yield self.proc.spawn()
        self.connection = self.container.exchange_manager.connection  # for publishing hostile bodies
        self.addCleanup(dead_letters.delete, self.container.exchange_manager)
        self.dead = DeadLetterBox()
        reader = yield dead_letters.consume(self.container.exchange_manager, self.dead)
        self.addCleanup(reader.cancel)
        self.pub = events.InfoLoggingEventPublisher(process=self.proc, origin=ORIGIN)
        yield self.proc.register_life_cycle_object(self.pub)
        self.clock = task.Clock()
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def subscribe(self, handler, subscriber_type=events.InfoLoggingEventSubscriber, **kwargs):
        kwargs.setdefault("clock", self.clock)
        return SubscriberFactory(process=self.proc).build(
            subscriber_type=subscriber_type, origin=ORIGIN, handler=handler, **kwargs
        )

    def lines(self, text):
        return [e for e in self.logged if text in e.get("log_format", "")]

    def loud_lines(self):
        """Warnings and worse logged by the project since setUp."""
        return [
            e
            for e in self.logged
            if e.get("log_namespace", "").startswith("ion.") and e["log_level"] >= LogLevel.warn
        ]

    @defer.inlineCallbacks
    def push(self, bodies, xp_name):
        raw = yield self.connect_broker()
        yield defer.gatherResults([raw.publish(xp_name, KEY, body) for body in bodies])

    # --- typed content -----------------------------------------------------
    @defer.inlineCallbacks
    def test_hostile_envelopes_never_reach_the_handler(self):
        collector = Collector()
        sub = yield self.subscribe(collector)
        reasons = []
        sub._recv.add_error_handler(lambda data, msg, reason: reasons.append(reason))
        hostile = yield hostile_envelopes(self.pub)
        yield self.push([body for _, body in hostile], sub._xp_name)
        yield self.pub.create_and_publish_event(name="after the hostile ones")
        yield collector.wait(1)
        self.assertEqual(collector.names(), ["after the hostile ones"])
        self.assertEqual(sub.stats["undecodable"], len(hostile))
        self.assertEqual(len(reasons), len(hostile))
        for (what, _), reason in zip(hostile, reasons):
            self.assertTrue(is_not_an_event_reason(reason), (what, reason))
        self.assertIn(repr(FLIPPED_ENCODING), reasons[0])
        self.assertIn("encoding 'json' is not", reasons[2])
        self.assertIn("IonMsg holding LoggingEventMessage", reasons[8])
        self.assertIn("IonMsg holding EventMonitorSubscribeMessage", reasons[7])
        self.assertIn("bare EventMessage", reasons[10])
        self.assertEqual(self.dead.letters, [])
        # Rate-limited: the clock has not moved, so one warning for them all ...
        self.assertEqual(len(self.lines("cannot decode")), 1)
        # ... and the next one, a second later, says how many it left out.
        self.clock.advance(1)
        yield self.push([hostile[2][1]], sub._xp_name)
        yield wait_for(lambda: sub.stats["undecodable"] == len(hostile) + 1)
        warnings = self.lines("cannot decode")
        self.assertEqual([e["skipped"] for e in warnings], [0, len(hostile) - 1])

    @defer.inlineCallbacks
    def test_hostile_envelopes_dead_lettered(self):
        collector = Collector()
        sub = yield self.subscribe(collector, dead_letter=True)
        hostile = yield hostile_envelopes(self.pub)
        bodies = [body for _, body in hostile]
        yield self.push(bodies, sub._xp_name)
        yield self.pub.create_and_publish_event(name="after the hostile ones")
        yield collector.wait(1)
        yield self.dead.wait(len(hostile))
        self.assertEqual(collector.names(), ["after the hostile ones"])
        self.assertEqual([letter.body for letter in self.dead.letters], bodies)
        for letter in self.dead.letters:
            self.assertTrue(is_not_an_event_reason(letter.reason), letter.reason)
            self.assertEqual((letter.routing_key, letter.queue, letter.attempts), (KEY, sub.queue, 0))
        self.assertEqual((sub.stats["undecodable"], sub.stats["dead_lettered"]), (len(hostile), len(hostile)))

    @defer.inlineCallbacks
    def test_event_subscriber_for_any_event_is_typed_too(self):
        collector = Collector()
        sub = yield self.subscribe(collector, subscriber_type=events.EventSubscriber)
        self.assertEqual(sub._binding_key, "*.%s" % ORIGIN)
        hostile = yield hostile_envelopes(self.pub)
        yield self.push([body for _, body in hostile], sub._xp_name)
        yield self.pub.create_and_publish_event(name="an event")
        yield collector.wait(1)
        self.assertEqual(collector.names(), ["an event"])
        self.assertEqual(sub.stats["undecodable"], len(hostile))

    @defer.inlineCallbacks
    def test_generic_subscriber_takes_any_content(self):
        got = []
        yield SubscriberFactory(process=self.proc).build(
            xp_name=events.get_events_exchange_point(), binding_key=KEY, handler=lambda data: got.append(data)
        )
        contents = [7, None, [1, "two"], b"\xff\x00raw", {"name": "not an event"}]
        yield self.push([envelope(c) for c in contents], events.get_events_exchange_point())
        yield self.pub.create_and_publish_event(name="an event")
        yield wait_for(lambda: len(got) == len(contents) + 1)
        self.assertEqual([data["content"] for data in got[:-1]], contents)
        self.assertEqual(got[-1]["content"].name, "an event")

    # --- failure floods ------------------------------------------------------
    @defer.inlineCallbacks
    def publish_events(self, count, prefix="e"):
        for start in range(0, count, 100):
            batch = range(start, min(count, start + 100))
            yield defer.gatherResults([self.pub.create_and_publish_event(name="%s%d" % (prefix, i)) for i in batch])

    @defer.inlineCallbacks
    def test_flood_of_handler_failures_logs_bounded_lines(self):
        sub = yield self.subscribe(failing)
        yield self.publish_events(500)
        yield wait_for(lambda: sub.stats["handler_failed"] == 500, timeout=60)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        (first,) = self.lines("ondata failed")
        self.assertEqual((first["outcome"], first["attempts"]), ("acked", 1))
        self.assertIn(KEY, first["event"])
        self.assertEqual(self.lines("more handler failures"), [])  # the second is not over
        self.clock.advance(1)
        (summary,) = self.lines("more handler failures")
        self.assertEqual((summary["count"], summary["seconds"]), (499, 1))
        self.assertEqual(len(self.loud_lines()), 2)
        print("\n%s: 500 handler failures, %d log lines" % (type(self).__name__, len(self.loud_lines())))

    test_flood_of_handler_failures_logs_bounded_lines.timeout = 90

    @defer.inlineCallbacks
    def test_one_traceback_and_one_summary_per_interval(self):
        sub = yield self.subscribe(failing)
        for second in range(5):
            yield self.publish_events(100, prefix="s%d-" % second)
            yield wait_for(lambda: sub.stats["handler_failed"] == 100 * (second + 1), timeout=30)
            self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 5)
        self.assertEqual([e["count"] for e in self.lines("more handler failures")], [99] * 5)
        self.assertEqual(len(self.loud_lines()), 10)

    test_one_traceback_and_one_summary_per_interval.timeout = 90

    @defer.inlineCallbacks
    def test_dead_lettering_flood_logs_bounded_lines(self):
        sub = yield self.subscribe(failing, dead_letter=True)
        yield self.publish_events(200)
        yield self.dead.wait(200)
        self.assertEqual(sub.stats["dead_lettered"], 200)
        (first,) = self.lines("ondata failed")
        self.assertEqual(first["outcome"], "dead-lettered")
        self.assertEqual(self.dead.letters[-1].reason, "ValueError: handler refuses e199")
        self.flushLoggedErrors(ValueError)
        self.clock.advance(1)
        self.assertEqual(len(self.loud_lines()), 2)

    @defer.inlineCallbacks
    def test_pending_summary_written_when_subscriber_stops(self):
        sub = yield self.subscribe(failing, depth_warning=0)  # only the summary is timed on the clock
        yield self.publish_events(3)
        yield wait_for(lambda: sub.stats["handler_failed"] == 3)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        yield sub.terminate()
        (summary,) = self.lines("more handler failures")
        self.assertEqual((summary["label"], summary["count"], summary["seconds"]), ("Subscriber " + KEY, 2, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.flushLoggedErrors(ValueError)

    @defer.inlineCallbacks
    def test_reactor_clock_leaves_no_delayed_call(self):
        sub = yield self.subscribe(failing, clock=None)
        yield self.publish_events(3)
        yield wait_for(lambda: sub.stats["handler_failed"] == 3)
        throttle = sub._recv.handler_failures
        self.assertIs(throttle.clock, reactor)
        yield sub.terminate()
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.func == throttle.flush], [])
        self.flushLoggedErrors(ValueError)

    @defer.inlineCallbacks
    def test_receiver_handler_failures_rate_limited(self):
        name = self.unique_name("work")

        def handler(data, msg):
            raise ValueError("receiver handler refuses %s" % (data["content"],))

        receiver = WorkerReceiver(name, process=self.proc, handler=handler, clock=self.clock)
        yield receiver.attach()
        self.addCleanup(receiver.terminate)
        sender = Receiver("sender", process=self.proc)
        yield defer.gatherResults([sender.send(name, "note", i) for i in range(100)])
        yield wait_for(lambda: receiver.stats["handler_failed"] == 100)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.clock.advance(1)
        self.assertEqual([e["count"] for e in self.lines("more handler failures")], [99])


for_each_broker(TypedEventTests, globals(), base=IonTestCase)


class FailureThrottleTest(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.throttle = FailureThrottle("t", interval=2.0, clock=self.clock)
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def summaries(self):
        return [(e["count"], e["seconds"]) for e in self.logged if "more handler failures" in e.get("log_format", "")]

    def test_first_admitted_rest_counted_until_the_interval_ends(self):
        self.assertEqual([self.throttle.admit() for _ in range(4)], [True, False, False, False])
        self.clock.advance(1.5)
        self.assertFalse(self.throttle.admit())
        self.assertEqual(self.summaries(), [])
        self.clock.advance(0.5)
        self.assertEqual(self.summaries(), [(4, 2.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.throttle.admit())

    def test_no_summary_without_counted_failures(self):
        self.assertTrue(self.throttle.admit())
        self.clock.advance(5)
        self.assertTrue(self.throttle.admit())
        self.throttle.flush()
        self.assertEqual(self.summaries(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush_writes_the_pending_summary_and_cancels_its_timer(self):
        self.throttle.admit()
        self.clock.advance(0.25)
        self.throttle.admit()
        self.throttle.flush()
        self.assertEqual(self.summaries(), [(1, 0.25)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.throttle.flush()
        self.assertEqual(len(self.summaries()), 1)
