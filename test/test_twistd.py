"""
End to end: a real `twistd -n cc` subprocess (R1 §7.1, §7.2) on the embedded
broker and on RabbitMQ, stopped by signals, and refusing a bad release.
"""

import fcntl
import os
import re
import shutil
import sys
import uuid

from twisted.internet import defer, error, protocol, reactor, utils
from twisted.trial import unittest

from ion.core.messaging.broker import connect
from ion.core.messaging.broker.address import BrokerAddress
from ion.core.process.process import Process
from ion.core.process.service_process import ServiceClient
from ion.core.resources import resource_path
from ion.test.iontest import IonTestCase
from test.brokers import RABBIT_URL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLO_REL = resource_path("res/deploy/hello.rel")
EVENTS_DEMO_REL = resource_path("res/deploy/events-demo.rel")
# The venv's twistd, run by this interpreter; argv[0] only names it in usage messages.
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]
# The console script itself, as a user runs it: unlike `python -c`, it does not put the cwd on sys.path.
TWISTD_SCRIPT = os.path.join(os.path.dirname(sys.executable), "twistd")
STARTED = re.compile(r"Container (\S+) started")
DEBUG_LINE = re.compile(r"#debug\]")

# A user's own service: a module and a release, alone in the directory the container starts in.
USER_SERVICE = """\
from ion.core.process.process import ProcessFactory
from ion.core.process.service_process import ServiceProcess


class EchoService(ServiceProcess):
    declare = ServiceProcess.service_declare(name="echo", version="0.1", dependencies=[])

    def op_echo(self, content, headers, msg):
        return self.reply_ok(msg, {"echo": content, "by": self.id.full})


factory = ProcessFactory(EchoService)
"""
USER_REL = """\
{
    "type": "release",
    "name": "MyRel",
    "version": "0.1",
    "apps": [
        {"name": "echo", "processapp": ("echo", "my_service", "EchoService")},
    ],
}
"""


class TwistdProtocol(protocol.ProcessProtocol):
    """Collects a subprocess's output lines; Deferreds for a line showing up and for the exit."""

    def __init__(self):
        self.lines = []
        self.finished = False
        self.exit_code = None  # None too if a signal killed it
        self._partial = {}
        self._line_waiters = []  # (regex, Deferred)
        self._exit_waiters = []

    def childDataReceived(self, fd, data):
        *complete, self._partial[fd] = (self._partial.get(fd, b"") + data).split(b"\n")
        for raw in complete:
            self._line(raw.decode("utf-8", "replace"))

    def _line(self, line):
        self.lines.append(line)
        for waiter in list(self._line_waiters):
            match = waiter[0].search(line)
            if match:
                self._line_waiters.remove(waiter)
                waiter[1].callback(match)

    def wait_for(self, pattern, timeout=30):
        """Fires with the re.Match of the first output line matching `pattern` (a regex)."""
        pattern = re.compile(pattern)
        for line in self.lines:
            match = pattern.search(line)
            if match:
                return defer.succeed(match)
        if self.finished:
            return defer.fail(AssertionError(self._report("exited before logging %r" % pattern.pattern)))
        waiter = (pattern, defer.Deferred())
        self._line_waiters.append(waiter)
        return waiter[1].addTimeout(timeout, reactor).addErrback(self._timed_out, waiter)

    def exited(self, timeout=30):
        """Fires with the exit code once the process is gone."""
        if self.finished:
            return defer.succeed(self.exit_code)
        d = defer.Deferred()
        self._exit_waiters.append(d)
        return d.addTimeout(timeout, reactor).addErrback(self._timed_out, None)

    def _timed_out(self, failure, waiter):
        failure.trap(defer.TimeoutError)
        if waiter in self._line_waiters:
            self._line_waiters.remove(waiter)
        expected = "its exit" if waiter is None else "a line matching %r" % waiter[0].pattern
        raise AssertionError(self._report("timed out waiting for %s" % expected))

    def output(self):
        return "\n".join(self.lines)

    def _report(self, problem):
        return "twistd: %s; its output:\n%s" % (problem, self.output())

    def processEnded(self, reason):
        for rest in self._partial.values():
            if rest:
                self._line(rest.decode("utf-8", "replace"))
        self.finished = True
        self.exit_code = reason.value.exitCode
        line_waiters, self._line_waiters = self._line_waiters, []
        for pattern, d in line_waiters:
            d.errback(AssertionError(self._report("exited before logging %r" % pattern.pattern)))
        exit_waiters, self._exit_waiters = self._exit_waiters, []
        for d in exit_waiters:
            d.callback(self.exit_code)


