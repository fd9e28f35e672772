"""
Services: processes that also consume a shared, system-scoped queue
`<sys_name>.<service>`, so several instances take turns (R1 §4.7).
"""

from twisted.internet import defer

from ion.core import ioninit
from ion.core.messaging.receiver import ServiceWorkerReceiver
from ion.core.process.process import Process, ProcessClient, ProcessClientBase, ProcessFactory  # noqa: F401 (R1 also had the clients here)
from ion.util.state_object import BasicStates


class ServiceProcess(Process):
    """A Process with a service queue; subclasses implement `slc_*` hooks."""

    declare = {}

    @staticmethod
    def service_declare(**kwargs):
        """The `declare` class attribute: name, version, dependencies."""
        return kwargs

    def __init__(self, receiver=None, spawnargs=None, **kwargs):
        super().__init__(receiver=receiver, spawnargs=spawnargs, **kwargs)
        self.svc_name = self.spawn_args.get("servicename") or self.declare.get("name") or type(self).__name__
        self.svc_receiver = ServiceWorkerReceiver(
            self.svc_name,
            scope="system",
            label=self.proc_name,
            process=self,
            handler=self.receive,
            error_handler=self.receive_error,
            clock=self.clock,
        )
        self.receivers[self.svc_receiver.xname] = self.svc_receiver

    @defer.inlineCallbacks
    def plc_init(self):
        yield defer.maybeDeferred(self.slc_init)
        yield self.svc_receiver.initialize()

    @defer.inlineCallbacks
    def plc_activate(self):
        yield defer.maybeDeferred(self.slc_activate)
        yield self.svc_receiver.activate()

    @defer.inlineCallbacks
    def plc_deactivate(self):
        yield self.svc_receiver.deactivate()
        yield defer.maybeDeferred(self.slc_deactivate)

    @defer.inlineCallbacks
    def plc_terminate(self):
        if self.svc_receiver._get_state() == BasicStates.ACTIVE:
            yield self.svc_receiver.deactivate()
        yield defer.maybeDeferred(self.slc_deactivate)
        yield defer.maybeDeferred(self.slc_terminate)

    def slc_init(self):
        pass

    def slc_activate(self):
        pass

    def slc_deactivate(self):
        pass

    def slc_terminate(self):
        pass


class ServiceClient(ProcessClient):
    """A client of a service, by its name."""

    @defer.inlineCallbacks
    def does_service_exist(self, name=None):
        """True when the service's shared queue exists on the broker (a passive declare)."""
        yield self._check_init()
        queue = "%s.%s" % (ioninit.sys_name, name) if name else self.target
        exists = yield self.proc.container.exchange_manager.queue_exists(queue)
        return exists


factory = ProcessFactory(ServiceProcess)
