"""
Processes: the units that live in a container and talk by messages (R1 §4).

A Process owns two exclusive queues: its main queue `<container>.<n>` for
requests and its backend queue `<container>.<n>b` for the replies to its own
requests, so an RPC made while handling a message never waits behind that
message (prefetch is 1).  Operations are methods named `op_<name>`; RPCs are
conversations with ids `<process id>#<n>`, kept by the process's
`rpc` (ion.core.process.rpc.PendingCalls) on the process's `clock`.
"""

import itertools

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ion.core import ioninit, metrics
from ion.core.exception import ApplicationError, ProcessError, UsageError
from ion.core.id import Id
from ion.core.messaging.broker.interface import ConnectionLost
from ion.core.messaging.message_client import MessageClient, MessageInstance
from ion.core.messaging.messaging import Message
from ion.core.messaging.receiver import ProcessReceiver
from ion.core.process.procutils import get_scoped_name
from ion.core.process.rpc import PendingCalls
from ion.util.state_object import BasicLifecycleObject, BasicStates

log = Logger()
CONF = ioninit.config(__name__)

# Response codes of IonMsg (net.ooici.core.message.ResponseCodes) used here.
OK = 200
BAD_REQUEST = 400
UNAUTHORIZED = 401
INTERNAL_SERVER_ERROR = 500

_process_counter = itertools.count(1)

# Registered process classes by declared name (filled by ProcessFactory).
processes = {}


def create_process_id():
    """`<container id>.<n>` with a module-wide counter (TEST-CONTAINER-ID without a container)."""
    container = ioninit.container_instance
    container_id = container.id if container is not None else "TEST-CONTAINER-ID"
    return Id(next(_process_counter), container_id)


class Context:
    """The security context carried from request to request."""

    def __init__(self):
        self.user_id = "ANONYMOUS"
        self.expiry = "0"


