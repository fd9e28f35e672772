"""
ION R1 user tests, as R1 wrote them (reference §12), on both brokers.

Each class uses one of the setUp/tearDown patterns of R1's suites: spawned
services (shut down, then the container stopped, in tearDown), a bare
Process the test terminates itself, a subscriber activated by hand, and a
second container replacing the first.  Error replies are checked the way
R1's test_process.py did.  Every name R1 code imports (§12) is imported
below from its R1 module path.
"""

import logging
import unittest as pyunit

from twisted.internet import defer, task
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

import ion.util.ionlog
import ion.util.procutils as pu
from ion.core import ioninit
from ion.core.exception import (
    ApplicationError,
    ConfigurationError,
    FatalError,
    IllegalStateError,
    IonError,
    ProcessError,
    ReceivedApplicationError,
    ReceivedContainerError,
    ReceivedError,
    StartupError,
)
from ion.core.id import Id
from ion.core.messaging import messaging
from ion.core.messaging.receiver import Receiver, WorkerReceiver
from ion.core.pack.app_manager import AppManager
from ion.core.pack.application import AppDefinition, AppLoader
from ion.core.pack.release import ReleaseDefinition, ReleaseLoader
from ion.core.process.process import Process, ProcessClient, ProcessClientBase, ProcessDesc, ProcessFactory
from ion.core.process.service_process import ServiceClient, ServiceProcess
from ion.services.dm.distribution.events import InfoLoggingEventPublisher, InfoLoggingEventSubscriber
from ion.test.iontest import FakeMessage, FakeReceiver, IonTestCase, ReceiverProcess
from ion.util import procutils
from ion.util.fsm import FSM, ExceptionFSM
from ion.util.state_object import (
    Actionable,
    BasicFSMFactory,
    BasicLifecycleObject,
    BasicStates,
    FSMFactory,
    StateObject,
)
from test.brokers import BrokerTestMixin, for_each_broker, wait_for

log = ion.util.ionlog.getLogger(__name__)

HELLO = {"name": "hello", "module": "ion.services.examples.hello_service", "class": "HelloService"}
ERRORS = {"name": "errors", "module": __name__, "class": "ErrorService"}


class ErrorService(ServiceProcess):
    """The error cases of R1's ion/core/process/test/test_process.py."""

    declare = ServiceProcess.service_declare(name="r1_errors", version="0.1", dependencies=[])

    def op_reply_err(self, content, headers, msg):
        return self.reply_err(msg, exception=ApplicationError("refused"), response_code=self.BAD_REQUEST)

    def op_raise_runtime(self, content, headers, msg):
        raise RuntimeError("a bug in the op")

    def op_raise_app_400(self, content, headers, msg):
        raise ApplicationError("bad request", self.BAD_REQUEST)

    def op_raise_app(self, content, headers, msg):
        raise ApplicationError("no response code")

    def op_echo(self, content, headers, msg):
        log.info("echo %r", content)
        return self.reply_ok(msg, content)


factory = ProcessFactory(ErrorService)


class ErrorClient(ServiceClient):
    def __init__(self, proc=None, **kwargs):
        kwargs.setdefault("targetname", "r1_errors")
        super().__init__(proc=proc, **kwargs)

    @defer.inlineCallbacks
    def call(self, op, content=None, **kwargs):
        yield self._check_init()
        result = yield self.rpc_send(op, content, **kwargs)
        return result


def observe_log(test):
    """Record every log event until the test ends."""
    events = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


# -- pattern 1: spawned services; tearDown shuts them down, then stops the container ------


class SpawnedServicesTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.sup = yield self._spawn_processes([HELLO, ERRORS])

    @defer.inlineCallbacks
    def tearDown(self):
        yield self._shutdown_processes()
        yield self._stop_container()

    @defer.inlineCallbacks
    def test_children_by_name(self):
        hello_id = self.sup.get_child_id("hello")
        self.assertIsInstance(hello_id, Id)
        self.assertEqual((yield self._get_procid("hello")), str(hello_id))
        self.assertIs(self.sup.get_child_def("hello").proc_id, hello_id)
        self.assertIsNone(self.sup.get_child_id("nobody"))
        hello = self._get_service_by_name("hello")
        self.assertIs(self._get_procinstance(hello_id), hello)
        self.assertIs(self._get_procinstance(str(hello_id)), hello)
        self.assertEqual(hello._get_state(), BasicStates.S_ACTIVE)

    @defer.inlineCallbacks
    def test_ok_reply(self):
        client = ErrorClient()
        content, headers, msg = yield client.call("echo", {"x": 1})
        self.assertEqual(content, {"x": 1})
        self.assertEqual(headers[Process.MSG_STATUS], Process.ION_OK)

    @defer.inlineCallbacks
    def test_error_replies_as_r1_tested_them(self):
        client = ErrorClient()
        events = observe_log(self)
        yield self.assertFailure(client.call("reply_err"), ReceivedApplicationError)
        yield self.assertFailure(client.call("raise_app_400"), ReceivedApplicationError)
        error = yield self.assertFailure(client.call("raise_runtime"), ReceivedContainerError)
        self.assertEqual(error.msg_headers[Process.MSG_STATUS], Process.ION_ERROR)
        self.assertEqual(error.response_code, 500)
        # An ApplicationError without a code is 500 in R1: the caller sees a container error.
        yield self.assertFailure(client.call("raise_app"), ReceivedContainerError)
        # Handled (answered) errors are logged, but not as failures that trial would count.
        self.assertEqual([e for e in events if "log_failure" in e], [])
        logged = [e for e in events if e.get("log_level") == LogLevel.error and "a bug in the op" in e.get("traceback", "")]
        self.assertEqual(len(logged), 1)

    @defer.inlineCallbacks
    def test_rpc_to_a_queue_nobody_consumes_times_out(self):
        desc = ProcessDesc(name="sleeper", module="ion.core.process.process", procclass="Process")
        yield self.sup.spawn_child(desc, activate=False)
        self.assertEqual((desc._get_state(), desc.process._get_state()), ("READY", "READY"))
        clock = task.Clock()
        proc = Process(clock=clock)
        yield proc.spawn()
        pending = proc.rpc_send(str(desc.proc_id), "ping", None, timeout=1)
        clock.advance(1)
        yield self.assertFailure(pending, defer.TimeoutError)
        yield proc.terminate()

    @defer.inlineCallbacks
    def test_activate_later(self):
        desc = ProcessDesc(name="late", module="ion.services.examples.hello_service", **{"class": "HelloService"})
        proc_id = yield desc.spawn(activate=False)
        self.assertEqual(desc.process._get_state(), "READY")
        yield desc.activate()
        self.assertEqual((desc._get_state(), desc.process._get_state()), ("ACTIVE", "ACTIVE"))
        self.assertEqual(desc.spawn_args["sup-id"], self.test_sup.id.full)  # the root supervisor
        self.assertEqual(proc_id, desc.proc_id)
        yield desc.terminate()

    @defer.inlineCallbacks
    def test_missing_process_module_is_an_import_error(self):
        yield self.assertFailure(self._spawn_processes([{"name": "x", "module": "ion.no_such_module"}]), ImportError)
        self.assertEqual(self.sup.get_child_def("x")._get_state(), BasicStates.ERROR)

    @defer.inlineCallbacks
    def test_app_manager(self):
        manager = self.container.app_manager
        self.assertIsInstance(manager, AppManager)
        self.assertTrue(manager.is_app_started("ioncore"))
        self.assertIsNone(manager.start_app(app_name="ioncore"))  # already started: R1 returns None
        yield self.assertFailure(manager.start_app(app_name="no_such_app"), StartupError)
        appdef = AppLoader.load_app_definition("res/apps/hello.app")
        self.assertIsInstance(appdef, AppDefinition)
        self.assertEqual((appdef.name, appdef["name"]), ("hello", "hello"))
        yield AppLoader.start_application(self.container, appdef)
        self.assertTrue(manager.is_app_started("hello"))
        self.assertEqual(len(appdef._supid.split(".")), 2)
        yield AppLoader.stop_application(self.container, appdef)
        self.assertFalse(manager.is_app_started("hello"))
        yield manager.start_app(process_app=("hello", HELLO["module"], HELLO["class"]), app_name="greeter")
        self.assertTrue((yield manager.stop_app("greeter")))
        rel = ReleaseLoader.load_rel_definition("res/deploy/hello.rel")
        self.assertIsInstance(rel, ReleaseDefinition)
        self.assertTrue(rel.apps)


