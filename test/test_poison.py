"""
Delivery robustness on both brokers: durable subscriptions with persistent
events, failing handlers (R1's ack-and-log, retries, dead letters) and poison
messages pushed by a raw client.
"""

import random
import time

from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from ion.core.messaging import envelope
from ion.core.object.codec import ION_R1_GPB
from ion.core.object.gpb.net.ooici.core.container.container_pb2 import Structure
from ion.core.object.repository import content_key
from ion.core.process.process import Process
from ion.services.dm.distribution import dead_letters, events
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker, wait_for
from test.test_events import Collector

ORIGIN = "poison"
KEY = "3003.%s" % ORIGIN
MALFORMED = 10000


class DeadLetterBox:
    """Keeps the dead letters read back and lets a test wait for them."""

    def __init__(self):
        self.letters = []

    def __call__(self, letter):
        self.letters.append(letter)

    def wait(self, count, timeout=30):
        return wait_for(lambda: len(self.letters) >= count, timeout=timeout)


class FailingHandler(Collector):
    """Fails on the first `failures` calls for each event name (forever when None)."""

    def __init__(self, failures=None):
        super().__init__()
        self.failures = failures
        self.calls = []

    def __call__(self, data):
        name = data["content"].name
        self.calls.append(name)
        if self.failures is None or self.calls.count(name) <= self.failures:
            raise ValueError("handler refuses %s" % (name,))
        super().__call__(data)


def malformed_bodies(count, event_body, event_content, seed=5):
    """`count` bodies no decoder can make an ION message of, of every kind, in a fixed mix."""
    rnd = random.Random(seed)
    structure = Structure.FromString(event_content)
    headers = {"sender": "forger", "receiver": KEY, "encoding": ION_R1_GPB}
    non_map_starts = [b for b in range(256) if not (0x80 <= b <= 0x8F or b in (0xDE, 0xDF))]

    def forged():
        s = Structure()
        s.CopyFrom(structure)
        element = rnd.choice([s.head, *s.items])
        how = rnd.randrange(5)
        if how == 0:  # content changed, key not
            element.value = element.value + b"\x00"
        elif how == 1:  # a linked element left out
            del s.items[rnd.randrange(len(s.items))]
        elif how == 2:  # isleaf lies, key recomputed so only the flag is wrong
            element.isleaf = not element.isleaf
        elif how == 3:  # a type version that does not exist, with a matching key
            element.type.version = 2
            element.key = content_key(element.value, element.type)
        else:  # an unknown type
            element.type.object_id = 999999
        return envelope.pack_body(dict(headers, content=s.SerializeToString()))

    makers = (
        lambda: bytes([rnd.choice(non_map_starts)]) + rnd.randbytes(rnd.randrange(64)),
        lambda: event_body[: rnd.randrange(len(event_body))],
        forged,
        lambda: envelope.pack_body(dict(headers, content=rnd.randbytes(rnd.randrange(1, 64)))),
        lambda: envelope.pack_body({"sender": "forger", "content": b"x", 7: "a number as a header key"}),
    )
    return [makers[i % len(makers)]() for i in range(count)]


class PoisonTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "poison-tester"})
        yield self.proc.spawn()
        self.connection = self.container.exchange_manager.connection  # for publishing forged bodies
        self.broker = self.container.exchange_manager
        # Dead letters are durable: nothing else would remove them from RabbitMQ.
        self.addCleanup(dead_letters.delete, self.broker)
        self.dead = DeadLetterBox()
        reader = yield dead_letters.consume(self.broker, self.dead)
        self.addCleanup(reader.cancel)
        self.pub = events.InfoLoggingEventPublisher(process=self.proc, origin=ORIGIN)
        yield self.proc.register_life_cycle_object(self.pub)
        self.clock = task.Clock()  # times the subscribers' log rate limits: counts are exact

    @defer.inlineCallbacks
    def subscribe(self, handler, **kwargs):
        kwargs.setdefault("clock", self.clock)
        sub = yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin=ORIGIN, handler=handler, **kwargs
        )
        return sub

    def capture_log(self):
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        return logged

    @defer.inlineCallbacks
    def barrier(self, sub):
        """Push one undecodable message through `sub` and wait for it in the dead letters."""
        before = len(self.dead.letters)
        yield self.connection.publish(sub._xp_name, KEY, b"\xc1barrier")
        yield self.dead.wait(before + 1)
        self.assertEqual(self.dead.letters[-1].body, b"\xc1barrier")

    # --- durable subscriptions -------------------------------------------
    @defer.inlineCallbacks
    def test_durable_subscriber_gets_persistent_events_published_while_down(self):
        name = self.unique_name("durable")
        first = Collector()
        sub = yield self.subscribe(first, queue_name=name, durable=True, auto_delete=False)
        queue = sub._queue_name  # the system-scoped name
        self.addCleanup(self.connection.queue_delete, queue)
        modes = []
        pub = events.InfoLoggingEventPublisher(process=self.proc, origin=ORIGIN, persistent=True)
        yield self.proc.register_life_cycle_object(pub)
        yield pub.create_and_publish_event(name="before")
        yield first.wait(1)
        yield sub.terminate()
        self.assertIsNone(sub.queue)
        yield self.connection.queue_declare(queue, passive=True)  # kept
        for i in range(3):
            yield pub.create_and_publish_event(name="while down %d" % i)
        second = Collector()
        again = events.InfoLoggingEventSubscriber(
            process=self.proc, origin=ORIGIN, queue_name=name, durable=True, auto_delete=False
        )
        again.ondata = second
        again._recv.add_handler(lambda data, msg: modes.append(msg.delivery_mode))
        yield self.proc.register_life_cycle_object(again)
        self.assertEqual(again.queue, queue)
        yield wait_for(lambda: len(modes) == 3)
        self.assertEqual(first.names(), ["before"])
        self.assertEqual(second.names(), ["while down 0", "while down 1", "while down 2"])
        self.assertEqual(modes, [2, 2, 2])

    # --- failing handlers ------------------------------------------------
    @defer.inlineCallbacks
    def test_default_acks_and_logs_failure_with_event(self):
        logged = self.capture_log()
        handler = FailingHandler()
        sub = yield self.subscribe(handler)
        self.assertIsNone(sub.dead_letter_name)
        yield self.pub.create_and_publish_event(name="boom")
        yield self.pub.create_and_publish_event(name="boom2")
        yield wait_for(lambda: handler.calls == ["boom", "boom2"])
        # The first failure of the second in full, the other counted.
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        failures = [e for e in logged if "ondata failed" in e.get("log_format", "")]
        self.assertEqual(len(failures), 1)
        self.assertIn(KEY, failures[0]["event"])
        self.assertIn("boom", failures[0]["event"])
        self.assertEqual((failures[0]["attempts"], failures[0]["outcome"]), (1, "acked"))
        self.clock.advance(1)
        summaries = [e for e in logged if "more handler failures" in e.get("log_format", "")]
        self.assertEqual([(e["label"], e["count"], e["seconds"]) for e in summaries], [("Subscriber " + KEY, 1, 1)])
        # A new second: the next failure is logged in full again.
        yield self.pub.create_and_publish_event(name="boom3")
        yield wait_for(lambda: len(handler.calls) == 3)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual((sub.stats["handler_failed"], sub.stats["retried"], sub.stats["dead_lettered"]), (3, 0, 0))

    @defer.inlineCallbacks
    def test_retries_then_dead_letter(self):
        handler = FailingHandler()
        sub = yield self.subscribe(handler, retries=3)
        sent = yield self.pub.create_and_publish_event(name="poison pill", origin=ORIGIN)
        yield self.dead.wait(1)
        (letter,) = self.dead.letters
        self.assertEqual(handler.calls, ["poison pill"] * 4)
        self.assertEqual(letter.attempts, 4)
        self.assertEqual(letter.reason, "ValueError: handler refuses poison pill")
        self.assertEqual((letter.routing_key, letter.original_exchange), (KEY, sub._xp_name))
        self.assertEqual((letter.queue, letter.subscriber), (sub.queue, sub._sub_name))
        self.assertEqual(letter.properties["content_type"], "application/msgpack")
        self.assertEqual(envelope.decode(letter.body)["content"].name, sent.name)
        # Nothing more happens to it, and the subscriber goes on.
        yield self.barrier(sub)
        self.assertEqual(handler.calls, ["poison pill"] * 4)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)  # the others are in the second's summary
        self.assertEqual((sub.stats["retried"], sub.stats["dead_lettered"]), (3, 2))

    @defer.inlineCallbacks
    def test_retry_succeeds(self):
        handler = FailingHandler(failures=2)
        sub = yield self.subscribe(handler, retries=3)
        yield self.pub.create_and_publish_event(name="flaky")
        yield handler.wait(1)
        self.assertEqual(handler.calls, ["flaky"] * 3)
        yield self.barrier(sub)
        self.assertEqual(len(self.dead.letters), 1)  # only the barrier
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @defer.inlineCallbacks
    def test_dead_letter_without_retries(self):
        handler = FailingHandler()
        yield self.subscribe(handler, dead_letter=True)
        yield self.pub.create_and_publish_event(name="once")
        yield self.dead.wait(1)
        self.assertEqual(handler.calls, ["once"])
        self.assertEqual(self.dead.letters[0].attempts, 1)
        self.flushLoggedErrors(ValueError)

    @defer.inlineCallbacks
    def test_retries_without_dead_letter_reject(self):
        handler = FailingHandler(failures=5)
        sub = yield self.subscribe(handler, retries=1, dead_letter=False)
        yield self.pub.create_and_publish_event(name="dropped")
        yield wait_for(lambda: len(handler.calls) == 2)
        yield self.pub.create_and_publish_event(name="next")
        yield wait_for(lambda: handler.calls.count("next") == 2)
        self.assertEqual(handler.calls, ["dropped", "dropped", "next", "next"])
        self.assertEqual(self.dead.letters, [])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(sub.stats["retried"], 2)

    def test_bad_retries(self):
        for bad in (-1, "3", 1.5, True):
            with self.assertRaises(ValueError) as caught:
                events.InfoLoggingEventSubscriber(process=self.proc, retries=bad)
            self.assertIn(repr(bad), str(caught.exception))

    @defer.inlineCallbacks
    def test_forged_headers_are_ignored(self):
        handler = FailingHandler()
        sub = yield self.subscribe(handler, retries=1)
        event = yield self.pub.create_event(name="forged header")
        body = envelope.encode("forger", KEY, None, event).body
        headers = {
            dead_letters.ATTEMPTS: "lots",
            dead_letters.ORIGINAL_ROUTING_KEY: "k" * 300,
            dead_letters.ORIGINAL_EXCHANGE: 5,
        }
        yield self.connection.publish(sub._xp_name, KEY, body, {"headers": headers})
        yield self.dead.wait(1)
        self.assertEqual(handler.calls, ["forged header"] * 2)
        (letter,) = self.dead.letters
        self.assertEqual((letter.attempts, letter.routing_key, letter.original_exchange), (2, KEY, sub._xp_name))
        self.flushLoggedErrors(ValueError)

    # --- poison messages -------------------------------------------------
    @defer.inlineCallbacks
    def poison(self, sub, collector, count):
        """Push `count` malformed bodies, then a valid event; fires with (bodies, seconds until it arrived)."""
        event = yield self.pub.create_event(name="valid")
        sealed = envelope.encode("raw", KEY, None, event)
        bodies = malformed_bodies(count, sealed.body, sealed.message["content"])
        raw = yield self.connect_broker()
        started = time.monotonic()
        for start in range(0, count, 1000):
            yield defer.gatherResults([raw.publish(sub._xp_name, KEY, body) for body in bodies[start : start + 1000]])
        yield self.pub.create_and_publish_event(name="after the poison")
        yield collector.wait(1)
        seconds = time.monotonic() - started
        self.assertEqual(collector.names(), ["after the poison"])
        self.assertEqual(sub.stats["undecodable"], count)
        return bodies, seconds

    @defer.inlineCallbacks
    def test_malformed_bodies_dead_lettered(self):
        collector = Collector()
        sub = yield self.subscribe(collector, dead_letter=True)
        bodies, seconds = yield self.poison(sub, collector, MALFORMED)
        yield self.dead.wait(MALFORMED)
        print("\n%s: %d malformed bodies dead-lettered in %.1f s" % (type(self).__name__, MALFORMED, seconds))
        self.assertEqual([letter.body for letter in self.dead.letters], bodies)
        for letter in self.dead.letters:
            self.assertTrue(letter.reason)
            self.assertEqual((letter.attempts, letter.routing_key, letter.queue), (0, KEY, sub.queue))
        reasons = {letter.reason.split(" ")[0] for letter in self.dead.letters}
        self.assertLessEqual({"body", "element", "header"}, reasons)
        self.assertEqual(sub.stats["dead_lettered"], MALFORMED)

    test_malformed_bodies_dead_lettered.timeout = 120

    @defer.inlineCallbacks
    def test_malformed_bodies_rejected(self):
        logged = self.capture_log()
        reasons = []
        collector = Collector()
        sub = yield self.subscribe(collector)
        sub._recv.add_error_handler(lambda data, msg, reason: reasons.append(reason))
        _bodies, seconds = yield self.poison(sub, collector, MALFORMED)
        print("\n%s: %d malformed bodies rejected in %.1f s" % (type(self).__name__, MALFORMED, seconds))
        self.assertEqual(len(reasons), MALFORMED)
        self.assertTrue(all(reasons))
        self.assertEqual(self.dead.letters, [])
        warnings = [e for e in logged if "cannot decode" in e.get("log_format", "")]
        self.assertTrue(1 <= len(warnings) < 1000, len(warnings))  # rate-limited
        self.assertLessEqual(sum(e["skipped"] for e in warnings) + len(warnings), MALFORMED)

    test_malformed_bodies_rejected.timeout = 120


for_each_broker(PoisonTests, globals(), base=IonTestCase)