class TwistdMixin:
    """Runs `twistd -n cc ...` in a temporary directory with this checkout on PYTHONPATH."""

    timeout = 60

    def new_directory(self):
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def spawn_twistd(self, *cc_args, cwd=None, console_script=False, env=None):
        """`twistd -n cc ...` in `cwd` (a new empty directory by default); console_script runs bin/twistd."""
        cwd = cwd or self.new_directory()
        env = dict(os.environ, **(env or {}))
        env["PYTHONPATH"] = os.pathsep.join([REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        command = [TWISTD_SCRIPT] if console_script else TWISTD
        args = command + ["-n", "--pidfile=", "--logfile=-", "cc"] + list(cc_args)
        proto = TwistdProtocol()
        reactor.spawnProcess(proto, command[0], args, env=env, path=cwd)
        self.addCleanup(self._kill, proto)
        return proto

    def _kill(self, proto):
        """Cleanup: never leave a twistd behind."""
        if proto.finished:
            return None
        try:
            proto.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
        return proto.exited()

    @defer.inlineCallbacks
    def stop_with(self, proto, signal_name):
        """Send the signal; the container logs that it stopped and twistd exits 0."""
        container_id = (yield proto.wait_for(STARTED)).group(1)
        proto.transport.signalProcess(signal_name)
        code = yield proto.exited()
        self.assertEqual(code, 0, proto.output())
        self.assertIn("Received SIG%s: stopping the container" % signal_name, proto.output())
        self.assertIn("Container %s stopped" % container_id, proto.output())
        return container_id


class PluginTest(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_cc_is_a_twistd_plugin(self):
        """Found through the checkout's twisted/plugins once the checkout is on sys.path."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        env = dict(os.environ, PYTHONPATH=REPO)
        out = yield utils.getProcessOutput(sys.executable, TWISTD[1:] + ["--help"], env=env, path=cwd)
        self.assertRegex(out.decode(), r"\n\s+cc\s+ION Capability Container")


class EmbeddedBrokerTest(TwistdMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_sigterm(self):
        proto = self.spawn_twistd("--no_shell", HELLO_REL)
        yield proto.wait_for("using the embedded in-memory broker")
        yield proto.wait_for(r"Application hello started")
        yield proto.wait_for(STARTED)
        yield self.stop_with(proto, "TERM")
        self.assertIn("Application hello stopped", proto.output())

    @defer.inlineCallbacks
    def test_sigint(self):
        proto = self.spawn_twistd("-n", HELLO_REL)
        yield self.stop_with(proto, "INT")

    @defer.inlineCallbacks
    def test_boot_script_scripts_and_lockfile(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        boot, script, lock = (os.path.join(work, name) for name in ("boot.py", "script.py", "cc.lock"))
        with open(boot, "w") as f:
            f.write("def boot():\n    open(%r, 'w').write('booted')\n" % os.path.join(work, "booted"))
        with open(script, "w") as f:
            f.write("open(%r, 'w').write('ran')\n" % os.path.join(work, "ran"))
        proto = self.spawn_twistd("--no_shell", "-b", boot, "--lockfile", lock, script, HELLO_REL)
        yield proto.wait_for(STARTED)
        self.assertEqual(open(os.path.join(work, "booted")).read(), "booted")
        self.assertEqual(open(os.path.join(work, "ran")).read(), "ran")
        with open(lock, "a") as f:  # released once startup is complete
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(f, fcntl.LOCK_UN)
        yield self.stop_with(proto, "TERM")

    def assertNoTraceback(self, proto):
        self.assertNotIn("Traceback", proto.output())
        self.assertNotIn("Usage:", proto.output())

    @defer.inlineCallbacks
    def test_bad_release(self):
        """A configuration error is one line (its traceback is logged at debug level, off by default)."""
        rel = os.path.abspath(self.mktemp() + ".rel")
        with open(rel, "w") as f:
            f.write("{'type': 'release',\n 'name': 'Bad',\n 'apps': [{'name': 'hello'}\n}\n")
        proto = self.spawn_twistd("--no_shell", rel)
        code = yield proto.exited(timeout=15)
        self.assertNotEqual(code, 0, proto.output())
        failure = yield proto.wait_for(r"#error\] Container startup failed: release file (\S+) \(line (\d+)\)")
        self.assertEqual(failure.group(1), rel)
        self.assertNoTraceback(proto)
        self.assertNotRegex(proto.output(), STARTED)

    @defer.inlineCallbacks
    def test_bad_release_traceback_at_debug_level(self):
        rel = os.path.abspath(self.mktemp() + ".rel")
        with open(rel, "w") as f:
            f.write("{'type': 'app', 'name': 'NotARelease'}\n")
        proto = self.spawn_twistd("--no_shell", "--log-level=debug", rel)
        yield proto.exited(timeout=15)
        yield proto.wait_for(r"#error\] Container startup failed: %s: 'type' must be 'release'" % re.escape(rel))
        yield proto.wait_for(r"#debug\] Container startup failed$")
        self.assertIn("Traceback", proto.output())

    @defer.inlineCallbacks
    def test_release_naming_a_missing_module(self):
        cwd = self.new_directory()
        with open(os.path.join(cwd, "my.rel"), "w") as f:
            f.write(USER_REL.replace("my_service", "no_such_module"))
        proto = self.spawn_twistd("--no_shell", "my.rel", cwd=cwd)
        code = yield proto.exited(timeout=15)
        self.assertNotEqual(code, 0, proto.output())
        yield proto.wait_for(r"#error\] Container startup failed: .*No module named 'no_such_module'")
        self.assertNoTraceback(proto)

    @defer.inlineCallbacks
    def test_missing_release(self):
        rel = os.path.abspath(self.mktemp() + ".rel")
        proto = self.spawn_twistd("--no_shell", rel)
        code = yield proto.exited(timeout=15)
        self.assertNotEqual(code, 0, proto.output())
        self.assertIn("Container startup failed: %s: no such file" % rel, proto.output())
        self.assertNoTraceback(proto)

    @defer.inlineCallbacks
    def test_bad_option(self):
        proto = self.spawn_twistd("-p", "abc")
        code = yield proto.exited()
        self.assertEqual(code, 1, proto.output())
        self.assertEqual(proto.output().strip(), "twistd cc: --broker_port must be a number, not 'abc'")

    @defer.inlineCallbacks
    def test_bad_container_args(self):
        proto = self.spawn_twistd("--no_shell", "-a", "sysname=x, junk")
        code = yield proto.exited()
        self.assertEqual(code, 1, proto.output())
        self.assertEqual(proto.output().strip(), "twistd cc: container args 'sysname=x, junk': 'junk' is not key=value")

    @defer.inlineCallbacks
    def test_host_and_broker_url(self):
        proto = self.spawn_twistd("--no_shell", "-h", "127.0.0.1", "--broker", "memory")
        code = yield proto.exited()
        self.assertEqual(code, 1, proto.output())
        self.assertIn("--broker URL and -h/--broker_host both name the broker", proto.output())
        self.assertNoTraceback(proto)

    @defer.inlineCallbacks
    def test_unknown_container_arg_is_warned(self):
        proto = self.spawn_twistd("--no_shell", "-a", "sysname=x,syssname=y", HELLO_REL)
        yield proto.wait_for(r"#warn\] Container arg 'syssname' is not known and is ignored \(did you mean 'sysname'\?\)")
        yield proto.wait_for(r"Container \S+ \(sysname x\) connected")
        yield self.stop_with(proto, "TERM")

    @defer.inlineCallbacks
    def test_debug_lines_off_by_default(self):
        # events-demo's subscriber logs "consuming" at debug level as it starts.
        quiet = self.spawn_twistd("--no_shell", EVENTS_DEMO_REL)
        verbose = self.spawn_twistd("--no_shell", "--log-level", "debug", EVENTS_DEMO_REL)
        yield verbose.wait_for(r"#debug\] EventSubscriber consuming")
        yield quiet.wait_for(STARTED)
        yield self.stop_with(quiet, "TERM")
        self.assertNotRegex(quiet.output(), DEBUG_LINE)
        yield self.stop_with(verbose, "TERM")

    @defer.inlineCallbacks
    def test_log_level_from_ion_config(self):
        local = os.path.join(self.new_directory(), "local.config")
        with open(local, "w") as f:
            f.write("{'ion.core.cc.service': {'log_level': 'warn'}}\n")
        proto = self.spawn_twistd("--no_shell", "-a", "syssname=y", HELLO_REL, env={"ION_LOCAL_CONFIG": local})
        yield proto.wait_for(r"#warn\] Container arg 'syssname' is not known")
        proto.transport.signalProcess("TERM")
        self.assertEqual((yield proto.exited()), 0, proto.output())
        self.assertNotIn("#info]", proto.output())

    @defer.inlineCallbacks
    def test_bad_ion_config_is_one_line(self):
        """
        The plugin reports a config file that cannot be read (read when
        ion.core.cc.service is imported) in one line.  Run on the checkout's
        plugin file: an installed copy of the package may shadow
        twisted/plugins/cc.py for `twistd` itself.
        """
        local = os.path.join(self.new_directory(), "local.config")
        with open(local, "w") as f:
            f.write("{'ion.core.cc.service': {\n")
        plugin = os.path.join(REPO, "twisted", "plugins", "cc.py")
        code = "import runpy; runpy.run_path(%r)['CapabilityContainer'].options" % (plugin,)
        env = dict(os.environ, ION_LOCAL_CONFIG=local, PYTHONPATH=REPO)
        out, err, exit_code = yield utils.getProcessOutputAndValue(sys.executable, ["-c", code], env=env)
        self.assertEqual(exit_code, 1, err)
        self.assertEqual(err.decode().strip(), "twistd cc: %s, line 1: syntax error: '{' was never closed" % local)


class RabbitTest(TwistdMixin, IonTestCase):
    """A twistd container and this test's own container share a sysname on RabbitMQ."""

    broker_url = RABBIT_URL

    def setUp(self):
        self.rabbitmqctl = shutil.which("rabbitmqctl")
        if self.rabbitmqctl is None:
            raise unittest.SkipTest("rabbitmqctl is not on PATH")

    @defer.inlineCallbacks
    def rabbit_names(self, what):
        args = ["-q", "--no-table-headers", what, "name"]
        out = yield utils.getProcessOutput(self.rabbitmqctl, args, env=os.environ)
        return [line.strip() for line in out.decode().splitlines() if line.strip()]

    @defer.inlineCallbacks
    def rpc_to_a_twistd_container(self):
        """
        twistd serves hello.rel under a fresh sysname; this test's container calls
        it, then both stop.  Fires with (sysname, twistd container id, own id).
        """
        sysname = "cctest-%s" % uuid.uuid4().hex[:12]
        self.addCleanup(self.delete_exchange, "%s.events.topic" % sysname)
        proto = self.spawn_twistd("--no_shell", "-h", "127.0.0.1", "-a", "sysname=%s" % sysname, HELLO_REL)
        connected = yield proto.wait_for(r"Container (\S+) \(sysname (\S+)\) connected to amqp://127\.0\.0\.1:5672/")
        twistd_id = connected.group(1)
        self.assertEqual(connected.group(2), sysname)
        yield proto.wait_for(STARTED)

        container = yield self._start_container(sysname=sysname)
        own_id = container.id
        self.assertNotEqual(own_id, twistd_id)
        proc = Process(spawnargs={"proc-name": "twistd-tester"})
        yield proc.spawn()
        hello = ServiceClient(proc=proc, targetname="hello")
        self.assertEqual(hello.target, "%s.hello" % sysname)
        content, _, _ = yield hello.rpc_send("ping", None)
        self.assertEqual(content, {"pong": "pong"})
        content, _, _ = yield hello.rpc_send("hello", {"name": "twistd"})
        self.assertEqual(content["greeting"], "Hello, twistd!")
        self.assertTrue(content["by"].startswith(twistd_id + "."), content)

        yield self.stop_with(proto, "TERM")
        yield self._stop_container()
        return sysname, twistd_id, own_id

    @defer.inlineCallbacks
    def delete_exchange(self, name):
        """Remove the exchange test_no_exchanges_left finds, so runs do not pile them up."""
        connection = yield connect(BrokerAddress.from_url(RABBIT_URL))
        try:
            yield connection.exchange_delete(name)
        finally:
            yield connection.close()

    def assertNoneContain(self, names, tokens, what):
        for token in tokens:
            self.assertEqual([n for n in names if token in n], [], "%s left on the broker for %s" % (what, token))

    @defer.inlineCallbacks
    def test_user_service_in_the_start_directory(self):
        """
        A module and a .rel in an otherwise empty directory, run there with
        bin/twistd (which, unlike python -c, does not put the cwd on sys.path).
        """
        cwd = self.new_directory()
        with open(os.path.join(cwd, "my_service.py"), "w") as f:
            f.write(USER_SERVICE)
        with open(os.path.join(cwd, "my.rel"), "w") as f:
            f.write(USER_REL)
        proto = self.spawn_twistd("--no_shell", "-h", "127.0.0.1", "my.rel", cwd=cwd, console_script=True)
        connected = yield proto.wait_for(r"Container (\S+) \(sysname (\S+)\) connected to amqp://127\.0\.0\.1:5672/")
        twistd_id, sysname = connected.groups()
        self.addCleanup(self.delete_exchange, "%s.events.topic" % sysname)
        yield proto.wait_for(STARTED)

        yield self._start_container(sysname=sysname)
        proc = Process(spawnargs={"proc-name": "user-service-tester"})
        yield proc.spawn()
        content, _, _ = yield ServiceClient(proc=proc, targetname="echo").rpc_send("echo", {"x": 1})
        self.assertEqual(content["echo"], {"x": 1})
        self.assertTrue(content["by"].startswith(twistd_id + "."), content)
        yield self.stop_with(proto, "TERM")
        yield self._stop_container()

    @defer.inlineCallbacks
    def test_no_404_at_shutdown(self):
        """
        A subscriber's events exchange is auto-deleted by RabbitMQ with its
        binding; deleting it again at shutdown drew a 404 that closed a channel.
        """
        sysname = "cctest-%s" % uuid.uuid4().hex[:12]
        self.addCleanup(self.delete_exchange, "%s.events.topic" % sysname)
        proto = self.spawn_twistd("--no_shell", "--log-level=debug", "-h", "127.0.0.1", "-a", "sysname=" + sysname,
                                  EVENTS_DEMO_REL)
        yield proto.wait_for(r"EventSubscriber consuming")
        yield self.stop_with(proto, "TERM")
        self.assertNotIn("NOT_FOUND", proto.output())
        self.assertNotIn("closed channel", proto.output())
        self.assertNoneContain((yield self.rabbit_names("list_exchanges")), [sysname], "exchanges")

    @defer.inlineCallbacks
    def test_rpc_then_no_queues_left(self):
        tokens = yield self.rpc_to_a_twistd_container()
        self.assertNoneContain((yield self.rabbit_names("list_queues")), tokens, "queues")

    @defer.inlineCallbacks
    def test_no_exchanges_left(self):
        tokens = yield self.rpc_to_a_twistd_container()
        self.assertNoneContain((yield self.rabbit_names("list_exchanges")), tokens, "exchanges")
