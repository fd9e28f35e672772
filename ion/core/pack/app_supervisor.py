"""The supervisor process an app runs under; it spawns `spawn-procs` when activated."""

from twisted.internet import defer

from ion.core.process.process import Process, ProcessDesc, ProcessFactory


class AppSupervisor(Process):
    """Spawns the processes listed in its `spawn-procs` spawn arg as its children."""

    @defer.inlineCallbacks
    def plc_activate(self):
        for spec in self.spawn_args.get("spawn-procs", []):
            desc = ProcessDesc(
                name=spec.get("name"),
                module=spec.get("module"),
                procclass=spec.get("class") or spec.get("procclass"),
                spawnargs=spec.get("spawnargs"),
            )
            yield self.spawn_child(desc)


factory = ProcessFactory(AppSupervisor)
