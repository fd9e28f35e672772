"""
`IonTestCase`: trial tests that start a real container (R1 §8).

The broker comes from the class attribute `broker_url` when a test sets it
(the project's own tests run each class on both brokers that way), else from
the environment: `ION_TEST_CASE_BROKER_HOST` names a RabbitMQ host; `memory`
or unset means the embedded broker.  `ION_TEST_CASE_SYSNAME` fixes the
sysname; otherwise every container gets its own, so tests never see each
other's queues.

As in R1 a test stops its container in its own tearDown (`_shutdown_processes`
then `_stop_container`).  A container the test leaves running is stopped
after the test's tearDown, or right after a setUp that failed (trial then
skips tearDown), so one broken test never leaves a container to the next.
"""

import functools
import inspect
import itertools
import os

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import failure
from twisted.trial import unittest

from ion.core import ioninit
from ion.core.cc.container import create_new_container, forget_container, stop_container
from ion.core.messaging.broker.address import BrokerAddress
from ion.core.process.process import Process, ProcessDesc

log = Logger()
CONF = ioninit.config(__name__)
_containers = itertools.count(1)


def broker_address_from_environment():
    """The test broker: ION_TEST_CASE_BROKER_HOST, else the `ion.test.iontest` config."""
    host = os.environ.get("ION_TEST_CASE_BROKER_HOST") or CONF.getValue("broker_host", "memory")
    if host == "memory" or host.startswith(("memory:", "amqp:", "amqps:")):
        return BrokerAddress.from_url(host)
    return BrokerAddress.from_options(
        host=host,
        port=CONF.getValue("broker_port", 5672),
        vhost=CONF.getValue("broker_vhost", "/"),
        heartbeat=CONF.getValue("broker_heartbeat", 0),
    )


