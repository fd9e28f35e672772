"""The container's processes: spawning by module and class, the registry, the root supervisor."""

import importlib

from twisted.internet import defer
from twisted.logger import Logger

from ion.core import ioninit
from ion.core.exception import ConfigurationError
from ion.core.process.process import Process
from ion.util.state_object import BasicStates

log = Logger()


def process_class(module_name, class_name=None):
    """The Process class to spawn: `class_name` in the module, else its `factory`'s class."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigurationError("cannot import process module %r: %s" % (module_name, e)) from e
    if class_name:
        cls = getattr(module, class_name, None)
        if cls is None:
            raise ConfigurationError("module %r has no class %r" % (module_name, class_name))
        return cls
    factory = getattr(module, "factory", None)
    if factory is None:
        raise ConfigurationError("module %r names no class and has no process factory" % (module_name,))
    return factory.process_class


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
    def spawn_process(self, desc, parent=None):
        """Build the process `desc` describes, spawn it, fire with the process."""
        spawnargs = dict(desc.spawnargs)
        spawnargs.setdefault("proc-name", desc.name)
        spawnargs.setdefault("sys-name", ioninit.sys_name)
        if parent is not None:
            spawnargs["sup-id"] = parent.id.full
        cls = process_class(desc.module, desc.procclass)
        if not (isinstance(cls, type) and issubclass(cls, Process)):
            raise ConfigurationError("%s.%s is not a Process class" % (desc.module, desc.procclass))
        process = cls(spawnargs=spawnargs)
        yield process.spawn()
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
        if process._get_state() in (BasicStates.TERMINATED, BasicStates.ERROR):
            return
        try:
            yield process.terminate()
        except Exception:
            log.failure("Process {id} did not terminate cleanly", id=process.id)

