"""
What the container shell offers (R1 §7.5, `ion.core.cc.shell_api`): small
functions that look at and poke the running container.  info, ps, ms and
svc print for a person (and return None, so the shell shows nothing more).

Functions that talk to other processes return Deferreds; the shell shows
their result when they fire.  They send from one shell process, `control`,
spawned on first use.
"""

from twisted.internet import defer

from ion.core import ioninit
from ion.core.id import Id
from ion.core.process.process import Process, ProcessDesc
from ion.core.process.procutils import get_scoped_name
from ion.core.process.service_process import ServiceProcess
from ion.util.state_object import BasicStates

# R1's core services, pinged by mping().
MPING_SERVICES = ("datastore", "resource_registry", "association_service", "exchange_management",
                  "pubsub", "ems", "hello")

_control = {}  # the shell's own process, per container


def _container():
    container = ioninit.container_instance
    if container is None:
        raise RuntimeError("no container is running")
    return container


def _registry():
    return _container().proc_manager.process_registry


def info():
    """The container: id, sysname, broker, processes and apps."""
    from ion.core.cc.service import VERSION

    container = _container()
    apps = [name for name, _module, _state in container.app_manager.applications]
    facts = {
        "version": VERSION,
        "container": container.id,
        "sysname": ioninit.sys_name,
        "broker": container.exchange_manager.description if container.exchange_manager else None,
        "processes": len(_registry()),
        "apps": apps,
    }
    for key, value in facts.items():
        print("%-10s %s" % (key + ":", value))


def ps():
    """The local processes: name, id and supervisor."""
    rows = [(p.proc_name, p.id.full, p.proc_supid or "-") for p in _registry().values()]
    print("%-28s %-36s %s" % ("NAME", "ID", "SUPERVISOR"))
    for row in sorted(rows, key=lambda r: r[1]):
        print("%-28s %-36s %s" % row)


def ms(full=False):
    """The messaging names of the local processes: receiver, queue and (full=True) its queue config."""
    rows = []
    for process in _registry().values():
        for name, receiver in sorted(process.receivers.items()):
            rows.append((name, receiver.queue, receiver.full_config() if full else None))
    for name, queue, config in rows:
        print("%-40s queue %s%s" % (name, queue, "  %r" % (config,) if full else ""))


def svc():
    """The services declared in this container: name, version, process id."""
    rows = _services()
    for row in sorted(rows):
        print("%-28s %-10s %s" % row)


@defer.inlineCallbacks
def control_process():
    """The shell's process (spawned once per container): what send, rpc_send and ping send from."""
    container = _container()
    process = _control.get(container.id)
    if process is None or process.state != BasicStates.ACTIVE:
        process = Process(spawnargs={"proc-name": "shell-control"})
        yield process.spawn()
        _control.clear()
        _control[container.id] = process
    return process


def _address(to):
    """An int names a local process (`<container id>.<n>`); anything else is used as it is."""
    if isinstance(to, int) and not isinstance(to, bool):
        return Id(to, _container().id).full
    return str(to)


@defer.inlineCallbacks
def send(to, op, content=None, headers=None):
    """Send one message; fires with the message sent."""
    process = yield control_process()
    message = yield process.send(_address(to), op, content, headers)
    return message


@defer.inlineCallbacks
def rpc_send(to, op, content=None, headers=None, timeout=None):
    """Request and reply; fires with the reply's content (its headers are in `last_reply`)."""
    process = yield control_process()
    content, reply_headers, _msg = yield process.rpc_send(_address(to), op, content, headers, timeout=timeout)
    globals()["last_reply"] = reply_headers
    return content


last_reply = None


def ping(servicename, timeout=None):
    """An RPC `ping` to the service `<sysname>.<servicename>`; fires with its answer."""
    return rpc_send(get_scoped_name(servicename, "system"), "ping", timeout=timeout)


@defer.inlineCallbacks
def mping(timeout=5):
    """Ping R1's core services; fires with {name: 'ok' or the error}."""
    results = {}
    for name in MPING_SERVICES:
        try:
            yield ping(name, timeout=timeout)
            results[name] = "ok"
        except Exception as e:
            results[name] = "%s: %s" % (type(e).__name__, e)
        print("%-24s %s" % (name, results[name]))
    return results


@defer.inlineCallbacks
def spawn(module_or_name, node=None, spawnargs=None):
    """
    Spawn a process: a module (`ion.services.examples.hello_service`, with a
    factory) or `module:Class`; fires with its id.  `node` is R1's and must be
    None: only this container can be spawned into.
    """
    if node is not None:
        raise ValueError("spawn: node=%r: only the local container can be spawned into" % (node,))
    module, _, cls = str(module_or_name).partition(":")
    desc = ProcessDesc(name=module.rpartition(".")[2], module=module, procclass=cls or None, spawnargs=spawnargs or {})
    container = _container()
    process = yield container.spawn_process(desc, container.proc_manager.supervisor)
    return process.id.full


@defer.inlineCallbacks
def makeprocess(name="SimpleProcess"):
    """A new plain process named `name`, spawned; fires with it (use its send and rpc_send)."""
    process = Process(spawnargs={"proc-name": name})
    yield process.spawn()
    return process


def get_proc(full_id):
    """The local process with this id (or local number), or None."""
    return _registry().get(_address(full_id))


@defer.inlineCallbacks
def kill(id):
    """Terminate a local process by id (or local number); fires with True when there was one."""
    process = get_proc(id)
    if process is None:
        print("no process %s" % (_address(id),))
        return False
    yield process.terminate()
    return True


def nodes():
    """The containers this shell knows: only its own (R1 asked a cc agent, which is not kept)."""
    return [_container().id]


def identify():
    """Who this container is: its id and sysname."""
    return {"container": _container().id, "sysname": ioninit.sys_name}


class _LiveView:
    """A shell variable that is computed each time it is shown or used (ids of processes, services)."""

    def __init__(self, compute, doc):
        self._compute = compute
        self.__doc__ = doc

    def __repr__(self):
        return repr(self._compute())

    def __iter__(self):
        return iter(self._compute())

    def __len__(self):
        return len(self._compute())

    def __getitem__(self, key):
        return self._compute()[key]


def namespace(service=None):
    """The shell's globals: these functions and R1's variables (cc is the twistd service)."""
    names = {name: globals()[name] for name in (
        "info", "ps", "ms", "svc", "send", "rpc_send", "ping", "mping", "spawn",
        "makeprocess", "get_proc", "kill", "nodes", "identify", "control_process",
    )}
    container = _container()
    names.update(
        cc=service,
        container=container,
        sup=container.proc_manager.supervisor,
        config=ioninit.config,
        procs=container.proc_manager.process_registry,
        pids=_LiveView(lambda: sorted(_registry()), "ids of the local processes"),
        svcs=_LiveView(lambda: {name: pid for name, _version, pid in _services()}, "local services: name -> process id"),
    )
    return names


def _services():
    services = [p for p in _registry().values() if isinstance(p, ServiceProcess)]
    return sorted((p.svc_name, p.declare.get("version", "-"), p.id.full) for p in services)
