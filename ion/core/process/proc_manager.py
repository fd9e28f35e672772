"""The container's processes: spawning by module and class, the registry, the root supervisor."""

import importlib

from twisted.internet import defer
from twisted.logger import Logger

from ion.core import ioninit
from ion.core.process.process import Process, ProcessFactory

log = Logger()


def build_process(module_name, class_name, spawnargs):
    """
    A new process of `class_name` from `module_name`: built by the module's
    `factory` when that builds this class (or no class is named), else by the
    named class itself.  A module that does not exist raises ImportError (as
    R1); a class that is missing or not a Process raises RuntimeError.
    """
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError("cannot import process module %r: %s" % (module_name, e), name=module_name) from e
    factory = getattr(module, "factory", None)
    if isinstance(factory, ProcessFactory) and class_name in (None, "", factory.process_class.__name__):
        return factory.build(spawnargs)
    if not class_name:
        raise RuntimeError("module %r names no class and has no process factory" % (module_name,))
    cls = getattr(module, class_name, None)
    if cls is None:
        raise RuntimeError("module %r has no class %r" % (module_name, class_name))
    if not (isinstance(cls, type) and issubclass(cls, Process)):
        raise RuntimeError("%s.%s is not a Process class" % (module_name, class_name))
    spawnargs.setdefault("proc-group", class_name)
    return cls(spawnargs=spawnargs)


class ProcessManager:
    """Spawns processes for the container and keeps `process_registry` (id -> process)."""

    def __init__(self, container):
        self.container = container
        self.process_registry = {}
        self.supervisor = None

    def register_process(self, process):
        self.process_registry[process.id.full] = process

    def unregister_process(self, process):
        self.process_registry.pop(process.id.full, None)

    @defer.inlineCallbacks
    def spawn_process(self, desc, parent=None, activate=True):
        """
        Build the process `desc` describes and initialize it (and activate it,
        unless activate=False); fires with the process.  The desc's spawn_args
        are filled in with what the process got.
        """
        spawnargs = desc.spawn_args
        spawnargs.setdefault("proc-name", desc.proc_name)
        spawnargs.setdefault("sys-name", ioninit.sys_name)
        if parent is not None:
            spawnargs["sup-id"] = parent.id.full
        process = build_process(desc.proc_module, desc.proc_class, spawnargs)
        yield process.initialize()
        if activate:
            yield process.activate()
        return process

    @defer.inlineCallbacks
    def create_supervisor(self):
        """The root process 'bootstrap' that app and test processes hang off."""
        supervisor = Process(spawnargs={"proc-name": "bootstrap"})
        yield supervisor.spawn()
        self.supervisor = supervisor
        return supervisor

    @defer.inlineCallbacks
    def terminate(self):
        """Shut every process down: the supervisors' children first, then the rest."""
        if self.supervisor is not None:
            yield self._terminate(self.supervisor)
            self.supervisor = None
        for process in list(self.process_registry.values()):
            yield self._terminate(process)
        self.process_registry.clear()

    @defer.inlineCallbacks
    def _terminate(self, process):
        try:
            yield process.terminate_unless_over()
        except Exception:
            log.failure("Process {id} did not terminate cleanly", id=process.id)