class Process(BasicLifecycleObject):
    """The base process.  Subclasses implement `plc_*` hooks and `op_*` operations."""

    # Header names, status values and response codes under their R1 names.
    MSG_STATUS = "status"
    MSG_RESULT = "result"
    MSG_RESPONSE = "response"
    MSG_EXCEPTION = "exception"
    ION_OK = "OK"
    ION_ERROR = "ERROR"
    BAD_REQUEST = BAD_REQUEST
    UNAUTHORIZED = UNAUTHORIZED

    # Set by the container to a callable(process) returning the lifecycle
    # event publisher each process owns (§4.3); None publishes nothing.
    lifecycle_publisher_factory = None
    lifecycle_noun = "process"

    def __init__(self, receiver=None, spawnargs=None, clock=None, **kwargs):
        """`clock` (an IReactorTime, the reactor by default) times RPCs and the receivers' log limits."""
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.spawn_args = dict(spawnargs or {})
        self.proc_init_time = int(clock.seconds() * 1000)
        proc_id = self.spawn_args.get("proc-id")
        self.id = Id.parse(proc_id) if isinstance(proc_id, str) else (proc_id or create_process_id())
        self.proc_name = self.spawn_args.get("proc-name", __name__)
        self.sys_name = self.spawn_args.get("sys-name") or ioninit.sys_name or Id.default_container_id
        self.proc_supid = self.spawn_args.get("sup-id")
        self.proc_group = self.spawn_args.get("proc-group", self.proc_name)
        self.container = ioninit.container_instance

        self.receiver = ProcessReceiver(
            self.id.full,
            label=self.proc_name,
            process=self,
            handler=self.receive,
            error_handler=self.receive_error,
            clock=clock,
        )
        self.backend_id = Id(self.id.local + "b", self.id.container)
        self.backend_receiver = ProcessReceiver(
            self.backend_id.full,
            label=self.proc_name,
            process=self,
            handler=self.receive,
            error_handler=self.receive_error,
            clock=clock,
        )
        self.receivers = {r.xname: r for r in (self.receiver, self.backend_receiver)}
        self.child_procs = []
        self.procRegistry = {}
        self.context = Context()
        self.message_client = MessageClient(proc=self)
        self.op_cbs_before = []
        self.op_cbs_after = []
        self._registered_life_cycle_objects = []
        self.rpc = PendingCalls(self.id.full, clock)
        self._spawned = False

        self._plcc_pub = None
        if Process.lifecycle_publisher_factory is not None:
            self._plcc_pub = Process.lifecycle_publisher_factory(self)
            self.add_life_cycle_object(self._plcc_pub)

    def __repr__(self):
        return "<%s %s %s>" % (type(self).__name__, self.proc_name, self.id)

    # --- spawning and lifecycle ------------------------------------------
    @defer.inlineCallbacks
    def spawn(self):
        """initialize + activate, then register with the container; fires with the id."""
        if self._spawned:
            raise ProcessError("Process already initialized")
        yield self.initialize()
        yield self.activate()
        return self.id

    def is_spawned(self):
        return self.receiver.consumer is not None

    @defer.inlineCallbacks
    def on_initialize(self, *args, **kwargs):
        self._spawned = True
        yield self.receiver.initialize()
        yield self.backend_receiver.attach()
        yield self._advance_life_cycle_objects(BasicStates.READY)
        yield defer.maybeDeferred(self.plc_init)
        yield self._advance_life_cycle_objects(BasicStates.READY)
        if self.container is not None:
            self.container.proc_manager.register_process(self)
        yield self._publish_lifecycle_event("READY")

    @defer.inlineCallbacks
    def on_activate(self, *args, **kwargs):
        yield self.receiver.activate()
        yield self._advance_life_cycle_objects(BasicStates.ACTIVE)
        yield defer.maybeDeferred(self.plc_activate)
        yield self._advance_life_cycle_objects(BasicStates.ACTIVE)
        yield self._publish_lifecycle_event("ACTIVE")

    @defer.inlineCallbacks
    def on_deactivate(self, *args, **kwargs):
        yield self.receiver.deactivate()
        yield defer.maybeDeferred(self.plc_deactivate)

    @defer.inlineCallbacks
    def on_terminate_active(self, msg=None, *args, **kwargs):
        # Finish the messages in progress, except the terminate request itself.
        yield self.receiver.deactivate(exclude=msg)
        yield self.on_terminate(msg)

    @defer.inlineCallbacks
    def on_terminate(self, msg=None, *args, **kwargs):
        yield self._publish_lifecycle_event("TERMINATED")
        yield self._advance_life_cycle_objects(BasicStates.TERMINATED)
        yield self.shutdown_child_procs()
        yield defer.maybeDeferred(self.plc_terminate)
        yield self._close_receivers(exclude=msg)
        self.rpc.fail_all("process %s terminated" % (self.id,))
        if self.container is not None:
            self.container.proc_manager.unregister_process(self)

    @defer.inlineCallbacks
    def on_error(self, cause=None, *args, **kwargs):
        yield self._publish_lifecycle_event("ERROR")
        try:
            yield self._advance_life_cycle_objects(BasicStates.TERMINATED)
        except Exception:
            log.failure("Process {id}: could not terminate its lifecycle objects", id=self.id)
        super().on_error(cause)

    def _lifecycle_name(self):
        return "%s %s" % (self.proc_name, self.id)

    shutdown = BasicLifecycleObject.terminate

    @defer.inlineCallbacks
    def _close_receivers(self, exclude=None):
        for receiver in list(self.receivers.values()):
            yield receiver.terminate_unless_over(exclude=exclude)

    def _publish_lifecycle_event(self, state):
        if self._plcc_pub is None:
            return defer.succeed(None)
        return self._plcc_pub.create_and_publish_event(state=state).addErrback(self._lifecycle_event_lost, state)

    def _lifecycle_event_lost(self, failure, state):
        if failure.check(ConnectionLost):
            log.warn("Process {id}: lifecycle event {state} not published: {e}", id=self.id, state=state, e=failure.value)
        else:
            log.failure("Process {id}: lifecycle event {state} not published", failure, id=self.id, state=state)

    # Hooks for subclasses.
    def plc_init(self):
        pass

    def plc_activate(self):
        pass

    def plc_deactivate(self):
        pass

    def plc_terminate(self):
        pass

    # --- objects that follow the process (§3.4) ----------------------------
    def add_life_cycle_object(self, lco):
        if not isinstance(lco, BasicLifecycleObject):
            raise ProcessError("%r is not a lifecycle object" % (lco,))
        if self._get_state() != BasicStates.INIT:
            raise ProcessError("add_life_cycle_object needs a process in INIT, not %s" % (self._get_state(),))
        self._registered_life_cycle_objects.append(lco)

    def register_life_cycle_object(self, lco):
        """Add `lco` and bring it to the process's state; fires when it is there."""
        if not isinstance(lco, BasicLifecycleObject):
            return defer.fail(ProcessError("%r is not a lifecycle object" % (lco,)))
        state = self._get_state()
        if state == BasicStates.ERROR:
            return defer.fail(ProcessError("process %s is in ERROR" % (self.id,)))
        self._registered_life_cycle_objects.append(lco)
        return _advance(lco, state)

    def remove_life_cycle_object(self, lco):
        """Stop following `lco` (one this process is done with, e.g. a terminated subscriber)."""
        if lco in self._registered_life_cycle_objects:
            self._registered_life_cycle_objects.remove(lco)

    def _advance_life_cycle_objects(self, target):
        calls = [_advance(lco, target) for lco in self._registered_life_cycle_objects]
        return defer.DeferredList(calls, consumeErrors=True)

    # --- children --------------------------------------------------------
    @defer.inlineCallbacks
    def spawn_child(self, desc, activate=True):
        """
        Spawn a child from a ProcessDesc (READY only, with activate=False);
        fires with its Id.  The desc is listed first, so a failed child stays
        in `child_procs`, as in R1.
        """
        self.child_procs.append(desc)
        child_id = yield desc.spawn(self, activate=activate)
        self.procRegistry[desc.proc_name] = str(child_id)
        return child_id

    def get_child_def(self, name):
        """The first direct child's ProcessDesc named `name`, or None."""
        return next((desc for desc in self.child_procs if desc.proc_name == name), None)

    def get_child_id(self, name):
        """The Id of the direct child named `name`, or None."""
        desc = self.get_child_def(name)
        return desc.proc_id if desc is not None else None

    @defer.inlineCallbacks
    def shutdown_child_procs(self):
        """Shut the children down, newest first; one that fails is logged and the rest go on."""
        children, self.child_procs = self.child_procs, []
        for desc in reversed(children):
            try:
                yield desc.terminate_unless_over()
            except Exception as e:
                log.error("Process {id}: child {child} did not shut down: {e!r}", id=self.id, child=desc.proc_name, e=e)

    shutdown_children = shutdown_child_procs

    # --- receiving (§4.4) ------------------------------------------------
    @defer.inlineCallbacks
    def receive(self, payload, msg):
        """Handler of the process's receivers: replies settle RPCs, requests dispatch ops."""
        try:
            self._take_context(payload)
            if self.rpc.settle(payload, msg):
                return
            if (yield self._check_state(payload, msg)):
                yield self._dispatch_message_op(payload, msg)
        except Exception as e:
            yield self._answer_failure(payload, msg, e)
        finally:
            if msg.state == Message.RECEIVED:
                msg.ack()

    def _take_context(self, payload):
        if "user-id" in payload:
            self.context.user_id = payload["user-id"]
        if "expiry" in payload:
            self.context.expiry = payload["expiry"]

    @defer.inlineCallbacks
    def _check_state(self, payload, msg):
        """True when the op may be dispatched in the current state."""
        state = self._get_state()
        op = payload.get("op")
        if state == BasicStates.ACTIVE:
            return True
        if state == BasicStates.TERMINATED:
            if op == "terminate":
                yield self.reply_ok(msg)
                return False
            raise ProcessError("Process %s is TERMINATED, cannot do op=%s" % (self.id, op))
        if state == BasicStates.ERROR:
            raise ProcessError("Process %s is in ERROR" % (self.id,))
        if op == "terminate":
            return True
        if payload.get("performative", "request") == "request":
            raise ProcessError("Process in invalid state %s for op=%s" % (state, op))
        return True

    @defer.inlineCallbacks
    def _dispatch_message_op(self, payload, msg):
        op = payload.get("op")
        if op is None:
            log.error("Process {id}: message without op from {sender}", id=self.id, sender=payload.get("sender"))
            return
        method = getattr(self, "op_" + str(op), None) or self.op_none
        content = payload.get("content")
        for cb in self.op_cbs_before:
            yield defer.maybeDeferred(cb, content, payload, msg)
        yield defer.maybeDeferred(method, content, payload, msg)
        for cb in self.op_cbs_after:
            yield defer.maybeDeferred(cb, content, payload, msg)

    @defer.inlineCallbacks
    def _answer_failure(self, payload, msg, error):
        """
        An op raised.  A request is answered with an error reply: that is the
        error handled, so it is logged (an ApplicationError at info, anything
        else at error with its traceback) but not as a failure.  With nobody
        to answer, nobody handles it: that is logged as a failure.
        """
        op = payload.get("op")
        answerable = payload.get("reply-to") and payload.get("performative") == "request"
        if not (answerable and msg.state == Message.RECEIVED):
            log.failure("Process {id}: op={op} failed and there is nobody to answer", id=self.id, op=op)
            return
        if isinstance(error, ApplicationError):
            log.info("Process {id}: op={op} answered with an error: {e}", id=self.id, op=op, e=error)
        else:
            log.error(
                "Process {id}: op={op} failed; answered with an error reply:\n{traceback}",
                id=self.id,
                op=op,
                traceback=Failure(error).getTraceback(),
            )
        try:
            yield self.reply_err(msg, exception=error)
        except Exception:
            log.failure("Process {id}: could not send the error reply", id=self.id)

    def receive_error(self, payload, msg, reason=None):
        """
        A message the receiver could not decode.  The receiver has already
        warned (rate-limited) and rejects it; there are no readable headers to
        answer, so nothing more is done.
        """
        log.debug("Process {id}: refused a message: {reason}", id=self.id, reason=reason)

    # --- built-in operations -------------------------------------------
    @defer.inlineCallbacks
    def op_activate(self, content, headers, msg):
        yield self.activate()
        yield self.reply_ok(msg)

    @defer.inlineCallbacks
    def op_terminate(self, content, headers, msg):
        yield self.terminate(msg=msg)
        yield self.reply_ok(msg)

    def op_ping(self, content, headers, msg):
        return self.reply_ok(msg, {"pong": "pong"}, headers={"quiet": True})

    def op_sys_procexit(self, content, headers, msg):
        pass

    def op_none(self, content, headers, msg):
        log.info("Process {id} does not define op={op}", id=self.id, op=headers.get("op"))
        raise ApplicationError("Process %s does not define op=%s" % (self.id, headers.get("op")), BAD_REQUEST)

    # --- sending (§4.5) --------------------------------------------------
    def get_scoped_name(self, scope, name):
        """R1's argument order: (scope, name) -> the scoped messaging name."""
        return get_scoped_name(name, scope)

    def new_conversation_id(self):
        return self.rpc.new_conversation_id()

    @defer.inlineCallbacks
    def send(self, recv, operation, content, headers=None, send_receiver=None, conv=None, quiet=False, mandatory=None):
        """Send one message; fires with the message dict that went out (mandatory: see Receiver.send)."""
        message_headers = {"sender-name": self.proc_name}
        if conv is not None:
            message_headers["conv-id"] = getattr(conv, "conv_id", conv)
        else:
            message_headers["conv-id"] = self.new_conversation_id()
            message_headers["protocol"] = "none"
        message_headers["user-id"] = self.context.user_id
        message_headers["expiry"] = self.context.expiry
        if quiet:
            message_headers["quiet"] = True
        message_headers.update(headers or {})
        if content is None:
            content = yield self.message_client.create_instance(None)
        if isinstance(content, MessageInstance) and not content.Message.IsFieldSet("response_code"):
            content.MessageResponseCode = OK
        receiver = send_receiver or self.backend_receiver
        message = yield receiver.send(recv, operation, content, message_headers, sender=receiver.xname, mandatory=mandatory)
        return message

    def rpc_send(self, recv, operation, content, headers=None, timeout=None, **kwargs):
        """
        Request/response; fires with (content, headers, msg), fails on error
        reply or timeout (`rpc_timeout` in ion.config, 15 s; 0: none).  The
        request is mandatory: one no queue takes comes back from the broker
        and fails at once with NoSuchService.
        """

        def send_request(conv_id):
            rpc_headers = {"protocol": "rpc", "performative": "request", "reply-to": self.backend_id.full}
            rpc_headers.update(headers or {})
            return self.send(recv, operation, content, rpc_headers, conv=conv_id, mandatory=True)

        timeout = timeout if timeout is not None else CONF.getValue("rpc_timeout", 15)
        returns = self.container.exchange_manager if self.container is not None else None
        return metrics.observe_rpc(self.rpc.call(recv, operation, send_request, timeout, returns=returns), self.clock)

    def reply(self, msg, operation="result", content=None, headers=None, performative="inform_result", quiet=False):
        """Answer the request `msg` on its reply-to, through the main receiver."""
        request = msg.payload
        reply_headers = {
            "protocol": request.get("protocol", ""),
            "performative": performative,
            "conv-seq": int(request.get("conv-seq", 1)) + 1,
        }
        reply_headers.update(headers or {})
        return self.send(
            request.get("reply-to"),
            operation,
            content,
            reply_headers,
            send_receiver=self.receiver,
            conv=request.get("conv-id", ""),
            quiet=quiet,
        )

    def reply_ok(self, msg, content=None, headers=None):
        return self.reply(msg, content=content, headers=headers, quiet=content is None)

    def reply_agree(self, msg, content=None, headers=None):
        """Tell the requester the request is accepted; the result follows later."""
        return self.reply(msg, operation="agree", content=content, headers=headers, performative="agree")

    def reply_refuse(self, msg, content=None, headers=None):
        """Tell the requester the request is refused."""
        return self.reply(msg, operation="refuse", content=content, headers=headers, performative="refuse")

    @defer.inlineCallbacks
    def reply_err(self, msg, content=None, headers=None, exception=None, response_code=None):
        """Error reply: status ERROR, with the response code and reason in the IonMsg."""
        if content is None:
            content = yield self.message_client.create_instance(None)
        if isinstance(content, MessageInstance):
            code = response_code or getattr(exception, "response_code", None) or INTERNAL_SERVER_ERROR
            content.MessageResponseCode = code
            content.MessageResponseBody = str(exception) if exception is not None else ""
        reply_headers = {"status": "ERROR"}
        reply_headers.update(headers or {})
        result = yield self.reply(msg, content=content, headers=reply_headers, performative="failure")
        return result


