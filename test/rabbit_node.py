"""
A private RabbitMQ node for tests that restart the broker.

Restarting the shared RabbitMQ on 127.0.0.1:5672 would disturb every other
test using it, so these tests start a node of their own beside it: same
RabbitMQ installation, its own name, ports, data directory and config (see
shared/reference/machine-notes.md), listening on 127.0.0.1 only.  `stop()`
always takes it down and removes its directory; it is meant for addCleanup.
"""

import os
import shutil
import signal
import socket
import tempfile

from twisted.internet import defer, reactor, task
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
COOKIE = "/var/lib/rabbitmq/.erlang.cookie"
START_TIMEOUT = 90


# Seconds after which a node whose VM is not running has exited rather than not written its pid file yet.
EXIT_GRACE = 20


class _NodeExited(AssertionError):
    """The node's Erlang VM is gone before the node started."""


def available():
    """Why a private node cannot be started here, or None if it can."""
    if not os.path.exists(RABBITMQ_SERVER) or not shutil.which("rabbitmqctl"):
        return "RabbitMQ is not installed"
    if not os.access(COOKIE, os.R_OK):
        return "cannot read the Erlang cookie %s" % COOKIE
    return None


@defer.inlineCallbacks
def start_for(testcase):
    """
    A running private node for `testcase` (skipped where none can start),
    stopped by a cleanup registered now: it runs after the test's later
    cleanups, so containers using the node stop before it does.
    """
    why = available()
    if why:
        raise unittest.SkipTest(why)
    node = RabbitNode()
    testcase.addCleanup(node.stop)
    yield node.start()
    return node


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RabbitNode:
    """
    One RabbitMQ node in a temporary directory; `url` once `start()` has
    fired.  `name` may hold '%d' for the node's port (a cluster names its nodes).
    """

    def __init__(self, name="iontest%d@localhost"):
        self.port = _free_port()
        self.name = name % self.port if "%d" in name else name
        self.directory = tempfile.mkdtemp(prefix="rabbit-node-")
        cookie = os.path.join(self.directory, ".erlang.cookie")
        shutil.copyfile(COOKIE, cookie)
        os.chmod(cookie, 0o400)
        self._env = self._environment()

    @property
    def url(self):
        return "amqp://guest:guest@127.0.0.1:%d/%%2F" % self.port

    def _environment(self):
        d = self.directory
        with open(os.path.join(d, "rabbit.conf"), "w") as f:
            # guest may log in over 127.0.0.1 only, as on the system node.
            f.write("listeners.tcp.local = 127.0.0.1:%d\n" % self.port)
        with open(os.path.join(d, "plugins"), "w") as f:
            f.write("[].\n")
        open(os.path.join(d, "env"), "w").close()
        return dict(
            os.environ,
            HOME=d,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(_free_port()),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_CONFIG_FILE=os.path.join(d, "rabbit"),
            RABBITMQ_CONF_ENV_FILE=os.path.join(d, "env"),
            RABBITMQ_MNESIA_BASE=os.path.join(d, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(d, "log"),
            RABBITMQ_PID_FILE=os.path.join(d, "pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(d, "plugins"),
        )

    @defer.inlineCallbacks
    def rabbitmqctl(self, *args):
        """(exit code, output) of `rabbitmqctl -n <this node> args...`."""
        out, err, code = yield getProcessOutputAndValue(
            shutil.which("rabbitmqctl"), ("-n", self.name) + args, env=self._env
        )
        return code, (out + err).decode("utf-8", "replace").strip()

    @defer.inlineCallbacks
    def start(self, attempts=3):
        """
        Start the node.  Its ports are chosen free, but a busy machine can
        take one before the node binds it (outgoing connections draw from the
        same range), and the node's VM then exits at boot: that attempt is
        made again on new ports, the name kept.
        """
        for attempt in range(1, attempts + 1):
            yield getProcessOutputAndValue(RABBITMQ_SERVER, ("-detached",), env=self._env)
            try:
                yield self.wait_running()
                return
            except _NodeExited:
                if attempt == attempts:
                    raise
                self.port = _free_port()
                self._env = self._environment()

    @defer.inlineCallbacks
    def wait_running(self, timeout=START_TIMEOUT):
        """Until the node's app runs and takes AMQP connections."""
        started = reactor.seconds()
        while True:
            code, text = yield self.rabbitmqctl("--timeout", "10", "await_startup")
            if code == 0 and self._accepts():
                return
            waited = reactor.seconds() - started
            if waited > EXIT_GRACE and not self._vm_alive():
                raise _NodeExited("RabbitMQ node %s exited while starting: %s\n%s"
                                  % (self.name, text, self._log_tail()))
            if waited > timeout:
                raise AssertionError("RabbitMQ node %s did not start: %s\n%s" % (self.name, text, self._log_tail()))
            yield task.deferLater(reactor, 0.5, lambda: None)

    def _vm_alive(self):
        try:
            with open(os.path.join(self.directory, "pid")) as f:
                os.kill(int(f.read().strip()), 0)
        except (OSError, ValueError):
            return False
        return True

    def _log_tail(self, lines=15):
        path = os.path.join(self.directory, "log", self.name + ".log")
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log at %s)" % path

    def _accepts(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        except OSError:
            return False
        return True

    @defer.inlineCallbacks
    def stop_app(self):
        code, text = yield self.rabbitmqctl("stop_app")
        if code:
            raise AssertionError("rabbitmqctl stop_app on %s failed: %s" % (self.name, text))

    @defer.inlineCallbacks
    def start_app(self):
        code, text = yield self.rabbitmqctl("start_app")
        if code:
            raise AssertionError("rabbitmqctl start_app on %s failed: %s" % (self.name, text))
        yield self.wait_running()

    @defer.inlineCallbacks
    def consumers(self, queue):
        """How many consumers `queue` has now (0 if it does not exist)."""
        code, text = yield self.rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", "consumers")
        for line in text.splitlines() if code == 0 else ():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        return 0

    @defer.inlineCallbacks
    def stop(self):
        """Stop the node, however far it got, and remove its directory."""
        try:
            code, _ = yield self.rabbitmqctl("stop")
            if code:
                self._kill()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _kill(self):
        try:
            with open(os.path.join(self.directory, "pid")) as f:
                os.kill(int(f.read().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
