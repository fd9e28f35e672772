"""
Subscribers on classic, quorum and stream queues (issue 15), on both brokers:
the queue_type and offset parameters, their validation before anything is
sent, retries and dead letters on a quorum queue through the broker's
delivery count, stream subscriptions reading back a window of events, the
exclusive anonymous queue (RabbitMQ 4.3's rule) and the container's default
queue type.

Stream windows by time: RabbitMQ stamps its stream chunks with its own clock
and an AMQP timestamp has whole seconds, so the batches on either side of a
window's edge are more than a second apart.  On RabbitMQ that is real time
(the only waits here, about 2.6 s); on the embedded broker its wall clock is
a task.Clock the test moves on.  Each event is published alone after the
previous one was confirmed, so on RabbitMQ each is a chunk of its own.
"""

import time
from datetime import datetime, timezone

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from ion.core import ioninit
from ion.core.cc.service import OptionValueError, Options, apply_default_queue_type
from ion.core.exception import UsageError
from ion.core.messaging.broker import connect, memory
from ion.core.messaging.broker.address import BrokerAddress
from ion.core.messaging.broker.interface import NotFound, PreconditionFailed, ResourceLocked
from ion.core.process.process import Process
from ion.services.dm.distribution import dead_letters, events
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory
from ion.test.iontest import IonTestCase
from test.brokers import RABBIT_URL, BrokerTestMixin, for_each_broker, wait_for
from test.test_poison import DeadLetterBox, FailingHandler
from test.test_reconnect import ReconnectTestBase, unique

ORIGIN = "queuetypes"
KEY = "3003.%s" % ORIGIN
PUBSUB = "ion.services.dm.distribution.publisher_subscriber"
NAMED = {"durable": True, "auto_delete": False}


class Names:
    """An ondata handler keeping event names, markers (names starting 'marker') left out of `events`."""

    def __init__(self):
        self.names = []

    def __call__(self, data):
        self.names.append(data["content"].name)

    @property
    def events(self):
        return [name for name in self.names if not name.startswith("marker")]