def _advance(lco, target):
    """Feed `lco` the inputs that take it to `target` (INIT -> READY -> ACTIVE -> TERMINATED)."""
    order = [BasicStates.INIT, BasicStates.READY, BasicStates.ACTIVE, BasicStates.TERMINATED]
    inputs = {BasicStates.READY: "initialize", BasicStates.ACTIVE: "activate", BasicStates.TERMINATED: "terminate"}

    @defer.inlineCallbacks
    def run():
        state = lco._get_state()
        if state not in order or target not in order:
            log.warn("Cannot move {lco} from {state} to {target}", lco=lco, state=state, target=target)
            return
        for step in order[order.index(state) + 1 : order.index(target) + 1]:
            if step == BasicStates.TERMINATED:
                yield lco.terminate_unless_over()  # something else may be stopping it already
                return
            yield getattr(lco, inputs[step])()

    d = run()
    d.addErrback(lambda f: log.failure("Lifecycle object {lco} did not reach {target}", f, lco=lco, target=target))
    return d


class ProcessFactory:
    """Records a process class so the container can spawn it by module (R1 `factory`)."""

    def __init__(self, pcls, name=None, args=None):
        if not (isinstance(pcls, type) and issubclass(pcls, Process)):
            raise RuntimeError("ProcessFactory needs a Process class, not %r" % (pcls,))
        self.process_class = pcls
        self.name = name or pcls.__name__
        self.args = args or {}
        known = processes.get(self.name)
        if known is not None and known["class"] is not pcls:
            log.warn("Process name {name} now means {new!r}, not {old!r}", name=self.name, new=pcls, old=known["class"])
        processes[self.name] = {"name": self.name, "class": pcls, "args": self.args}

    def build(self, spawnargs=None, container=None):
        """A new instance; `spawnargs` (filled in with the factory's args and proc-group) is its spawn args."""
        spawnargs = spawnargs if spawnargs is not None else {}
        for key, value in self.args.items():
            spawnargs.setdefault(key, value)
        spawnargs["proc-group"] = self.name
        return self.process_class(spawnargs=spawnargs)


