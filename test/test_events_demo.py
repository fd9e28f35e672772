"""The events demo release runs and its logger sees events, on both brokers."""

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from ion.services.examples.events_demo import EventsDemoLogger, EventsDemoPublisher
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker, wait_for


class EventsDemoTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        self.lines = []

        def observe(event):
            if event.get("log_namespace") == "ion.services.examples.events_demo":
                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        yield self._start_container()

    def _demo_process(self, cls):
        found = [p for p in self.container.proc_manager.process_registry.values() if isinstance(p, cls)]
        self.assertEqual(len(found), 1, "expected one %s, found %r" % (cls.__name__, found))
        return found[0]

    @defer.inlineCallbacks
    def test_logger_receives_demo_events(self):
        yield self.container.start_rel("res/deploy/events-demo.rel")
        logger = self._demo_process(EventsDemoLogger)
        publisher = self._demo_process(EventsDemoPublisher)
        self.assertGreaterEqual((yield logger.when_received(3)), 3)
        # The publisher's first tick (info, dataset change, resource lifecycle) arrives.
        yield wait_for(lambda: all(logger.by_event_id[i] for i in ("3003", "1113", "1001")))
        self.assertGreaterEqual(publisher.ticks, 1)
        self.assertIn(
            "3003 LOGGING_INFO from events_demo_publisher: name='tick 1' description='events demo heartbeat'",
            "\n".join(self.lines),
        )
        resource_lines = [line for line in self.lines if line.startswith("1001 RESOURCE_LIFECYCLE from demo-resource")]
        self.assertIn("| ResourceLifecycleEventMessage state=NEW (sender events_demo_publisher)", resource_lines[0])

    @defer.inlineCallbacks
    def test_stopping_the_publisher_stops_its_loop(self):
        yield self.container.start_rel("res/deploy/events-demo.rel")
        publisher = self._demo_process(EventsDemoPublisher)
        yield wait_for(lambda: publisher.ticks >= 1)
        yield publisher.terminate()
        self.assertFalse(publisher._loop.running)


for_each_broker(EventsDemoTests, globals(), base=IonTestCase)
