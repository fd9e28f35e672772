"""Processes, services and RPC in a real container, on both brokers."""

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, globalLogPublisher

from ion.core import ioninit
from ion.core.exception import NoSuchService, ReceivedApplicationError, ReceivedContainerError
from ion.core.messaging.broker.interface import NotFound
from ion.core.process.process import Process, ProcessError
from ion.core.process.service_process import ServiceClient
from ion.services.dm.distribution import events
from ion.services.examples.hello_service import HelloServiceClient
from ion.test.iontest import IonTestCase
from ion.util.state_object import BasicLifecycleObject
from test.brokers import BrokerTestMixin, for_each_broker, wait_for

HELLO = {"name": "hello", "module": "ion.services.examples.hello_service", "class": "HelloService"}


class Recorder(BasicLifecycleObject):
    """A lifecycle object that records the actions it ran."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_initialize(self, *a, **kw):
        self.calls.append("initialize")

    def on_activate(self, *a, **kw):
        self.calls.append("activate")

    def on_terminate(self, *a, **kw):
        self.calls.append("terminate")

    def on_error(self, *a, **kw):
        self.calls.append("error")


class ProcessTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "tester"})
        yield self.proc.spawn()

    @defer.inlineCallbacks
    def test_ids_and_names(self):
        self.assertEqual(self.proc.id.container, self.container.id)
        self.assertEqual(self.proc.backend_id.full, self.proc.id.full + "b")
        self.assertEqual(ioninit.sys_name, self.container.id)
        self.assertNotIn(".", self.container.id.replace(ioninit.default_container_id(), ""))
        conv = self.proc.new_conversation_id()
        self.assertTrue(conv.startswith(self.proc.id.full + "#"))
        yield self._spawn_processes([HELLO])
        self.assertIn("hello", self.test_sup.procRegistry)

    @defer.inlineCallbacks
    def test_ping_rpc(self):
        yield self._spawn_processes([HELLO])
        content, headers, msg = yield self.proc.rpc_send("%s.hello" % ioninit.sys_name, "ping", None)
        self.assertEqual(content, {"pong": "pong"})
        self.assertEqual(headers["status"], "OK")
        self.assertEqual(headers["performative"], "inform_result")
        self.assertTrue(headers["quiet"])

    @defer.inlineCallbacks
    def test_service_client_round_trip(self):
        yield self._spawn_processes([HELLO])
        client = HelloServiceClient(proc=self.proc)
        content, headers, _ = yield client.hello("ion")
        self.assertEqual(content["greeting"], "Hello, ion!")
        self.assertEqual(headers["protocol"], "rpc")
        self.assertEqual(headers["conv-seq"], 2)
        self.assertTrue((yield client.does_service_exist("hello")))
        self.assertFalse((yield client.does_service_exist("no_such_service")))

    @defer.inlineCallbacks
    def test_anonymous_client_process(self):
        yield self._spawn_processes([HELLO])
        client = HelloServiceClient()
        content, _, _ = yield client.hello("anon")
        self.assertEqual(content["greeting"], "Hello, anon!")
        self.assertEqual(client.proc.proc_name, "HelloServiceClient_aproc")
        yield client.proc.terminate()

    @defer.inlineCallbacks
    def test_application_error_reply(self):
        yield self._spawn_processes([HELLO])
        error = yield self.assertFailure(
            self.proc.rpc_send("%s.hello" % ioninit.sys_name, "fail", {"x": 1}), ReceivedApplicationError
        )
        self.assertEqual(error.response_code, 400)
        self.assertIn("hello cannot do that", error.reason)
        self.assertEqual(error.headers["status"], "ERROR")

    @defer.inlineCallbacks
    def test_container_error_reply(self):
        yield self._spawn_processes([HELLO])
        error = yield self.assertFailure(
            self.proc.rpc_send("%s.hello" % ioninit.sys_name, "crash", None), ReceivedContainerError
        )
        self.assertEqual(error.response_code, 500)
        self.assertIn("crashed on purpose", error.reason)
        self.flushLoggedErrors(RuntimeError)
        # The service survives its failure.
        content, _, _ = yield HelloServiceClient(proc=self.proc).hello("again")
        self.assertEqual(content["greeting"], "Hello, again!")

    @defer.inlineCallbacks
    def test_unknown_op(self):
        yield self._spawn_processes([HELLO])
        error = yield self.assertFailure(
            self.proc.rpc_send("%s.hello" % ioninit.sys_name, "no_such_op", None), ReceivedApplicationError
        )
        self.assertIn("does not define op=no_such_op", error.reason)

    @defer.inlineCallbacks
    def silent_queue(self):
        """A service queue with no consumer: a request waits there, unanswered."""
        connection = self.container.exchange_manager.connection
        queue = yield connection.queue_declare(self.unique_name("silent"), auto_delete=True)
        yield connection.queue_bind(queue, "magnet.topic", queue)
        self.addCleanup(connection.queue_delete, queue)
        return queue

    @defer.inlineCallbacks
    def process_on(self, clock):
        proc = Process(spawnargs={"proc-name": "timed"}, clock=clock)
        yield proc.spawn()
        self.addCleanup(proc.terminate)
        return proc

    @defer.inlineCallbacks
    def test_rpc_timeout(self):
        queue = yield self.silent_queue()
        clock = task.Clock()
        proc = yield self.process_on(clock)
        pending = proc.rpc_send(queue, "ping", None, timeout=0.2)
        connection = self.container.exchange_manager.connection
        while (yield connection.queue_depth(queue)) < 1:
            yield task.deferLater(reactor, 0.01, lambda: None)
        clock.advance(0.19)
        self.assertFalse(pending.called)
        clock.advance(0.01)
        error = yield self.assertFailure(pending, defer.TimeoutError)
        self.assertIn("no reply within 0.2s", str(error))
        self.assertEqual(proc.rpc.pending, {})

    @defer.inlineCallbacks
    def test_late_reply_is_dropped_and_logged(self):
        """The reply to an RPC that timed out is acked and logged, not dispatched as a request (R1)."""
        yield self._spawn_processes([HELLO])
        clock = task.Clock()
        proc = yield self.process_on(clock)
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        pending = proc.rpc_send("%s.hello" % ioninit.sys_name, "ping", None, timeout=1)
        clock.advance(1)
        yield self.assertFailure(pending, defer.TimeoutError)
        yield wait_for(lambda: any("already ended" in e.get("log_format", "") for e in logged))
        (late,) = [e for e in logged if "already ended" in e.get("log_format", "")]
        self.assertEqual(late["log_level"], LogLevel.warn)
        self.assertEqual(proc.rpc.pending, {})
        # The late reply was acked: the next reply reaches the backend queue's consumer.
        answered = proc.rpc_send("%s.hello" % ioninit.sys_name, "ping", None, timeout=0)
        yield wait_for(lambda: len(proc.rpc) == 0)
        clock.advance(0)
        content, _, _ = yield answered
        self.assertEqual(content, {"pong": "pong"})

    @defer.inlineCallbacks
    def test_rpc_to_no_such_service_fails_at_once(self):
        """The mandatory request comes back from the broker: NoSuchService, not a wait for the timeout."""
        yield self._spawn_processes([HELLO])
        missing = "%s.no_such_service" % ioninit.sys_name
        # Timeouts far beyond the test's: only the returned request can end these RPCs in time.
        failed = self.proc.rpc_send(missing, "ping", None, timeout=3600)
        answered = self.proc.rpc_send("%s.hello" % ioninit.sys_name, "ping", None, timeout=3600)
        error = yield self.assertFailure(failed, NoSuchService)
        self.assertIn("no such service", str(error))
        self.assertIn("to %s" % missing, str(error))
        self.assertIn("op=ping", str(error))
        content, _, _ = yield answered
        self.assertEqual(content, {"pong": "pong"})
        self.assertEqual(self.proc.rpc.pending, {})
        self.assertEqual(self.container.exchange_manager._return_watchers, {})
        client = ServiceClient(proc=self.proc, targetname="no_such_service")
        yield self.assertFailure(client.rpc_send("hello", {}, timeout=3600), NoSuchService)

    @defer.inlineCallbacks
    def test_returned_events_are_dropped_quietly_during_an_rpc(self):
        """An event nobody subscribes to comes back too; it is not taken for the pending RPC's request."""
        queue = yield self.silent_queue()
        clock = task.Clock()
        proc = yield self.process_on(clock)
        pending = proc.rpc_send(queue, "ping", None, timeout=0.5)
        publisher = events.InfoLoggingEventPublisher(process=proc, origin=self.unique_name("nobody"))
        yield proc.register_life_cycle_object(publisher)
        yield publisher.create_and_publish_event(name="unheard")
        # Returns come back in order: once this later request is back, so is the event.
        marker = proc.rpc_send("%s.no_such_service" % ioninit.sys_name, "ping", None, timeout=0)
        yield wait_for(lambda: len(proc.rpc) == 1)
        clock.advance(0)
        yield self.assertFailure(marker, NoSuchService)
        self.assertFalse(pending.called)
        clock.advance(0.5)
        yield self.assertFailure(pending, defer.TimeoutError)
        self.assertEqual(self.container.exchange_manager._return_watchers, {})

    @defer.inlineCallbacks
    def test_terminate_removes_queues(self):
        proc = Process(spawnargs={"proc-name": "short-lived"})
        yield proc.spawn()
        self.assertEqual(proc.state, "ACTIVE")
        self.assertTrue(proc.is_spawned())
        connection = self.container.exchange_manager.connection
        yield proc.terminate()
        self.assertEqual(proc.state, "TERMINATED")
        for name in (proc.id.full, proc.backend_id.full):
            yield self.assertFailure(connection.queue_declare(name, passive=True), NotFound)
        self.assertNotIn(proc.id.full, self.container.proc_manager.process_registry)

    @defer.inlineCallbacks
    def test_terminate_by_rpc(self):
        yield self._spawn_processes([HELLO])
        hello_id = yield self._get_procid("hello")
        hello = self._get_procinstance(hello_id)
        yield self.proc.rpc_send(str(hello_id), "terminate", None)
        self.assertEqual(hello.state, "TERMINATED")

    @defer.inlineCallbacks
    def test_lifecycle_objects_follow_process(self):
        early = Recorder()
        proc = Process()
        proc.add_life_cycle_object(early)
        yield proc.spawn()
        self.assertEqual(early.calls, ["initialize", "activate"])
        late = Recorder()
        yield proc.register_life_cycle_object(late)
        self.assertEqual(late.state, "ACTIVE")
        self.assertRaises(ProcessError, proc.add_life_cycle_object, Recorder())
        yield proc.terminate()
        self.assertEqual(early.calls[-1], "terminate")
        self.assertEqual(late.state, "TERMINATED")
        after = Recorder()
        yield proc.register_life_cycle_object(after)
        self.assertEqual(after.calls, ["initialize", "activate", "terminate"])

    def test_spawn_twice(self):
        return self.assertFailure(self.proc.spawn(), ProcessError)

    @defer.inlineCallbacks
    def test_malformed_message_to_process(self):
        yield self._spawn_processes([HELLO])
        connection = self.container.exchange_manager.connection
        target = "%s.hello" % ioninit.sys_name
        for body in (b"\xc1garbage", b"\x93\x01\x02\x03", b""):
            yield connection.publish("magnet.topic", target, body)
        content, _, _ = yield HelloServiceClient(proc=self.proc).hello("after garbage")
        self.assertEqual(content["greeting"], "Hello, after garbage!")

    @defer.inlineCallbacks
    def test_release_starts_service(self):
        yield self.container.start_rel("res/deploy/hello.rel")
        content, _, _ = yield ServiceClient(proc=self.proc, targetname="hello").rpc_send("ping", None)
        self.assertEqual(content, {"pong": "pong"})


for_each_broker(ProcessTests, globals(), base=IonTestCase)