class ProcessDesc(BasicLifecycleObject):
    """
    Describes a process to spawn: name, module, class and spawn args (R1
    §4.8).  spawn() makes the process and brings desc and process to ACTIVE
    (READY with activate=False; a later activate() activates the process).
    """

    lifecycle_noun = "ProcessDesc"

    def __init__(self, name=None, module=None, procclass=None, node=None, spawnargs=None, **kwargs):
        super().__init__()
        if node is not None:
            raise RuntimeError("remote nodes are not supported (node=%r)" % (node,))
        self.proc_name = name
        self.proc_module = module
        self.proc_class = procclass or kwargs.get("class")
        self.spawn_args = dict(spawnargs or {})
        self.proc_id = None
        self.process = None

    # The names this project used before taking R1's.
    name = property(lambda self: self.proc_name)
    module = property(lambda self: self.proc_module)
    procclass = property(lambda self: self.proc_class)
    spawnargs = property(lambda self: self.spawn_args)

    @defer.inlineCallbacks
    def spawn(self, parent=None, container=None, activate=True):
        """Fires with the new process's Id; without a parent the root supervisor is its parent."""
        container = container or ioninit.container_instance
        if container is None:
            raise ProcessError("cannot spawn %s: no container" % (self.proc_name,))
        yield self.initialize(parent or container.proc_manager.supervisor, container)
        if activate:
            yield self.activate()
        return self.proc_id

    @defer.inlineCallbacks
    def on_initialize(self, parent=None, container=None, *args, **kwargs):
        container = container or ioninit.container_instance
        self.process = yield container.proc_manager.spawn_process(self, parent, activate=False)
        self.proc_id = self.process.id

    def on_activate(self, *args, **kwargs):
        if self.process._get_state() == BasicStates.READY:
            return self.process.activate()

    def on_deactivate(self, *args, **kwargs):
        if self.process._get_state() == BasicStates.ACTIVE:
            return self.process.deactivate()

    def on_terminate(self, *args, **kwargs):
        if self.process is not None:
            return self.process.terminate_unless_over()

    on_terminate_active = on_terminate

    def _lifecycle_name(self):
        return self.proc_name


class ProcessClientBase:
    """
    Talks to other processes on behalf of `proc`; with no process it makes an
    anonymous one named `<ClassName>_aproc`, spawned by _check_init (or attach).
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
        """rpc_send with the security headers; `expiry` must be a string of digits (AssertionError otherwise)."""
        if not (isinstance(expiry, str) and expiry.isdigit()):
            raise UsageError("expiry must be a string of digits, not %r" % (expiry,))
        headers = dict(headers or {}, **{"user-id": user_id, "expiry": expiry})
        return self.rpc_send(operation, content, headers, **kwargs)

    @defer.inlineCallbacks
    def send(self, operation, content, headers=None, **kwargs):
        yield self._check_init()
        result = yield self.proc.send(self.target, operation, content, headers, **kwargs)
        return result

    def reply(self, msg, operation="result", content=None, headers=None):
        return self.proc.reply(msg, operation, content, headers)


# Processes defined in this module can be spawned by module name.
factory = ProcessFactory(Process)
