"""
Services: processes that also consume a shared, system-scoped queue
`<sys_name>.<service>`, so several instances take turns (R1 §4.7).
"""

from twisted.internet import defer

from ion.core import ioninit
from ion.core.messaging.broker.interface import NotFound
from ion.core.messaging.receiver import ServiceWorkerReceiver
from ion.core.process.process import Process, ProcessFactory
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


class ProcessClientBase:
    """
    Talks to other processes on behalf of `proc`; with no process it makes an
    anonymous one named `<ClassName>_aproc` and spawns it on first use.
    """

    def __init__(self, proc=None, **kwargs):
        if proc is None:
            proc = Process(spawnargs={"proc-name": "%s_aproc" % (type(self).__name__,)})
        self.proc = proc

    @defer.inlineCallbacks
    def _check_init(self):
        if self.proc._get_state() == BasicStates.INIT:
            yield self.proc.spawn()

    attach = _check_init


class ProcessClient(ProcessClientBase):
    """A client of one target: `<sys_name>.<targetname>` unless `target` is given."""

    def __init__(self, proc=None, target=None, targetname=None, **kwargs):
        super().__init__(proc=proc, **kwargs)
        if target is None and targetname is not None:
            target = "%s.%s" % (ioninit.sys_name, targetname)
        self.target = target

    @defer.inlineCallbacks
    def rpc_send(self, operation, content, headers=None, **kwargs):
        yield self._check_init()
        result = yield self.proc.rpc_send(self.target, operation, content, headers, **kwargs)
        return result

    def rpc_send_protected(self, operation, content, user_id="ANONYMOUS", expiry="0", headers=None, **kwargs):
        if not str(expiry).isdigit():
            raise ValueError("expiry must be a string of digits, not %r" % (expiry,))
        headers = dict(headers or {}, **{"user-id": user_id, "expiry": str(expiry)})
        return self.rpc_send(operation, content, headers, **kwargs)

    @defer.inlineCallbacks
    def send(self, operation, content, headers=None, **kwargs):
        yield self._check_init()
        result = yield self.proc.send(self.target, operation, content, headers, **kwargs)
        return result

    def reply(self, msg, operation="result", content=None, headers=None):
        return self.proc.reply(msg, operation, content, headers)


class ServiceClient(ProcessClient):
    """A client of a service, by its name."""

    @defer.inlineCallbacks
    def does_service_exist(self, name=None):
        """True when the service's shared queue exists on the broker (a passive declare)."""
        yield self._check_init()
        queue = "%s.%s" % (ioninit.sys_name, name) if name else self.target
        connection = self.proc.container.exchange_manager.connection
        try:
            yield connection.queue_declare(queue, passive=True)
        except NotFound:
            return False
        return True


factory = ProcessFactory(ServiceProcess)