class SubscriberQueueTypeTests(BrokerTestMixin):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "queue-type-tester"})
        yield self.proc.spawn()
        self.connection = self.container.exchange_manager.connection
        self.broker = self.container.exchange_manager
        self.pub = events.InfoLoggingEventPublisher(process=self.proc, origin=ORIGIN)
        yield self.proc.register_life_cycle_object(self.pub)
        self.markers = 0
        self.dead_letters_deleted = False

    @defer.inlineCallbacks
    def subscribe(self, handler, **kwargs):
        sub = yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin=ORIGIN, handler=handler, **kwargs
        )
        if kwargs.get("queue_name"):
            self.addCleanup(self.connection.queue_delete, sub._queue_name)
        if sub.dead_letter_name is not None:
            self.delete_dead_letters()
        return sub

    def delete_dead_letters(self):
        """Dead letters are durable: nothing else would remove them from RabbitMQ."""
        if not self.dead_letters_deleted:
            self.dead_letters_deleted = True
            self.addCleanup(dead_letters.delete, self.broker)

    @defer.inlineCallbacks
    def dead_letter_box(self):
        self.delete_dead_letters()
        box = DeadLetterBox()
        reader = yield dead_letters.consume(self.broker, box)
        self.addCleanup(reader.cancel)
        return box

    @defer.inlineCallbacks
    def fenced(self, handler):
        """The events `handler` got so far: a marker event is published, and everything before it is in."""
        self.markers += 1
        marker = "marker %d" % self.markers
        yield self.pub.create_and_publish_event(name=marker)
        yield wait_for(lambda: marker in handler.names)
        return [name for name in handler.names[: handler.names.index(marker)] if not name.startswith("marker")]

    # --- the queue type is declared explicitly ---------------------------

    @defer.inlineCallbacks
    def test_a_queue_of_one_type_is_not_redeclared_as_another(self):
        name = self.unique_name("typed")
        first = yield self.subscribe(Names(), queue_name=name, queue_type="quorum", **NAMED)
        self.assertEqual(first.consumer_config["arguments"]["x-queue-type"], "quorum")
        # The same type shares the queue; defaulted (classic) is refused, at activation, not silently
        # (RabbitMQ names the first argument that differs: here the quorum queue's dead-letter exchange).
        yield self.subscribe(Names(), queue_name=name, queue_type="quorum", **NAMED)
        classic = events.InfoLoggingEventSubscriber(process=self.proc, origin=ORIGIN, queue_name=name, **NAMED)
        error = yield self.assertFailure(classic.subscribe(), PreconditionFailed)
        self.assertIn("inequivalent arg", error.text)
        self.flushLoggedErrors(PreconditionFailed)

    @defer.inlineCallbacks
    def test_anonymous_queue_is_exclusive_to_its_connection(self):
        handler = Names()
        sub = yield self.subscribe(handler)
        self.assertTrue(sub.consumer_config["exclusive"])
        self.assertEqual(sub.queue_type, "classic")
        other = yield self.connect_broker()
        yield self.assertFailure(other.queue_declare(sub.queue, passive=True), ResourceLocked)
        yield self.pub.create_and_publish_event(name="to the private queue")
        self.assertEqual((yield self.fenced(handler)), ["to the private queue"])

    def test_named_transient_queue_warns_naming_the_rabbitmq_4_rule(self):
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        name = self.unique_name("transient")
        for _ in range(2):
            events.InfoLoggingEventSubscriber(process=self.proc, origin=ORIGIN, queue_name=name)
        warnings = [e for e in logged if "transient_nonexcl_queues" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)  # once per queue name
        self.assertTrue(warnings[0]["queue"].endswith(name))
        events.InfoLoggingEventSubscriber(process=self.proc, origin=ORIGIN, queue_name=name + "d", **NAMED)
        events.InfoLoggingEventSubscriber(process=self.proc, origin=ORIGIN)
        self.assertEqual(len([e for e in logged if "transient_nonexcl_queues" in e.get("log_format", "")]), 1)

    # --- quorum queues: retries and dead letters -------------------------

    @defer.inlineCallbacks
    def test_quorum_retries_then_dead_letter(self):
        dead = yield self.dead_letter_box()
        handler = FailingHandler()
        sub = yield self.subscribe(handler, queue_name=self.unique_name("qretry"), queue_type="quorum", retries=3,
                                   **NAMED)
        arguments = sub.consumer_config["arguments"]
        self.assertEqual((arguments["x-delivery-limit"], arguments["x-dead-letter-exchange"]),
                         (20, sub.dead_letter_name))
        yield self.pub.create_and_publish_event(name="poison pill")
        yield dead.wait(1)
        (letter,) = dead.letters
        self.assertEqual(handler.calls, ["poison pill"] * 4)
        self.assertEqual((letter.attempts, letter.reason), (4, "ValueError: handler refuses poison pill"))
        self.assertEqual((letter.routing_key, letter.original_exchange, letter.queue), (KEY, sub._xp_name, sub.queue))
        self.assertEqual((sub.stats["retried"], sub.stats["dead_lettered"]), (3, 1))
        # Nothing more happens to it: the queue is empty and the subscriber goes on.
        yield self.pub.create_and_publish_event(name="after")
        yield wait_for(lambda: handler.calls.count("after") == 4)
        yield dead.wait(2)
        self.assertEqual(handler.calls, ["poison pill"] * 4 + ["after"] * 4)
        self.flushLoggedErrors(ValueError)

    @defer.inlineCallbacks
    def test_quorum_retry_succeeds(self):
        dead = yield self.dead_letter_box()
        handler = FailingHandler(failures=2)
        sub = yield self.subscribe(handler, queue_name=self.unique_name("qflaky"), queue_type="quorum", retries=3,
                                   **NAMED)
        yield self.pub.create_and_publish_event(name="flaky")
        yield handler.wait(1)
        self.assertEqual(handler.calls, ["flaky"] * 3)
        self.assertEqual((sub.stats["retried"], sub.stats["dead_lettered"]), (2, 0))
        self.assertEqual(dead.letters, [])
        self.flushLoggedErrors(ValueError)

    @defer.inlineCallbacks
    def test_quorum_queue_past_its_delivery_limit_dead_letters_instead_of_dropping(self):
        """Returns the handler never saw (a consumer gone, say) count too: past the limit the broker keeps them."""
        dead = yield self.dead_letter_box()
        sub = yield self.subscribe(Names(), queue_name=self.unique_name("qlimit"), queue_type="quorum", **NAMED)
        queue = sub.queue
        yield sub.unsubscribe()
        yield self.connection.publish("", queue, b"bounced", {"delivery_mode": 2})
        returned = []

        def bounce(delivery):
            returned.append(delivery)
            delivery.reject(requeue=True)

        consumer = yield self.connection.consume(queue, bounce, prefetch_count=1)
        self.addCleanup(consumer.cancel)
        yield dead.wait(1)
        self.assertEqual(len(returned), 21)  # delivered, returned 20 times (the limit), once more: dead
        self.assertEqual(dead.letters[0].properties["headers"]["x-first-death-reason"], "delivery_limit")
        self.assertEqual((dead.letters[0].body, dead.letters[0].routing_key), (b"bounced", queue))

    @defer.inlineCallbacks
    def test_quorum_by_default_from_config_for_named_durable_subscriptions(self):
        self.addCleanup(ioninit.load_config)
        ioninit.merge_config({PUBSUB: {"default_queue_type": "quorum"}})
        handler = Names()
        named = yield self.subscribe(handler, queue_name=self.unique_name("dq"), **NAMED)
        self.assertEqual(named.queue_type, "quorum")
        anonymous = yield self.subscribe(Names())
        self.assertEqual(anonymous.queue_type, "classic")
        transient = events.InfoLoggingEventSubscriber(process=self.proc, origin=ORIGIN, queue_name="t",
                                                      durable=True)
        self.assertEqual(transient.queue_type, "classic")  # auto-delete: cannot be quorum
        yield self.pub.create_and_publish_event(name="to quorum")
        self.assertEqual((yield self.fenced(handler)), ["to quorum"])
        ioninit.merge_config({PUBSUB: {"default_queue_type": "stream"}})
        with self.assertRaisesRegex(UsageError, "default_queue_type.*'stream'"):
            events.InfoLoggingEventSubscriber(process=self.proc, origin=ORIGIN)

    # --- streams ---------------------------------------------------------

    def wall_clock(self):
        """(gap(seconds), now()): real time on RabbitMQ, a task.Clock as the embedded broker's wall clock."""
        if self.on_rabbit:
            return (lambda seconds: task.deferLater(reactor, seconds, lambda: None)), time.time
        clock = task.Clock()
        clock.advance(time.time())
        broker = memory.get_broker()
        broker.wall_clock, saved = clock, broker.wall_clock
        self.addCleanup(setattr, broker, "wall_clock", saved)
        return clock.advance, clock.seconds

    @defer.inlineCallbacks
    def test_stream_subscription_reads_back_exactly_the_chosen_window(self):
        gap, now = self.wall_clock()
        name = self.unique_name("stream")
        live = Names()
        yield self.subscribe(live, queue_name=name, queue_type="stream", **NAMED)  # from 'next'
        old = ["old %d" % i for i in range(3)]
        new = ["new %d" % i for i in range(3)]
        for event in old:
            yield self.pub.create_and_publish_event(name=event)
        yield gap(1.3)
        edge = now()
        yield gap(1.3)
        for event in new:
            yield self.pub.create_and_publish_event(name=event)
        self.assertEqual((yield self.fenced(live)), old + new)
        windows = [
            (now() - edge, new),  # seconds ago (rounded up to a whole second): first, so "now" is now
            ("first", old + new),
            ("next", []),
            (datetime.fromtimestamp(edge, timezone.utc), new),
            ("1h", old + new),
        ]
        for offset, expected in windows:
            reader = Names()
            yield self.subscribe(reader, queue_name=name, queue_type="stream", offset=offset, **NAMED)
            self.assertEqual((yield self.fenced(reader)), expected, "offset %r" % (offset,))
        yield self.pub.create_and_publish_event(name="last one")
        reader = Names()
        yield self.subscribe(reader, queue_name=name, queue_type="stream", offset="last", **NAMED)
        self.assertEqual((yield self.fenced(reader)), ["last one"])

    @defer.inlineCallbacks
    def test_a_stream_goes_on_recording_when_its_reader_unsubscribes(self):
        name = self.unique_name("stream-rec")
        first = Names()
        sub = yield self.subscribe(first, queue_name=name, queue_type="stream", **NAMED)
        yield self.pub.create_and_publish_event(name="read")
        self.assertEqual((yield self.fenced(first)), ["read"])
        yield sub.unsubscribe()
        yield self.pub.create_and_publish_event(name="while nobody reads")
        again = Names()
        yield self.subscribe(again, queue_name=name, queue_type="stream", offset="first", **NAMED)
        self.assertEqual((yield self.fenced(again)), ["read", "while nobody reads"])

    @defer.inlineCallbacks
    def test_stream_acks_undecodable_messages_it_cannot_reject(self):
        name = self.unique_name("stream-bad")
        handler = Names()
        sub = yield self.subscribe(handler, queue_name=name, queue_type="stream", **NAMED)
        yield self.connection.publish(sub._xp_name, KEY, b"\xc1 not msgpack")
        yield self.pub.create_and_publish_event(name="fine")
        self.assertEqual((yield self.fenced(handler)), ["fine"])
        self.assertEqual(sub.stats["undecodable"], 1)
        self.assertTrue(self.connection.connected)


