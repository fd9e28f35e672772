"""
R1's application loader API (`ion.core.pack.application`, §12.6) over the
container's AppManager: load an .app file into an AppDefinition, start and
stop one.
"""

from twisted.internet import defer
from twisted.logger import Logger

from ion.core.exception import ConfigurationError
from ion.core.pack.app_manager import AppDefinition, load_app_file

__all__ = ["AppDefinition", "AppLoader"]

log = Logger()


class AppLoader:
    """Class methods only, as in R1."""

    @classmethod
    def load_app_definition(cls, filename):
        """The AppDefinition in `filename`; ConfigurationError naming the file if it is not one."""
        return load_app_file(filename)

    @classmethod
    def start_application(cls, container, appdef, app_manager=None, app_config=None, app_args=None):
        """
        Start `appdef` (even if an app of that name runs already); fires with
        its state and records `appdef._supid` and `appdef._state`.  A failing
        start is a FatalError, a start() result that is not (supid, state) a
        ConfigurationError.
        """
        if not isinstance(appdef, AppDefinition):
            return defer.fail(ConfigurationError("not an application definition: %r" % (appdef,)))
        manager = app_manager or container.app_manager
        return manager.start_app(app_def=appdef, app_config=app_config, app_args=app_args, start_mult=True)

    @classmethod
    @defer.inlineCallbacks
    def stop_application(cls, container, appdef):
        """Stop what start_application started; errors are logged, not raised (R1)."""
        try:
            yield container.app_manager.stop_app(appdef["name"])
        except Exception as e:
            log.error("Application {name} did not stop cleanly: {e!r}", name=appdef.get("name"), e=e)
