"""
The status port on both brokers: /live, /ready, /metrics counters moving as
events and RPCs flow (parsed with prometheus_client's parser), and, through
a proxy to RabbitMQ, /ready turning 503 when the connection is cut and 200
again after the reconnect.
"""

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.trial import unittest

from ion.core import metrics
from ion.core.cc import status
from ion.core.cc.service import OptionValueError, Options
from ion.core.exception import ReceivedApplicationError
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory
from ion.services.examples.hello_service import HelloServiceClient
from ion.test.iontest import IonTestCase
from test.brokers import RABBIT_URL, BrokerTestMixin, for_each_broker, wait_for
from test.proxy import TcpProxy
from test.webclient import get, get_json

HELLO = {"name": "hello", "module": "ion.services.examples.hello_service", "class": "HelloService"}


def samples(text):
    """{(sample name, sorted label items): value} of a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class StatusTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.listening = status.listen(self.container, 0)
        self.addCleanup(self.listening.stopListening)
        self.base = "http://127.0.0.1:%d" % (self.listening.getHost().port,)
        self.proc = Process(spawnargs={"proc-name": "status-tester"})
        yield self.proc.spawn()

    @defer.inlineCallbacks
    def tearDown(self):
        yield self._stop_container()

    @defer.inlineCallbacks
    def metrics(self):
        code, headers, body = yield get(self.base + "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        return samples(body.decode())

    def test_binds_localhost(self):
        self.assertEqual(self.listening.getHost().host, "127.0.0.1")

    @defer.inlineCallbacks
    def test_live_and_ready(self):
        code, body = yield get_json(self.base + "/live")
        self.assertEqual((code, body), (200, {"live": True}))
        code, body = yield get_json(self.base + "/ready")
        self.assertEqual((code, body), (200, {"ready": True}))
        code, _h, _b = yield get(self.base + "/nothing")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_event_counters_move(self):
        origin = self.unique_name("metrics")
        key = "%d.%s" % (events.LOGGING_INFO_EVENT_ID, origin)
        seen = []

        def handler(data):
            seen.append(data)
            if data["content"].name == "bad":
                raise ValueError("refused on purpose")

        yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin=origin, handler=handler
        )
        before = yield self.metrics()
        pub = events.InfoLoggingEventPublisher(process=self.proc, origin=origin)
        yield self.proc.register_life_cycle_object(pub)
        yield pub.create_and_publish_event(name="a")
        yield pub.create_and_publish_event(name="b", origin=origin)  # an origin kwarg counts too
        yield pub.create_and_publish_event(name="bad")
        nobody = events.ErrorLoggingEventPublisher(process=self.proc, origin=self.unique_name("nobody"))
        yield self.proc.register_life_cycle_object(nobody)
        yield nobody.create_and_publish_event(name="to nobody")  # no queue takes it: returned
        returned = ("ion_events_returned_total", (("event_id", "3002"),))
        yield wait_for(lambda: (metrics.REGISTRY.get_sample_value(returned[0], {"event_id": "3002"}) or 0)
                       > before.get(returned, 0))
        yield wait_for(lambda: len(seen) == 3)
        after = yield self.metrics()
        self.flushLoggedErrors(ValueError)

        def moved(name, **labels):
            label_key = tuple(sorted(labels.items()))
            return after.get((name, label_key), 0) - before.get((name, label_key), 0)

        self.assertEqual(moved("ion_events_published_total", event_id="3003"), 3)
        self.assertEqual(moved("ion_events_confirmed_total", event_id="3003"), 3)
        self.assertEqual(moved("ion_subscriber_delivered_total", subscriber=key), 3)
        self.assertEqual(moved("ion_subscriber_handled_total", subscriber=key), 2)
        self.assertEqual(moved("ion_subscriber_failed_total", subscriber=key), 1)
        self.assertEqual(moved("ion_subscriber_handler_seconds_count", subscriber=key), 3)
        self.assertEqual(after[("ion_broker_connected", ())], 1)
        self.assertEqual(moved("ion_events_returned_total", event_id="3002"), 1)
        self.assertEqual(moved("ion_events_published_total", event_id="3002"), 1)

    @defer.inlineCallbacks
    def test_rpc_counters_move(self):
        yield self._spawn_processes([HELLO])
        client = HelloServiceClient(proc=self.proc)
        before = yield self.metrics()
        yield client.hello("metrics")
        yield self.assertFailure(client.rpc_send("fail", {}), ReceivedApplicationError)
        after = yield self.metrics()
        for outcome in ("ok", "error"):
            key = ("ion_rpc_total", (("outcome", outcome),))
            self.assertEqual(after.get(key, 0) - before.get(key, 0), 1, outcome)
        self.assertEqual(after[("ion_rpc_seconds_count", ())] - before.get(("ion_rpc_seconds_count", ()), 0), 2)

    @defer.inlineCallbacks
    def test_ready_503_while_a_subscriber_has_no_consumer(self):
        """
        Its queue deleted by another connection, the subscriber is not consuming
        until it has declared the queue again: held up here by an exclusive queue
        of the same name, which the other connection takes at once.  Once that
        one is gone, it consumes again and /ready says so.
        """
        sub = yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin=self.unique_name("gone"),
            queue_name=self.unique_name("taken"), handler=lambda d: None
        )
        queue = sub.queue
        other = yield self.connect_broker()
        yield other.queue_delete(queue)  # the broker cancels the consumer; the subscriber is still ACTIVE
        yield other.queue_declare(queue, exclusive=True)  # its declaration fails until `other` closes
        yield wait_for(lambda: not sub.consuming)
        code, body = yield get_json(self.base + "/ready")
        self.assertEqual(code, 503)
        self.assertFalse(body["ready"])
        self.assertIn("has no consumer", body["reason"])
        yield other.close()
        yield wait_for(lambda: sub.consuming)
        code, body = yield get_json(self.base + "/ready")
        self.assertEqual(code, 200, body)


StatusMemoryTest, StatusRabbitTest = for_each_broker(StatusTests, globals(), base=IonTestCase)


class ReadyThroughProxyTest(IonTestCase):
    """RabbitMQ through a TcpProxy: cutting the connection makes /ready 503 until the reconnect."""

    broker_url = RABBIT_URL

    @defer.inlineCallbacks
    def setUp(self):
        self.proxy = TcpProxy()
        self.addCleanup(self.proxy.stop)
        self.broker_url = self.proxy.url()
        yield self._start_container()
        self.listening = status.listen(self.container, 0)
        self.addCleanup(self.listening.stopListening)
        self.ready_url = "http://127.0.0.1:%d/ready" % (self.listening.getHost().port,)
        proc = Process(spawnargs={"proc-name": "ready-tester"})
        yield proc.spawn()
        yield SubscriberFactory(process=proc).build(subscriber_type=events.InfoLoggingEventSubscriber,
                                                    handler=lambda d: None)

    @defer.inlineCallbacks
    def tearDown(self):
        yield self._stop_container()

    @defer.inlineCallbacks
    def test_ready_follows_the_connection(self):
        code, _ = yield get_json(self.ready_url)
        self.assertEqual(code, 200)
        answers = []

        @defer.inlineCallbacks
        def ready_code():
            code, body = yield get_json(self.ready_url)
            answers.append((code, body))
            return code

        reconnects = metrics.REGISTRY.get_sample_value("ion_broker_reconnects_total")
        self.assertGreaterEqual(self.proxy.cut(), 1)
        self.proxy.refusing = True
        code = yield ready_code()
        while code != 503:
            code = yield ready_code()
        self.assertIn("broker connection is down", answers[-1][1]["reason"])
        self.proxy.refusing = False
        connection = self.container.exchange_manager.connection
        yield wait_for(lambda: connection.connected, timeout=30)
        code, body = yield get_json(self.ready_url)
        self.assertEqual((code, body), (200, {"ready": True}))
        self.assertEqual(metrics.REGISTRY.get_sample_value("ion_broker_reconnects_total"), reconnects + 1)


class StatusPortOptionTest(unittest.TestCase):
    def test_off_by_default(self):
        options = Options()
        options.parseOptions([])
        self.assertIsNone(options["status_port"])

    def test_port(self):
        options = Options()
        options.parseOptions(["--status_port", "9100"])
        self.assertEqual(options["status_port"], 9100)

    def test_bad_port(self):
        for bad in ("x", "0", "70000"):
            options = Options()
            error = self.assertRaises(OptionValueError, options.parseOptions, ["--status_port", bad])
            self.assertIn("--status_port", str(error))