for_each_broker(SubscriberQueueTypeTests, globals(), base=IonTestCase)


class QueueTypeUsageTest(unittest.TestCase):
    """What RabbitMQ would refuse is refused when the subscriber is made: nothing reaches a broker."""

    def setUp(self):
        self.proc = Process(spawnargs={"proc-name": "queue-type-usage"})

    def make(self, **kwargs):
        return events.InfoLoggingEventSubscriber(process=self.proc, origin=ORIGIN, **kwargs)

    def test_refused_combinations_name_the_parameter(self):
        for kwargs, words in (
            ({"queue_type": "bogus"}, "queue_type must be None or one of classic, quorum, stream, not 'bogus'"),
            ({"queue_type": "quorum"}, "cannot be broker-named: give it a queue_name"),
            ({"queue_type": "stream", **NAMED}, "cannot be broker-named"),
            ({"queue_type": "quorum", "queue_name": "q"}, "always durable: pass durable=True"),
            ({"queue_type": "quorum", "queue_name": "q", "durable": True}, "never auto-delete: pass auto_delete=False"),
            ({"queue_type": "stream", "queue_name": "q", "auto_delete": False}, "always durable"),
            ({"queue_type": "stream", "queue_name": "q", "max_length": 5, **NAMED}, "takes no max_length"),
            ({"queue_type": "stream", "queue_name": "q", "max_length_bytes": 5, **NAMED}, "takes no max_length_bytes"),
            ({"queue_type": "stream", "queue_name": "q", "retries": 3, **NAMED}, "cannot retry (retries=3)"),
            ({"offset": "first"}, "offset='first' needs queue_type='stream'"),
            ({"queue_type": "quorum", "queue_name": "q", "offset": "first", **NAMED}, "needs queue_type='stream'"),
        ):
            with self.assertRaises(UsageError, msg=repr(kwargs)) as caught:
                self.make(**kwargs)
            self.assertIn(words, str(caught.exception), kwargs)

    def test_stream_offsets(self):
        def offset(value):
            return self.make(queue_type="stream", queue_name="s", offset=value, **NAMED).consumer_config[
                "consumer_arguments"]["x-stream-offset"]

        moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        for given, sent in (("first", "first"), ("last", "last"), ("next", "next"), (None, "next"), ("10m", "10m"),
                            ("1h", "1h"), ("2D", "2D"), (moment, moment), (3600, "3600s"), (1.2, "2s"), (0, "0s")):
            self.assertEqual(offset(given), sent, given)
        for bad in ("bogus", "10x", "-1s", -5, float("nan"), True, datetime(2026, 1, 2), [1]):
            with self.assertRaisesRegex(UsageError, "offset", msg=repr(bad)):
                offset(bad)

    def test_quorum_arguments_are_explicit(self):
        sub = self.make(queue_type="quorum", queue_name="q", **NAMED)
        arguments = sub.consumer_config["arguments"]
        self.assertEqual(arguments, {"x-queue-type": "quorum", "x-delivery-limit": 20,
                                     "x-dead-letter-exchange": dead_letters.dead_letter_name()})
        self.assertEqual(sub.dead_letter_name, dead_letters.dead_letter_name())
        self.assertFalse(sub.consumer_config["exclusive"])
        for retries, limit in ((0, 20), (3, 20), (20, 20), (25, 25)):
            self.assertEqual(self.make(queue_type="quorum", queue_name="q", retries=retries, **NAMED)
                             .consumer_config["arguments"]["x-delivery-limit"], limit)
        self.assertEqual(self.make(queue_type="stream", queue_name="s", **NAMED).consumer_config["arguments"],
                         {"x-queue-type": "stream"})


