"""
Applications (`.app`) and releases (`.rel`): Python dict literals that say
what to start in a container (R1 §7.4).  They are read with
`ast.literal_eval`, never `eval`, and checked before anything starts.
"""

import ast
import importlib
import os

from twisted.internet import defer
from twisted.logger import Logger

from ion.core import ioninit
from ion.core.exception import ConfigurationError, FatalError, StartupError
from ion.core.resources import resource_path

log = Logger()
CONF = ioninit.config(__name__)


class Definition(dict):
    """A loaded .app or .rel dict whose keys also read as attributes (R1's `appdef.name`)."""

    defaults = {}

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            if name in self.defaults:
                return self.defaults[name]
            raise AttributeError(name) from None


class AppDefinition(Definition):
    """An application; R1 defaults for keys the file leaves out.  start() records `_supid` and `_state`."""

    defaults = {"mod": None, "config": {}, "args": {}, "version": None, "description": "",
                "registered": [], "applications": [], "dependencies": []}


class ReleaseDefinition(Definition):
    """A release: its `apps` entries (each with its app's definition under 'definition')."""

    defaults = {"apps": [], "version": None, "description": ""}


def read_literal_file(path, kind):
    """The dict literal in `path`; ConfigurationError naming the file and the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigurationError("%s file %s: cannot read it: %s" % (kind, path, e.strerror or e)) from e
    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError) as e:
        where = " (line %s)" % e.lineno if getattr(e, "lineno", None) else ""
        raise ConfigurationError("%s file %s%s: not a Python literal: %s" % (kind, path, where, e)) from e
    if not isinstance(value, dict):
        raise ConfigurationError("%s file %s: must hold a dict, not a %s" % (kind, path, type(value).__name__))
    return value


def _require(condition, path, problem):
    if not condition:
        raise ConfigurationError("%s: %s" % (path, problem))


def check_app_definition(app, path):
    """Validate an application dict (keys of R1 §7.4)."""
    _require(app.get("type") == "application", path, "'type' must be 'application', not %r" % (app.get("type"),))
    _require(isinstance(app.get("name"), str) and app["name"], path, "'name' (a non-empty string) is required")
    mod = app.get("mod")
    _require(
        isinstance(mod, (tuple, list)) and 2 <= len(mod) <= 3 and isinstance(mod[0], str),
        path,
        "'mod' must be (module_name, args_list[, kwargs_dict]), not %r" % (mod,),
    )
    _require(isinstance(mod[1], (list, tuple)), path, "'mod' args must be a list, not %r" % (mod[1],))
    _require(len(mod) < 3 or isinstance(mod[2], dict), path, "'mod' kwargs must be a dict, not %r" % (mod[2:],))
    _require(isinstance(app.get("config", {}), dict), path, "'config' must be a dict")
    return app


def load_app_file(path):
    path = resource_path(path)
    return AppDefinition(check_app_definition(read_literal_file(path, "app"), path))


def _processapp_definition(entry, path):
    """An app definition for a release entry that gives `processapp` instead of a file."""
    processapp = entry["processapp"]
    _require(
        isinstance(processapp, (tuple, list)) and len(processapp) == 3 and all(isinstance(p, str) for p in processapp),
        path,
        "app %r: 'processapp' must be (proc_name, module, class), not %r" % (entry.get("name"), processapp),
    )
    return processapp_definition(entry["name"], processapp, entry.get("version"))


def processapp_definition(name, process_app, version=None, args=None):
    """The app definition that runs one process (name, module, class) under the generic processapp."""
    return AppDefinition(
        type="application",
        name=name,
        version=version,
        mod=("ion.core.pack.processapp", list(process_app), dict(args or {})),
        config={},
    )


def load_rel_file(path):
    """The release dict with each app entry resolved to an app definition under 'definition'."""
    path = resource_path(path)
    rel = read_literal_file(path, "release")
    _require(rel.get("type") == "release", path, "'type' must be 'release', not %r" % (rel.get("type"),))
    _require(isinstance(rel.get("name"), str) and rel["name"], path, "'name' (a non-empty string) is required")
    apps = rel.get("apps", [])
    _require(isinstance(apps, (list, tuple)), path, "'apps' must be a list")
    app_dir = CONF.getValue("app_dir_path", "res/apps")
    for entry in apps:
        _require(isinstance(entry, dict) and isinstance(entry.get("name"), str), path, "app entry %r needs a 'name'" % (entry,))
        for key in ("config", "args"):
            _require(isinstance(entry.get(key, {}), dict), path, "app %r: '%s' must be a dict" % (entry["name"], key))
        if "processapp" in entry:
            entry["definition"] = _processapp_definition(entry, path)
        else:
            try:
                entry["definition"] = load_app_file(os.path.join(app_dir, entry["name"] + ".app"))
            except ConfigurationError as e:
                raise ConfigurationError("%s: app %r: %s" % (path, entry["name"], e)) from e
    return ReleaseDefinition(rel)


class AppManager:
    """Starts and stops the container's applications; stops them in reverse order."""

    # Set by the container: callable(app_name) -> Deferred, run after an app has started.
    app_started_hook = None

    def __init__(self, container):
        self.container = container
        self.applications = []  # [(name, module, state)] in start order

    def is_app_started(self, name):
        return any(app_name == name for app_name, _, _ in self.applications)

    is_started = is_app_started

    def create_processapp_def(self, app_name, process_app, app_version=None, app_args=None):
        """An app definition running `process_app` = (proc_name, module, class) with spawn args `app_args`."""
        return processapp_definition(app_name, process_app, app_version, app_args)

    def start_app(
        self,
        app_filename=None,
        app_name=None,
        app_version=None,
        app_config=None,
        app_args=None,
        start_mult=False,
        process_app=None,
        app_def=None,
    ):
        """
        Start one app: from `app_filename`, from `res/apps/<app_name>.app`,
        from `process_app` (proc_name, module, class), or from a loaded
        `app_def`.  Returns a Deferred firing with the app's state, or None
        when the app runs already and start_mult is false (R1).  The version
        is not checked, as in R1.
        """
        if app_def is None and process_app is not None:
            app_def = self.create_processapp_def(app_name, process_app, app_version, app_args)
            app_args = None
        if app_def is None:
            if app_filename is None and app_name is not None:
                app_filename = os.path.join(CONF.getValue("app_dir_path", "res/apps"), app_name + ".app")
            if app_filename is None or not os.path.exists(resource_path(app_filename)):
                return defer.fail(StartupError("application file %s does not exist" % (app_filename,)))
            try:
                app_def = load_app_file(app_filename)
            except ConfigurationError:
                return defer.fail()
        if self.is_app_started(app_def["name"]) and not start_mult:
            log.warn("Application {name} already started; skipped", name=app_def["name"])
            return None
        return self._start(app_def, app_config, app_args)

    @defer.inlineCallbacks
    def _start(self, app, app_config, app_args):
        name = app["name"]
        ioninit.merge_config(app.get("config") or {}, origin="app %s" % name)
        if app_config:
            ioninit.merge_config(app_config, origin="app %s" % name)
        module_name, args = app["mod"][0], list(app["mod"][1])
        kwargs = dict(app["mod"][2]) if len(app["mod"]) > 2 else {}
        kwargs.update(app_args or {})
        kwargs.update(_app_arg(name))
        try:
            module = importlib.import_module(module_name)
        except Exception as e:
            raise FatalError("application %s: cannot import module %s: %s: %s" % (name, module_name, type(e).__name__, e)) from e
        try:
            result = yield defer.maybeDeferred(module.start, self.container, "permanent", app, *args, **kwargs)
        except ConfigurationError:
            raise
        except Exception as e:
            raise FatalError("application %s failed to start: %s" % (name, e)) from e
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ConfigurationError(
                "application %s: %s.start() must give (supervisor_id, state), not %r" % (name, module_name, result)
            )
        self.applications.append((name, module, result[1]))
        if isinstance(app, AppDefinition):
            app._supid, app._state = result
        log.info("Application {name} started", name=name)
        if self.app_started_hook is not None:
            yield self.app_started_hook(name)
        return result[1]

    @defer.inlineCallbacks
    def start_rel(self, rel_file):
        rel = load_rel_file(rel_file)
        log.info("Starting release {name} {version}", name=rel["name"], version=rel.get("version", ""))
        for entry in rel.get("apps", []):
            yield self.start_app(
                app_def=entry["definition"],
                app_args=entry.get("args"),
                app_config=entry.get("config"),
                start_mult=entry.get("mult", False),
            )
        return rel

    @defer.inlineCallbacks
    def stop_app(self, appname):
        """Stop the first started app named `appname` and forget it; fires with whether there was one."""
        for index, (name, module, state) in enumerate(self.applications):
            if name == appname:
                del self.applications[index]
                yield self._stop(name, module, state)
                return True
        return False

    @defer.inlineCallbacks
    def stop_all(self):
        while self.applications:
            yield self._stop(*self.applications.pop())

    @defer.inlineCallbacks
    def _stop(self, name, module, state):
        try:
            yield defer.maybeDeferred(module.stop, self.container, state)
            log.info("Application {name} stopped", name=name)
        except Exception:
            log.failure("Application {name} did not stop cleanly", name=name)


def _app_arg(name):
    """The container arg `apparg_<name>`: a dict or a dict literal string."""
    value = ioninit.cont_args.get("apparg_" + name)
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (SyntaxError, ValueError) as e:
            raise ConfigurationError("container arg apparg_%s: not a dict literal: %s" % (name, e)) from e
    if not isinstance(value, dict):
        raise ConfigurationError("container arg apparg_%s must be a dict, not %r" % (name, value))
    return value