SpawnedServicesMemoryTest, SpawnedServicesRabbitTest = for_each_broker(SpawnedServicesTests, globals(), base=IonTestCase)


# -- pattern 2: a bare Process the test terminates itself -----------------------------------


class BareProcessTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = ReceiverProcess(spawnargs={"proc-name": "r1-tester"})
        yield self._spawn_process(self.proc)

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.proc.terminate()
        yield self._stop_container()

    @defer.inlineCallbacks
    def test_process_client_from_process_module(self):
        yield self._spawn_processes([HELLO])
        client = ProcessClient(proc=self.proc, targetname="hello")
        self.assertIsInstance(client, ProcessClientBase)
        content, _, _ = yield client.rpc_send("hello", {"name": "r1"})
        self.assertEqual(content["greeting"], "Hello, r1!")
        self.assertRaises(AssertionError, client.rpc_send_protected, "hello", {}, "me", 0)

    @defer.inlineCallbacks
    def test_receiver_process_inbox(self):
        other = Process()
        yield other.spawn()
        yield other.send(self.proc.id.full, "sys_procexit", None)
        payload = yield self.proc.await_message()
        self.assertEqual((payload["op"], self.proc.inbox_count), ("sys_procexit", 1))
        yield other.terminate()

    @defer.inlineCallbacks
    def test_create_message(self):
        message = yield self.create_message(None, MessageName="m")
        self.assertEqual(message.MessageName, "m")

    def test_names(self):
        self.assertEqual((Process.BAD_REQUEST, Process.UNAUTHORIZED), (400, 401))
        self.assertEqual((Process.MSG_RESULT, Process.MSG_RESPONSE, Process.MSG_EXCEPTION), ("result", "response", "exception"))
        self.assertEqual(self.proc.get_scoped_name("system", "svc"), pu.get_scoped_name("svc", "system"))
        self.assertEqual(pu.get_scoped_name("svc", "system"), "%s.svc" % ioninit.sys_name)


BareProcessMemoryTest, BareProcessRabbitTest = for_each_broker(BareProcessTests, globals(), base=IonTestCase)


# -- pattern 3: a subscriber (and an R1-style receiver) activated by hand ---------------


class RecordingSubscriber(InfoLoggingEventSubscriber):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.msgs = []

    def ondata(self, data):
        self.msgs.append(data)


class PubRecv(Receiver):
    """R1's TestPubRecv: builds its own worker queue config in on_initialize."""

    def on_initialize(self, *args, **kwargs):
        config = messaging.worker(self.xname)
        config.update(binding_key=self.xname, routing_key=self.xname)
        return self._init_receiver(config, store_config=True)


class HandActivatedTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process()
        yield self.proc.spawn()
        self.origin = "chan1.%s" % self.proc.id.full
        self.sub = RecordingSubscriber(process=self.proc, origin=self.origin)
        yield self.sub.initialize()
        yield self.sub.activate()

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.sub.terminate()
        yield self.proc.terminate()
        yield self._stop_container()

    @defer.inlineCallbacks
    def test_event_reaches_subscriber(self):
        pub = InfoLoggingEventPublisher(process=self.proc, origin=self.origin)
        yield self.proc.register_life_cycle_object(pub)
        yield pub.create_and_publish_event(name="TestEvent")
        yield wait_for(lambda: self.sub.msgs)
        self.assertEqual(self.sub.msgs[0]["content"].name, "TestEvent")

    @defer.inlineCallbacks
    def test_init_receiver(self):
        received = []
        recv = PubRecv(pu.create_guid(), process=self.proc)
        recv.add_handler(lambda data, msg: (received.append(data["content"]), msg.ack()))
        self.assertEqual((yield recv.attach()), recv.xname)
        self.assertEqual(recv.queue, recv.xname)
        self.assertIn(recv.xname, self.container.exchange_manager.store)
        yield self.proc.send(recv.xname, "data", "get stuck in")
        yield wait_for(lambda: received)
        self.assertEqual(received, ["get stuck in"])
        yield recv.terminate()


HandActivatedMemoryTest, HandActivatedRabbitTest = for_each_broker(HandActivatedTests, globals(), base=IonTestCase)