class DefaultQueueTypeOptionTest(unittest.TestCase):
    """twistd cc --default_queue_type: checked when parsed, and the container's subscribers follow it."""

    def parse(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_option_sets_the_default_for_named_durable_subscriptions(self):
        self.addCleanup(ioninit.load_config)
        options = self.parse("--default_queue_type", "quorum")
        proc = Process(spawnargs={"proc-name": "queue-type-option"})
        before = events.InfoLoggingEventSubscriber(process=proc, origin=ORIGIN, queue_name="o", **NAMED)
        self.assertEqual(before.queue_type, "classic")
        apply_default_queue_type(options)
        after = events.InfoLoggingEventSubscriber(process=proc, origin=ORIGIN, queue_name="o", **NAMED)
        self.assertEqual(after.queue_type, "quorum")
        self.assertEqual(events.InfoLoggingEventSubscriber(process=proc, origin=ORIGIN).queue_type, "classic")

    def test_not_given_leaves_ion_config_alone(self):
        self.addCleanup(ioninit.load_config)
        ioninit.merge_config({PUBSUB: {"default_queue_type": "quorum"}})
        apply_default_queue_type(self.parse())
        self.assertEqual(ioninit.config(PUBSUB)["default_queue_type"], "quorum")

    def test_bad_value_is_one_line(self):
        for bad in ("stream", "Quorum", ""):
            with self.assertRaisesRegex(OptionValueError, "--default_queue_type.*must be one of classic, quorum"):
                self.parse("--default_queue_type", bad)


class QueueTypeReconnectTest(ReconnectTestBase):
    """
    RabbitMQ only (the embedded broker never loses its connections), a TCP
    proxy cuts the container's connection: an anonymous subscriber queue is
    exclusive, so it dies with its connection, and the connection declares a
    new one, binds it again and the subscriber consumes from it; a stream
    subscription goes on where it left off; a quorum subscription resumes.
    """

    @defer.inlineCallbacks
    def test_exclusive_anonymous_queue_is_declared_and_bound_again_after_a_cut(self):
        proxy = self.proxy()
        self.broker_url = proxy.url()
        proc = yield self.start_process()
        origin = unique("exclusive")
        sub, collector = yield self.subscribe(proc, origin)
        self.assertTrue(sub.consumer_config["exclusive"])
        pub = yield self.publisher(proc, origin)
        old_queue = sub.queue
        yield self.publish(pub, "before")
        yield wait_for(lambda: collector.names() == ["before"])
        self.assertEqual(proxy.cut(), 1)
        yield self.publish(pub, "after")  # waits for the reconnect
        yield wait_for(lambda: collector.names() == ["before", "after"])
        self.assertNotEqual(sub.queue, old_queue)
        self.assertTrue(sub.queue.startswith("amq.gen-"), sub.queue)
        admin = yield connect(BrokerAddress.from_url(RABBIT_URL))
        self.addCleanup(admin.close)
        # The old one went with its connection; the new one is this connection's own.
        yield wait_for_gone(admin, old_queue)
        yield self.assertFailure(admin.queue_declare(sub.queue, passive=True), ResourceLocked)
        for i in range(3):
            yield self.publish(pub, "later %d" % i)
        yield wait_for(lambda: len(collector.names()) == 5)
        self.assertEqual(collector.names(), ["before", "after", "later 0", "later 1", "later 2"])

    @defer.inlineCallbacks
    def test_stream_subscription_resumes_where_it_left_off(self):
        """Not from its first offset again, and without the events published meanwhile lost."""
        proxy = self.proxy()
        self.broker_url = proxy.url()
        proc = yield self.start_process()
        origin = unique("stream-cut")
        name = unique("stream-cut")
        sub, collector = yield self.subscribe(proc, origin, queue_name=name, queue_type="stream", offset="first",
                                              durable=True, auto_delete=False)
        self.addCleanup(self.container.exchange_manager.connection.queue_delete, sub._queue_name)
        pub = yield self.publisher(proc, origin)
        for i in range(3):
            yield self.publish(pub, "before %d" % i)
        yield wait_for(lambda: len(collector.names()) == 3)
        self.assertEqual(proxy.cut(), 1)
        for i in range(2):
            yield self.publish(pub, "after %d" % i)  # the first waits for the reconnect
        yield wait_for(lambda: len(collector.names()) >= 5)
        yield self.publish(pub, "fence")
        yield wait_for(lambda: "fence" in collector.names())
        self.assertEqual(collector.names(), ["before 0", "before 1", "before 2", "after 0", "after 1", "fence"])

    @defer.inlineCallbacks
    def test_quorum_subscription_resumes_after_a_cut(self):
        proxy = self.proxy()
        self.broker_url = proxy.url()
        proc = yield self.start_process()
        origin = unique("quorum-cut")
        sub, collector = yield self.subscribe(proc, origin, queue_name=unique("quorum-cut"), queue_type="quorum",
                                              durable=True, auto_delete=False, retries=2)
        manager = self.container.exchange_manager
        self.addCleanup(dead_letters.delete, manager)
        self.addCleanup(manager.connection.queue_delete, sub._queue_name)
        pub = yield self.publisher(proc, origin)
        yield self.publish(pub, "before", persistent=True)
        yield wait_for(lambda: collector.names() == ["before"])
        self.assertEqual(proxy.cut(), 1)
        yield self.publish(pub, "after", persistent=True)  # waits for the reconnect
        yield wait_for(lambda: collector.names() == ["before", "after"])
        self.assertEqual(sub.queue, sub._queue_name)


@defer.inlineCallbacks
def wait_for_gone(conn, queue, timeout=10):
    """RabbitMQ removes an exclusive queue just after its connection closed."""
    deadline = reactor.seconds() + timeout
    while True:
        try:
            yield conn.queue_declare(queue, passive=True)
        except NotFound:
            return
        if reactor.seconds() > deadline:
            raise AssertionError("queue %r still exists" % (queue,))
        yield task.deferLater(reactor, 0.05, lambda: None)
