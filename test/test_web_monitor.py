"""
The notification web monitor on both brokers, over HTTP: R1's JSON
endpoints (through the event monitor service), the SSE stream with its
filters and Last-Event-ID, the page and its headers, and the port closing
with the process.
"""

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError

from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.eventmonitor import EventMonitorService
from ion.services.dm.distribution.notify_web_monitor import NotificationWebMonitorService
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker, wait_for
from test.webclient import browser, get, get_json, open_stream

HOSTILE = "<img src=x onerror=alert(1)>"


class WebMonitorFixture(BrokerTestMixin):
    """A container with the event monitor service, the web monitor on a free port and a publisher."""

    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.ems = EventMonitorService(spawnargs={"proc-name": "eventmonitor"})
        yield self.ems.spawn()
        self.web = NotificationWebMonitorService(spawnargs={"proc-name": "notify_web_monitor_1", "port": 0})
        yield self.web.spawn()
        self.addCleanup(self.web.terminate_unless_over)
        self.addCleanup(self.ems.terminate_unless_over)
        self.base = self.web.url
        self.proc = Process(spawnargs={"proc-name": "web-monitor-tester"})
        yield self.proc.spawn()
        self.origin = self.unique_name("web")
        self.pub = events.InfoLoggingEventPublisher(process=self.proc, origin=self.origin)
        yield self.proc.register_life_cycle_object(self.pub)
        self.error_pub = events.ErrorLoggingEventPublisher(process=self.proc, origin=self.origin + "-other")
        yield self.proc.register_life_cycle_object(self.error_pub)

    @defer.inlineCallbacks
    def tearDown(self):
        yield self._stop_container()

    @defer.inlineCallbacks
    def publish(self, *names, publisher=None, **fields):
        publisher = publisher or self.pub
        for name in names:
            yield publisher.create_and_publish_event(name=name, **fields)


