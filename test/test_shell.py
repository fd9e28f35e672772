"""
The container shell on a real pseudo-terminal (pexpect drives `twistd -n cc`)
on both brokers, the no-terminal case, and the debug manhole's loopback-only
listening port.
"""

import os
import socket
import stat
import sys

import pexpect
from twisted.conch import telnet
from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from ion.core.cc.debug_manhole import DebugManhole
from ion.core.cc.shell import History
from test.brokers import BrokerTestMixin, for_each_broker, wait_for
from test.test_twistd import HELLO_REL, REPO, TwistdMixin

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class ShellTests(BrokerTestMixin):
    """pexpect blocks, so these tests are synchronous: each waits on the child with a timeout."""

    def broker_args(self):
        if not self.on_rabbit:
            return []
        return ["--broker", self.broker_url, "-s", self.unique_name("shell")]

    def spawn_shell(self, *args):
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        env = dict(os.environ, HOME=self.home, PYTHONPATH=REPO)
        argv = ["-n", "--pidfile=", "--logfile=-", "cc"] + self.broker_args() + list(args) + [HELLO_REL]
        child = pexpect.spawn(TWISTD, argv, env=env, cwd=self.home, timeout=30, encoding="utf-8")
        self.addCleanup(lambda: child.terminate(force=True) if child.isalive() else None)
        return child

    def leave_and_stop(self, child):
        child.send("\x04")
        child.expect_exact("Shell closed")
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        self.assertEqual(child.exitstatus, 0, child.before)

    def test_prompt_ps_ping_history_and_exit(self):
        child = self.spawn_shell()
        child.expect(r"ION capability container \S+\s+container (\S+), sysname")
        child.expect_exact("><> ")
        child.send("ps()\r")
        child.expect(r"hello\s+\S+\.\d+")
        child.send("ping('hello')\r")
        child.expect_exact("called back: {'pong': 'pong'}")
        child.send("ps?\r")
        child.expect_exact("The local processes")
        self.leave_and_stop(child)
        with open(os.path.join(self.home, ".cchistory")) as f:
            self.assertEqual(f.read().splitlines(), ["ps()", "ping('hello')", "ps?"])

    def test_no_history(self):
        child = self.spawn_shell("--no_history")
        child.expect_exact("--> ")
        child.send("1 + 41\r")
        child.expect_exact("42")
        self.leave_and_stop(child)
        self.assertFalse(os.path.exists(os.path.join(self.home, ".cchistory")))


ShellMemoryTest, ShellRabbitTest = for_each_broker(ShellTests, globals())


class NoTerminalTest(TwistdMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_no_shell_without_a_terminal(self):
        proto = self.spawn_twistd(HELLO_REL)  # stdin and stdout are pipes here
        yield self.stop_with(proto, "TERM")
        self.assertNotIn("><>", proto.output())


class DebugManholeInTwistdTest(TwistdMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_on_from_ion_config_off_with_no_dbmanhole(self):
        work = self.new_directory()
        local = os.path.join(work, "local.config")
        with open(local, "w") as f:
            f.write("{'ion.core.cc.service': {'debug_manhole': True}}\n")
        proto = self.spawn_twistd(HELLO_REL, cwd=work, env={"ION_LOCAL_CONFIG": local})
        found = yield proto.wait_for(r"Debug manhole on 127\.0\.0\.1 port (\d+) \(in (\S+)\)")
        path = os.path.join(work, found.group(2))
        with open(path) as f:
            self.assertEqual(f.read().strip(), found.group(1))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        yield self.stop_with(proto, "TERM")
        self.assertFalse(os.path.exists(path))
        proto = self.spawn_twistd("--no_dbmanhole", HELLO_REL, cwd=work, env={"ION_LOCAL_CONFIG": local})
        yield self.stop_with(proto, "TERM")
        self.assertNotIn("Debug manhole", proto.output())


class HistoryTest(unittest.TestCase):
    def test_keeps_the_last_2500_lines(self):
        path = os.path.abspath(self.mktemp())
        history = History(path)
        for i in range(2600):
            history.append("line %d" % i)
        self.assertEqual(len(history.read()), 2500)
        self.assertEqual(history.read()[0], b"line 100")
        history.trim()
        with open(path) as f:
            self.assertEqual(len(f.read().splitlines()), 2500)


class DebugManholeTest(unittest.TestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.manhole = DebugManhole({"answer": 42}, self.directory)
        self.port = self.manhole.listen()
        self.addCleanup(self.manhole.stop)

    def test_listens_on_loopback_only(self):
        """
        Bound to 127.0.0.1 alone: another local address (127.0.0.2, in the
        loopback range every Linux machine routes to itself) is refused.
        Only loopback addresses are tried: tests send nothing anywhere else.
        """
        self.assertEqual(self.manhole.port.getHost().host, "127.0.0.1")
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.2", self.port)), 0)

    def test_port_file_mode_0600(self):
        with open(self.manhole.path) as f:
            self.assertEqual(int(f.read()), self.port)
        self.assertEqual(stat.S_IMODE(os.stat(self.manhole.path).st_mode), 0o600)
        self.assertEqual(os.path.basename(self.manhole.path), ".ccdebugport-%d" % os.getpid())

    @defer.inlineCallbacks
    def test_evaluates_in_the_namespace_and_removes_the_file(self):
        received = []

        class Client(telnet.Telnet):
            """Agrees to every option: the manhole logs a refused one as an error."""

            def enableLocal(self, option):
                return True

            def enableRemote(self, option):
                return True

            def applicationDataReceived(self, data):
                received.append(data)

        client = yield protocol.ClientCreator(reactor, Client).connectTCP("127.0.0.1", self.port)
        client.transport.write(b"answer + 1\r\n")
        yield wait_for(lambda: b"43" in b"".join(received))
        client.transport.loseConnection()
        yield self.manhole.stop()
        self.assertFalse(os.path.exists(self.manhole.path))

