"""
`IonTestCase`: trial tests that start a real container (R1 §8).

The broker comes from the class attribute `broker_url` when a test sets it
(the project's own tests run each class on both brokers that way), else from
the environment: `ION_TEST_CASE_BROKER_HOST` names a RabbitMQ host; `memory`
or unset means the embedded broker.  `ION_TEST_CASE_SYSNAME` fixes the
sysname; otherwise every container gets its own, so tests never see each
other's queues.
"""

import itertools
import os

from twisted.internet import defer
from twisted.trial import unittest

from ion.core import ioninit
from ion.core.cc.container import create_new_container, forget_container, stop_container
from ion.core.messaging.broker.address import BrokerAddress
from ion.core.process.process import ProcessDesc

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
    """Base class for tests that need a container."""

    timeout = 20
    broker_url = None  # e.g. 'memory' or 'amqp://guest:guest@127.0.0.1:5672/%2F'

    container = None
    test_sup = None

    def broker_address(self):
        if self.broker_url:
            return BrokerAddress.from_url(self.broker_url)
        return broker_address_from_environment()

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
            # An earlier test's cleanup never finished; do not let it fail this one too.
            forget_container(stale)
        container = create_new_container()
        self.container = container
        self.addCleanup(self._cleanup_container, container)
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
        container, self.container = self.container, None
        self.test_sup = None
        if container is not None:
            yield self._cleanup_container(container)

    @defer.inlineCallbacks
    def _cleanup_container(self, container):
        try:
            yield stop_container(container)
        finally:
            ioninit.reset()

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

    def _shutdown_processes(self, proc=None):
        return (proc or self.test_sup).shutdown_children()

    def _get_procid(self, name):
        return self.test_sup.procRegistry.get(name)

    def _get_procinstance(self, pid):
        return self.container.proc_manager.process_registry.get(str(pid))
