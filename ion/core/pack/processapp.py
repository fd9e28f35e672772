"""
The standard one-process application: `start(container, starttype, app,
proc_name, module, class, **spawnargs)` runs that process under a supervisor
named `app-supervisor-<app name>` (R1 §7.4).
"""

from twisted.internet import defer

from ion.core.exception import ConfigurationError
from ion.core.process.process import ProcessDesc


@defer.inlineCallbacks
def start(container, starttype, app_definition, *process_app, **kwargs):
    if len(process_app) != 3:
        raise ConfigurationError(
            "app %s: processapp needs [proc_name, module, class], not %r" % (app_definition["name"], list(process_app))
        )
    proc_name, module, procclass = process_app
    supervisor = ProcessDesc(
        name="app-supervisor-" + app_definition["name"],
        module="ion.core.pack.app_supervisor",
        procclass="AppSupervisor",
        spawnargs={"spawn-procs": [{"name": proc_name, "module": module, "class": procclass, "spawnargs": kwargs}]},
    )
    root = container.proc_manager.supervisor
    yield root.spawn_child(supervisor)
    return (supervisor.proc_id.full, [supervisor])


def stop(container, state):
    return state[0].terminate()