# -- pattern 4: a second container replaces the first ----------------------------------


class SecondContainerTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        self.sysname = self.unique_name("r1second")
        self.first = yield self._start_container(sysname=self.sysname)

    @defer.inlineCallbacks
    def tearDown(self):
        yield self._stop_container()
        yield self._stop_container()  # R1's own harness test stops twice: it is idempotent

    @defer.inlineCallbacks
    def test_second_container_stops_the_first(self):
        second = yield self._start_container(sysname=self.sysname)
        self.assertEqual(self.first.state, BasicStates.TERMINATED)
        self.assertIs(ioninit.container_instance, second)
        self.assertEqual(ioninit.sys_name, self.sysname)
        yield self._spawn_processes([HELLO])
        proc = Process()
        yield proc.spawn()
        content, _, _ = yield proc.rpc_send("%s.hello" % self.sysname, "hello", {"name": "again"})
        self.assertTrue(content["by"].startswith(second.id + "."))
        yield proc.terminate()


SecondContainerMemoryTest, SecondContainerRabbitTest = for_each_broker(SecondContainerTests, globals(), base=IonTestCase)


# -- the harness itself: R1 tearDowns work, and nothing is left running ----------------


class HarnessTests(BrokerTestMixin):
    """Runs small IonTestCases inside this (synchronous) test and checks their outcome."""

    def run_case(self, body):
        case_class = type("Case", (body, IonTestCase), {"broker_url": self.broker_url, "test_it": lambda self: None})
        case = case_class("test_it")
        result = pyunit.TestResult()
        case.run(result)
        self.assertIsNone(ioninit.container_instance, "the case left a container behind")
        return case, result

    def test_r1_teardown_with_shutdown_and_stop(self):
        class Body:
            @defer.inlineCallbacks
            def setUp(self):
                yield self._start_container()
                yield self._spawn_processes([HELLO])

            @defer.inlineCallbacks
            def tearDown(self):
                self.hello = self._get_service_by_name("hello")
                yield self._shutdown_processes()
                self.stopped = self.container
                yield self._stop_container()

        case, result = self.run_case(Body)
        self.assertEqual((result.errors, result.failures), ([], []))
        self.assertEqual(case.hello.state, BasicStates.TERMINATED)
        self.assertEqual(case.stopped.state, BasicStates.TERMINATED)

    def test_teardown_terminating_own_process(self):
        class Body:
            @defer.inlineCallbacks
            def setUp(self):
                yield self._start_container()
                self.proc = Process()
                yield self.proc.spawn()

            def tearDown(self):
                return self.proc.terminate()  # leaves the container to the harness

        case, result = self.run_case(Body)
        self.assertEqual((result.errors, result.failures), ([], []))
        self.assertEqual(case.proc.state, BasicStates.TERMINATED)

    def test_failing_setup_stops_the_container(self):
        class Body:
            @defer.inlineCallbacks
            def setUp(self):
                yield self._start_container()
                raise RuntimeError("setUp broke")

        _, result = self.run_case(Body)
        self.assertEqual(len(result.errors), 1)
        self.assertIn("setUp broke", result.errors[0][1])

    def test_failing_teardown_stops_the_container(self):
        class Body:
            def setUp(self):
                return self._start_container()

            def tearDown(self):
                raise RuntimeError("tearDown broke")

        _, result = self.run_case(Body)
        self.assertEqual(len(result.errors), 1)
        self.assertIn("tearDown broke", result.errors[0][1])


HarnessMemoryTest, HarnessRabbitTest = for_each_broker(HarnessTests, globals(), base=unittest.SynchronousTestCase)


# -- names without a broker -------------------------------------------------------------


