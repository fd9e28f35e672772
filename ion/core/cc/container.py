"""
The capability container: one broker connection, the processes and the apps
of this operating-system process (R1 §7.2).
"""

from twisted.internet import defer
from twisted.logger import Logger

from ion.core import ioninit
from ion.core.id import Id
from ion.core.messaging.broker import connect
from ion.core.messaging.exchange import ExchangeManager
from ion.core.pack.app_manager import AppManager
from ion.core.process.proc_manager import ProcessManager
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.util import ionlog
from ion.util.state_object import BasicLifecycleObject, BasicStates

log = Logger()
CONF = ioninit.config(__name__)


class Container(BasicLifecycleObject):
    """
    initialize(address, args) installs the container args (sysname, contid)
    and its id; activate connects to the broker and starts the ioncore app;
    terminate stops apps (reverse order), processes, then the connection.
    """

    lifecycle_noun = "container"

    def __init__(self):
        super().__init__()
        self.id = None
        self.args = {}
        self.address = None
        self.exchange_manager = None
        self.proc_manager = ProcessManager(self)
        self.app_manager = AppManager(self)
        self.app_manager.app_started_hook = self._publish_app_started

    def on_initialize(self, address, args=None, *a, **kw):
        ioninit.apply_container_args(args or {})
        for key, suggestion in ioninit.unknown_container_args(ioninit.cont_args):
            log.warn(
                "Container arg {key!r} is not known and is ignored{hint} (known: sysname, contid, apparg_<app>)",
                key=key,
                hint=" (did you mean %r?)" % (suggestion,) if suggestion else "",
            )
        self.args = ioninit.cont_args
        self.id = ioninit.container_id()
        Id.default_container_id = self.id
        self.address = address

    @defer.inlineCallbacks
    def on_activate(self, *args, **kwargs):
        connection = yield connect(self.address)
        self.exchange_manager = ExchangeManager(connection)
        log.info(
            "Container {id} (sysname {sysname}) connected to {broker}",
            id=self.id,
            sysname=ioninit.sys_name,
            broker=self.exchange_manager.description,
        )
        yield self.proc_manager.create_supervisor()
        ioncore_app = ioninit.config("ion.core.pack.app_manager").getValue("ioncore_app", "res/apps/ioncore.app")
        yield self.app_manager.start_app(ioncore_app)

    @defer.inlineCallbacks
    def on_terminate(self, *args, **kwargs):
        if self.exchange_manager is not None:
            self.exchange_manager.stopping = True
        yield self.app_manager.stop_all()
        yield self.proc_manager.terminate()
        if self.exchange_manager is not None:
            yield self.exchange_manager.close()

    on_terminate_active = on_terminate

    def _lifecycle_name(self):
        return self.id

    def _publish_app_started(self, app_name):
        return publish_from_temporary_process(
            "AppLoaderPublisherProcess",
            events.AppLoaderEventPublisher,
            origin=app_name,
            app_name=app_name,
            state="STARTED",
        )

    def publish_startup_event(self, scripts):
        """The ContainerStartup event (1076) naming what was started, once startup is done."""
        return publish_from_temporary_process(
            "ContainerStartupPubProcess",
            events.ContainerStartupEventPublisher,
            origin=self.id,
            startup_names=[str(s) for s in scripts],
        )

    def spawn_process(self, desc, parent=None):
        return self.proc_manager.spawn_process(desc, parent)

    # Convenience used by apps, the shell and scripts.
    def start_app(self, app_file=None, **kwargs):
        return self.app_manager.start_app(app_file, **kwargs)

    def start_rel(self, rel_file):
        return self.app_manager.start_rel(rel_file)


def _process_lifecycle_publisher(process):
    return events.ProcessLifecycleEventPublisher(origin=process.id.full, process=process)


# Every process publishes its READY/ACTIVE/TERMINATED/ERROR events (1052).
Process.lifecycle_publisher_factory = _process_lifecycle_publisher


@defer.inlineCallbacks
def publish_from_temporary_process(proc_name, publisher_class, origin, **fields):
    """Publish one event from a short-lived process, as R1 did; `origin` is also the event's field."""
    process = Process(spawnargs={"proc-name": proc_name})
    yield process.initialize()
    yield process.activate()
    try:
        publisher = publisher_class(process=process, origin=origin)
        yield process.register_life_cycle_object(publisher)
        yield publisher.create_and_publish_event(origin=origin, **fields)
    finally:
        yield process.terminate()


def create_new_container():
    """The container of this OS process; a second one while one runs is an error."""
    if ioninit.container_instance is not None:
        raise RuntimeError("a container is already running: %s" % (ioninit.container_instance.id,))
    ionlog.install()  # stdlib logging (user code, R1 ionlog loggers) goes to the container's log
    container = Container()
    ioninit.container_instance = container
    return container


@defer.inlineCallbacks
def stop_container(container):
    """
    Stop `container` however far it got: a running one terminates; one that
    failed on the way up only closes its broker connection.  Either way it is
    forgotten, so a new container can be created.
    """
    try:
        if container.state in (BasicStates.READY, BasicStates.ACTIVE):
            yield container.terminate()
        elif container.exchange_manager is not None:
            yield container.exchange_manager.close()
    finally:
        forget_container(container)


def forget_container(container):
    """Drop the process-wide reference once `container` has stopped."""
    if ioninit.container_instance is container:
        ioninit.container_instance = None
        Id.default_container_id = "/"