class IonTestCase(unittest.TestCase):
    """Base class for tests that need a container; like R1's, it defines no setUp or tearDown."""

    timeout = 20
    broker_url = None  # e.g. 'memory' or 'amqp://guest:guest@127.0.0.1:5672/%2F'

    container = None
    test_sup = None

    @property
    def procRegistry(self):
        """Names -> ids of the processes spawned under the test supervisor (R1 attribute)."""
        return self.test_sup.procRegistry if self.test_sup is not None else {}

    def broker_address(self):
        if self.broker_url:
            return BrokerAddress.from_url(self.broker_url)
        return broker_address_from_environment()

    # --- the safety net -------------------------------------------------
    def run(self, result):
        # Trial runs cleanups *before* tearDown, so the net cannot be a cleanup:
        # it wraps this run's setUp and tearDown instead.
        fixtures = type(self)
        self.setUp = functools.partial(self._guarded, fixtures.setUp.__get__(self), self._stop_after_failure)
        self.tearDown = functools.partial(self._guarded, fixtures.tearDown.__get__(self), self._stop_left_running)
        try:
            return super().run(result)
        finally:
            del self.setUp, self.tearDown

    def _guarded(self, fixture, after):
        if inspect.isgeneratorfunction(fixture):
            return defer.fail(TypeError("%r is a generator function and therefore will never run" % (fixture,)))
        d = defer.maybeDeferred(fixture)
        d.addBoth(after)
        return d

    @defer.inlineCallbacks
    def _stop_after_failure(self, outcome):
        """setUp failed: trial will not run tearDown, so stop what setUp started now."""
        if isinstance(outcome, failure.Failure):
            yield self._stop_container()
        return outcome

    @defer.inlineCallbacks
    def _stop_left_running(self, outcome):
        """After tearDown, whatever it did: stop a container it left running."""
        try:
            yield self._stop_container()
        except Exception:
            if not isinstance(outcome, failure.Failure):
                raise
            log.failure("Stopping the container after a failed tearDown failed too")
        return outcome

    # --- containers -----------------------------------------------------
    @defer.inlineCallbacks
    def _start_container(self, sysname=None, start_apps=None):
        """Start a container (the full startup) and the test supervisor; fires with the container."""
        if self.container is not None:
            yield self._stop_container()
        sysname = sysname or os.environ.get("ION_TEST_CASE_SYSNAME")
        args = {"contid": "%s_t%d" % (ioninit.default_container_id(), next(_containers))}
        if sysname:
            args["sysname"] = sysname
        stale = ioninit.container_instance
        if stale is not None:
            # An earlier test's stop never finished; do not let it fail this one too.
            forget_container(stale)
        container = create_new_container()
        self.container = container
        yield container.initialize(self.broker_address(), args)
        yield container.activate()
        apps = start_apps if start_apps is not None else CONF.getValue("start_app")
        for app in [apps] if isinstance(apps, str) else apps or []:
            yield container.start_app(app if app.endswith(".app") else "res/apps/%s.app" % app)
        yield container.publish_startup_event(apps if isinstance(apps, list) else [apps] if apps else [])
        self.test_sup = container.proc_manager.supervisor
        return container

    @defer.inlineCallbacks
    def _stop_container(self):
        """Stop and forget this test's container; does nothing when there is none (R1: idempotent)."""
        container, self.container = self.container, None
        self.test_sup = None
        if container is not None:
            try:
                yield stop_container(container)
            finally:
                ioninit.reset()

    # --- processes ------------------------------------------------------
    @defer.inlineCallbacks
    def _spawn_processes(self, procs, sup=None):
        """Spawn `procs` (dicts: name, module, class, spawnargs) under `sup`; fires with the supervisor."""
        sup = sup or self.test_sup
        for spec in procs:
            desc = ProcessDesc(
                name=spec.get("name"),
                module=spec.get("module"),
                procclass=spec.get("class"),
                spawnargs=spec.get("spawnargs"),
            )
            yield sup.spawn_child(desc)
        return sup

    def _spawn_process(self, process):
        return process.spawn()

    def _shutdown_processes(self, proc=None):
        """Shut `proc` down, or (by default) every child of the test supervisor."""
        if proc is not None and proc is not self.test_sup:
            return defer.maybeDeferred(proc.shutdown)
        if self.test_sup is None:
            return defer.succeed(None)
        return self.test_sup.shutdown_child_procs()

    def _get_procid(self, name):
        """Deferred firing with the id (a str) of the test supervisor's child `name`, or None (R1)."""
        return defer.succeed(self.procRegistry.get(name))

    def _get_procinstance(self, pid):
        """The process with id `pid` (an Id or its string), or None."""
        if self.container is None:
            return None
        return self.container.proc_manager.process_registry.get(str(pid))

    def _get_service_by_name(self, name):
        """The process instance of the test supervisor's direct child `name`, or None."""
        child_id = self.test_sup.get_child_id(name) if self.test_sup is not None else None
        return self._get_procinstance(child_id) if child_id is not None else None

    def create_message(self, MessageContentTypeID, MessageName="", **kwargs):
        """Deferred firing with a new message instance of that type, fields set from `kwargs`."""

        def fill(message):
            for name, value in kwargs.items():
                setattr(message, name, value)
            return message

        return self.test_sup.message_client.create_instance(MessageContentTypeID, MessageName).addCallback(fill)


class ReceiverProcess(Process):
    """
    A Process that also keeps every message it dispatches in `inbox` (R1's
    never did: its override was dead code); op_* methods run as usual.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inbox = defer.DeferredQueue()
        self.inbox_count = 0

    def _dispatch_message_op(self, payload, msg):
        self.inbox_count += 1
        self.inbox.put(payload)
        return super()._dispatch_message_op(payload, msg)

    def await_message(self):
        """Deferred firing with the next message payload (the oldest one not yet taken)."""
        return self.inbox.get()


class FakeMessage:
    """A stand-in for a received message: just a payload."""

    def __init__(self, payload=None):
        self.payload = payload


class FakeReceiver:
    """A stand-in receiver that records the last thing sent instead of sending it."""

    def __init__(self, id=None):
        self.id = id
        self.sendto = None
        self.sendmsg = None

    def send(self, to, msg):
        self.sendto = to
        self.sendmsg = msg
        return defer.succeed(msg)
