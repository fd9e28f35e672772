"""shell_api on a running container (this test's, with the hello app), on both brokers."""

import contextlib
import io

from twisted.internet import defer

from ion.core.cc import shell_api
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker


class ShellApiTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container(sysname=self.unique_name("shapi"), start_apps=["hello"])

    def tearDown(self):
        return self._stop_container()

    def printed(self, function, *args):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertIsNone(function(*args))
        return out.getvalue()

    def test_info_ps_ms_svc(self):
        self.assertIn("container: %s" % (self.container.id,), self.printed(shell_api.info))
        hello = [p for p in self.container.proc_manager.process_registry.values() if p.proc_name == "hello"][0]
        self.assertRegex(self.printed(shell_api.ps), r"hello\s+%s\s+\S+" % (hello.id.full,))
        self.assertIn(hello.id.full, self.printed(shell_api.ms))
        self.assertRegex(self.printed(shell_api.svc), r"hello\s+0\.1\.0\s+%s" % (hello.id.full,))
        self.assertEqual(shell_api.identify()["container"], self.container.id)
        self.assertIs(shell_api.get_proc(hello.id.full), hello)
        self.assertIs(shell_api.get_proc(int(hello.id.local)), hello)  # a number is a local process
        names = shell_api.namespace(service=None)
        self.assertIn(hello.id.full, list(names["pids"]))
        self.assertEqual(names["svcs"]["hello"], hello.id.full)

    @defer.inlineCallbacks
    def test_ping_rpc_spawn_kill(self):
        answer = yield shell_api.ping("hello")
        self.assertEqual(answer, {"pong": "pong"})
        reply = yield shell_api.rpc_send("%s.hello" % (self.container.args["sysname"],), "hello", {"name": "shell"})
        self.assertEqual(reply["greeting"], "Hello, shell!")
        pid = yield shell_api.spawn("ion.services.examples.hello_service")
        self.assertIn(pid, self.container.proc_manager.process_registry)
        killed = yield shell_api.kill(pid)
        self.assertTrue(killed)
        self.assertNotIn(pid, self.container.proc_manager.process_registry)
        process = yield shell_api.makeprocess("mine")
        self.assertEqual(process.proc_name, "mine")


ShellApiMemoryTest, ShellApiRabbitTest = for_each_broker(ShellApiTests, globals(), base=IonTestCase)