class R1NamesTest(unittest.TestCase):
    def test_exceptions(self):
        for cls in (ConfigurationError, StartupError, IllegalStateError, ApplicationError, ReceivedError):
            self.assertTrue(issubclass(cls, IonError), cls)
        for cls in (FatalError, ProcessError):  # Exceptions as in R1, and now in the one family
            self.assertTrue(issubclass(cls, Exception), cls)
            self.assertTrue(issubclass(cls, IonError), cls)
        self.assertEqual(ApplicationError("x").response_code, 500)

    def test_procutils(self):
        self.assertIs(procutils, pu)
        guid = pu.create_guid()
        self.assertEqual((len(guid), guid.upper()), (36, guid))
        self.assertEqual([pu.create_unique_id("ns"), pu.create_unique_id("ns")], ["ns1", "ns2"])
        self.assertIsNone(pu.get_process_id(None))
        self.assertEqual(pu.get_process_id("cont.1.42"), Id("42", "cont.1"))
        self.assertEqual(pu.get_process_id("42").local, "42")
        self.assertIs(pu.get_class("ion.core.process.process.Process"), Process)
        self.assertRaises(ImportError, pu.get_module, "ion.no_such_module")
        self.assertTrue(pu.isnan("nan"))
        self.assertIsInstance(pu.currenttime_ms(), int)
        self.assertEqual(pu.get_last_or_default([], 3), 3)
        self.assertEqual(pu.capture_function_stdout(print, "hi"), "hi\n")

    @defer.inlineCallbacks
    def test_asleep(self):
        self.assertIsNone((yield pu.asleep(0.01)))
        clock = task.Clock()
        d = pu.asleep(10, clock=clock)
        clock.advance(9.99)
        self.assertFalse(d.called)
        clock.advance(0.01)
        self.assertIsNone(self.successResultOf(d))
        d = pu.asleep(10)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)

    def test_ionlog_reaches_twisted_logger(self):
        events = observe_log(self)
        self.assertIsInstance(log, logging.Logger)
        log.warning("from R1 code %d", 7)
        logging.getLogger("plain.stdlib").info("plain stdlib")
        texts = [(e.get("log_namespace"), e.get("log_text"), e["log_level"]) for e in events if "log_text" in e]
        self.assertIn((__name__, "from R1 code 7", LogLevel.warn), texts)
        self.assertIn(("plain.stdlib", "plain stdlib", LogLevel.info), texts)

    def test_ionlog_exception_is_not_a_failure(self):
        events = observe_log(self)
        try:
            raise ValueError("logged, not failed")
        except ValueError:
            log.exception("caught")
        (event,) = [e for e in events if e.get("log_namespace") == __name__]
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertIn("ValueError: logged, not failed", event["log_text"])
        self.assertNotIn("log_failure", event)

    def test_state_object_sync_returns(self):
        class Thing(BasicLifecycleObject):
            def on_initialize(self):
                return 33

            def on_activate(self):
                raise ValueError("no")

            def on_error(self, cause=None):
                pass

        thing = Thing()
        self.assertEqual(thing.initialize(), 33)
        self.assertRaises(ValueError, thing.activate)
        self.assertEqual(thing._get_state(), BasicStates.S_ERROR)
        self.assertTrue(issubclass(BasicLifecycleObject, StateObject))
        self.assertTrue(issubclass(StateObject, Actionable))
        self.assertEqual(BasicStates.A_ACTIVE_TERMINATE, "terminate_active")
        fsm = BasicFSMFactory().create_fsm(thing)
        self.assertEqual(fsm.get_transition("terminate", "ACTIVE"), ("on_terminate_active", "TERMINATED"))
        empty = FSMFactory().create_fsm(thing)
        self.assertEqual(empty.current_state, "INIT")
        self.assertRaises(ExceptionFSM, empty.process, "go")

    def test_fsm(self):
        seen = []
        fsm = FSM("off", memory=seen)
        fsm.add_transition("push", "off", lambda f: f.memory.append("on"), "on")
        fsm.add_transition_any("on", lambda f: f.memory.append(f.input_symbol), "off")
        fsm.process_list(["push", "anything"])
        self.assertEqual((seen, fsm.current_state), (["on", "anything"], "off"))

    def test_receiver_and_fakes(self):
        self.assertEqual((Receiver.SCOPE_GLOBAL, Receiver.SCOPE_SYSTEM, Receiver.SCOPE_LOCAL), ("global", "system", "local"))
        self.assertFalse(Receiver.rec_shutoff)
        self.assertTrue(issubclass(WorkerReceiver, Receiver))
        fake = FakeReceiver()
        fake.send("to", {"m": 1})
        self.assertEqual((fake.sendto, fake.sendmsg, FakeMessage({"a": 1}).payload), ("to", {"m": 1}, {"a": 1}))
        self.assertRaises(RuntimeError, ProcessFactory, object)
