"""Container-wide setup helpers used by the ioncore app and the test harness."""

from ion.core import ioninit


def init_ioncore():
    """Apply the current container args again (after a sysname was added to them)."""
    ioninit.apply_container_args(dict(ioninit.cont_args))


def create_supervisor():
    """The running container's root supervisor process ('bootstrap')."""
    return ioninit.container_instance.proc_manager.supervisor