class WebMonitorTests(WebMonitorFixture):
    def test_defaults(self):
        web = NotificationWebMonitorService(spawnargs={})
        self.assertEqual((web.port, web.interface), (9999, "127.0.0.1"))
        self.assertEqual(self.web.listening.getHost().host, "127.0.0.1")
        self.assertRaises(ValueError, NotificationWebMonitorService, spawnargs={"port": "9999"})
        self.assertRaises(ValueError, NotificationWebMonitorService, spawnargs={"buffer": 0})

    @defer.inlineCallbacks
    def test_r1_endpoints(self):
        agent = browser()
        code, body = yield get_json(self.base + "/ctl/sub/%d/%s" % (events.LOGGING_INFO_EVENT_ID, self.origin), agent)
        self.assertEqual((code, body["status"]), (200, "ok"))
        subid = body["subscription_id"]
        self.assertEqual(len(subid), 6)
        _code, everything = yield get_json(self.base + "/ctl/sub/0", agent)
        yield self.publish("hello", description=HOSTILE)
        session = next(iter(self.ems.sessions.values()))
        yield wait_for(lambda: len(session.subscriptions[subid].events) == 1)
        code, body = yield get_json(self.base + "/data/0", agent)
        self.assertEqual(code, 200)
        self.assertIsInstance(body["lasttime"], float)
        by_id = {d["subscription_id"]: d for d in body["data"]}
        self.assertEqual(set(by_id), {subid, everything["subscription_id"]})
        ours = by_id[subid]
        self.assertEqual(ours["subscription_desc"], "3003.%s" % (self.origin,))
        [event] = ours["events"]
        fields = {f["id"]: f["content"] for f in event}
        self.assertEqual(fields["name"], "hello")
        self.assertEqual(fields["description"], HOSTILE)
        self.assertEqual(set(event[0]), {"class", "content", "id"})
        self.assertNotIn("additional_data", fields)
        code, later = yield get_json(self.base + "/data/%s" % (body["lasttime"] + 1,), agent)
        self.assertEqual([d["events"] for d in later["data"]], [[], []])
        code, body = yield get_json(self.base + "/ctl/unsub/" + subid, agent)
        self.assertEqual((code, body), (200, {"status": "ok"}))
        _code, body = yield get_json(self.base + "/data/0", agent)
        self.assertEqual([d["subscription_id"] for d in body["data"]], [everything["subscription_id"]])
        code, body = yield get_json(self.base + "/ctl/unsub", agent)
        self.assertEqual((code, body), (200, {"status": "ok"}))
        self.assertEqual(self.ems.sessions, {})

    @defer.inlineCallbacks
    def test_sessions_are_per_browser(self):
        first, second = browser(), browser()
        yield get_json(self.base + "/ctl/sub/3003", first)
        yield get_json(self.base + "/ctl/sub/3003", second)
        self.assertEqual(len(self.ems.sessions), 2)
        next(iter(self.web.site.sessions.values())).expire()
        yield wait_for(lambda: len(self.ems.sessions) == 1)

    @defer.inlineCallbacks
    def test_bad_control_requests(self):
        for path in ("/ctl/what", "/ctl/sub/notanumber", "/ctl/sub"):
            code, body = yield get_json(self.base + path)
            self.assertEqual((code, body["status"]), (400, "bad"), path)

    @defer.inlineCallbacks
    def test_stream_filters_and_resumes_after_last_event_id(self):
        url = self.base + "/stream?event=%d&origin=%s" % (events.LOGGING_INFO_EVENT_ID, self.origin)
        response, stream = yield open_stream(url)
        self.addCleanup(response._transport.stopProducing)
        self.assertEqual(response.headers.getRawHeaders(b"content-type")[0], b"text/event-stream; charset=utf-8")
        yield self.publish("other type", publisher=self.error_pub)
        yield self.publish("one", "two", "three")
        yield wait_for(lambda: len(stream.events) == 3)
        self.assertEqual([dict(e["data"]["fields"])["name"] for e in stream.events], ["one", "two", "three"])
        first = stream.events[0]
        self.assertEqual(first["data"]["event_id"], 3003)
        self.assertEqual(first["data"]["event_name"], "Info Log")
        self.assertEqual(first["data"]["origin"], self.origin)
        self.assertEqual(first["data"]["type"], "LoggingEventMessage")
        resumed, again = yield open_stream(url, headers={"Last-Event-ID": first["id"]})
        self.addCleanup(resumed._transport.stopProducing)
        yield wait_for(lambda: len(again.events) == 2)
        self.assertEqual([e["id"] for e in again.events], [e["id"] for e in stream.events[1:]])
        for headers in ({}, {"Last-Event-ID": "0123abcd-1"}):  # no id, or one of another run: all that match
            replay, everything = yield open_stream(url, headers=headers)
            self.addCleanup(replay._transport.stopProducing)
            yield wait_for(lambda: len(everything.events) == 3)

    @defer.inlineCallbacks
    def test_stream_enum_names(self):
        response, stream = yield open_stream(self.base + "/stream?event=1001")
        self.addCleanup(response._transport.stopProducing)
        pub = events.ResourceLifecycleEventPublisher(process=self.proc, origin=self.origin)
        yield self.proc.register_life_cycle_object(pub)
        yield pub.create_and_publish_event(state="ACTIVE", status="NO_CACHE")
        yield wait_for(lambda: len(stream.events) == 1)
        fields = dict(stream.events[0]["data"]["fields"])
        self.assertEqual(fields["state"], "ACTIVE")
        self.assertEqual(fields["status"], "NO_CACHE")

    @defer.inlineCallbacks
    def test_bad_stream_filter(self):
        code, _h, _b = yield get(self.base + "/stream?event=abc")
        self.assertEqual(code, 400)

    @defer.inlineCallbacks
    def test_page_is_self_contained(self):
        code, headers, page = yield get(self.base + "/")
        self.assertEqual(code, 200)
        policy = headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"script-src 'self'", policy)
        self.assertNotIn(b"unsafe-inline'; connect", policy.split(b"script-src")[1][:30])
        self.assertNotIn(b"://", page)
        code, headers, script = yield get(self.base + "/notify_web_monitor.js")
        self.assertEqual(code, 200)
        self.assertNotIn(b"://", script)
        self.assertNotIn(b"innerHTML", script)
        code, _h, other = yield get(self.base + "/anything/else")
        self.assertEqual(other, page)  # R1: any other path serves the page
        code, types = yield get_json(self.base + "/types")
        self.assertIn({"id": 1001, "name": "Resource Lifecycle"}, types)

    @defer.inlineCallbacks
    def test_terminate_closes_the_port_and_streams(self):
        response, stream = yield open_stream(self.base + "/stream")
        yield self.web.terminate()
        yield stream.closed
        yield self.assertFailure(get(self.base + "/"), ConnectionRefusedError)


WebMonitorMemoryTest, WebMonitorRabbitTest = for_each_broker(WebMonitorTests, globals(), base=IonTestCase)


class WebMonitorAppTests(BrokerTestMixin):
    """The two apps as the release starts them: the page's session reaches the event monitor service."""

    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()

    @defer.inlineCallbacks
    def tearDown(self):
        yield self._stop_container()

    @defer.inlineCallbacks
    def test_apps(self):
        yield self.container.start_app("res/apps/eventmonitor.app")
        yield self.container.start_app("res/apps/notifywebmonitor.app", app_args={"port": 0})
        registry = self.container.proc_manager.process_registry.values()
        [web] = [p for p in registry if isinstance(p, NotificationWebMonitorService)]
        [ems] = [p for p in registry if isinstance(p, EventMonitorService)]
        self.assertEqual((web.proc_name, ems.proc_name, ems.svc_name), ("notify_web_monitor_1", "eventmonitor",
                                                                        "event_monitor"))
        code, body = yield get_json(web.url + "/ctl/sub/0", browser())
        self.assertEqual((code, body["status"]), (200, "ok"))
        self.assertEqual(len(ems.sessions), 1)

    def test_release_names_both(self):
        from ion.core.pack.app_manager import load_rel_file

        rel = load_rel_file("res/deploy/eventwebmonitor.rel")
        self.assertEqual([a["definition"]["name"] for a in rel["apps"]], ["EventMonitor", "notify_web_monitor"])


WebMonitorAppMemoryTest, WebMonitorAppRabbitTest = for_each_broker(WebMonitorAppTests, globals(), base=IonTestCase)
