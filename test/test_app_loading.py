"""
Applications (.app) and releases (.rel), R1 §7.4: the file checks on their
own, then loading through a running container on both brokers.
"""

import importlib
import os
import sys
import textwrap
import types
import uuid

from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from ion.core import ioninit
from ion.core.exception import ConfigurationError, FatalError
from ion.core.pack.app_manager import load_app_file, load_rel_file
from ion.core.process.process import Process
from ion.core.process.service_process import ServiceClient
from ion.core.resources import resource_path
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker

HELLO_APP = resource_path("res/apps/hello.app")
HELLO_REL = resource_path("res/deploy/hello.rel")
HELLO_PROCESSAPP = ("hello", "ion.services.examples.hello_service", "HelloService")


def app_text(name="demo", mod=("ion.core.pack.processapp", list(HELLO_PROCESSAPP), {}), **extra):
    return repr({"type": "application", "name": name, "mod": mod, **extra})


def rel_text(apps, name="DemoRel", **extra):
    return repr({"type": "release", "name": name, "version": "0.1", "apps": apps, **extra})


class FileHelpers:
    """Files in this test's own temporary directory."""

    def tmpdir(self):
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def write(self, name, text, directory=None):
        path = os.path.join(directory or self.tmpdir(), name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def use_app_dir(self, directory):
        """Resolve release app names against `directory` instead of res/apps."""
        ioninit.merge_config({"ion.core.pack.app_manager": {"app_dir_path": directory}})
        self.addCleanup(ioninit.load_config)

    def assertConfigError(self, load, path, *fragments):
        error = self.assertRaises(ConfigurationError, load, path)
        self.assertIn(path, str(error))
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        return error


class AppFileTest(FileHelpers, unittest.TestCase):
    """load_app_file: what a valid app gives, and an error naming the file for each problem."""

    def test_hello_app(self):
        app = load_app_file("res/apps/hello.app")
        self.assertEqual(app["name"], "hello")
        self.assertEqual(app["mod"], ("ion.core.pack.processapp", list(HELLO_PROCESSAPP), {}))

    def test_valid_app_keeps_every_key(self):
        path = self.write(
            "x.app",
            app_text(
                version="1.0",
                description="d",
                modules=["m"],
                registered=["r"],
                applications=["a"],
                config={"some.module": {"k": 1}},
                args={"a": 1},
            ),
        )
        app = load_app_file(path)
        self.assertEqual(app["config"], {"some.module": {"k": 1}})
        self.assertEqual(app["applications"], ["a"])

    def test_comments_and_two_element_mod(self):
        path = self.write("x.app", "# a comment\n{'type': 'application', 'name': 'x', 'mod': ('m', [])}  # trailing\n")
        self.assertEqual(load_app_file(path)["mod"], ("m", []))

    def test_missing_file(self):
        path = os.path.join(self.tmpdir(), "absent.app")
        self.assertConfigError(load_app_file, path, "app file", "cannot read it", "No such file")

    def test_syntax_error_names_the_line(self):
        path = self.write("x.app", "{\n  'type': 'application',\n  'name': ,\n  'mod': ('m', []),\n}\n")
        self.assertConfigError(load_app_file, path, "(line 3)", "not a Python literal")

    def test_not_a_dict(self):
        path = self.write("x.app", "[('type', 'application')]")
        self.assertConfigError(load_app_file, path, "must hold a dict, not a list")

    def test_wrong_type(self):
        self.assertConfigError(
            load_app_file, self.write("x.app", app_text(type="release")), "'type' must be 'application', not 'release'"
        )
        text = repr({"name": "x", "mod": ("m", [])})
        self.assertConfigError(load_app_file, self.write("y.app", text), "'type' must be 'application', not None")

    def test_missing_or_empty_name(self):
        for i, name in enumerate([None, "", 7]):
            app = {"type": "application", "mod": ("m", [])}
            if name is not None:
                app["name"] = name
            self.assertConfigError(
                load_app_file, self.write("x%d.app" % i, repr(app)), "'name' (a non-empty string) is required"
            )

    def test_bad_mod(self):
        for i, mod in enumerate([None, "ion.core.pack.processapp", ("m",), (1, []), ("m", [], {}, 4)]):
            path = self.write("m%d.app" % i, app_text(mod=mod))
            self.assertConfigError(load_app_file, path, "'mod' must be (module_name, args_list[, kwargs_dict])")
        self.assertConfigError(
            load_app_file, self.write("args.app", app_text(mod=("m", "a"))), "'mod' args must be a list"
        )
        self.assertConfigError(
            load_app_file, self.write("kw.app", app_text(mod=("m", [], []))), "'mod' kwargs must be a dict"
        )

    def test_bad_config(self):
        self.assertConfigError(load_app_file, self.write("x.app", app_text(config=[1])), "'config' must be a dict")

    def test_literal_eval_only(self):
        """A function call is refused, not run: the file cannot execute code."""
        directory = self.tmpdir()
        marker = os.path.join(directory, "PWNED")
        call = "__import__('os').system('touch %s')" % marker
        whole = self.write("whole.app", call, directory)
        inside = self.write("inside.app", "{'type': 'application', 'name': %s, 'mod': ('m', [])}" % call, directory)
        for path in (whole, inside):
            self.assertConfigError(load_app_file, path, "not a Python literal")
        self.assertFalse(os.path.exists(marker))

    def test_names_and_operators_are_refused(self):
        path = self.write("x.app", "{'type': 'application', 'name': 'x' * 2, 'mod': (ion, [])}")
        self.assertConfigError(load_app_file, path, "not a Python literal")


class RelFileTest(FileHelpers, unittest.TestCase):
    """load_rel_file: entries resolved to app definitions, errors naming the release."""

    def test_hello_rel(self):
        rel = load_rel_file("res/deploy/hello.rel")
        self.assertEqual(rel["name"], "HelloRel")
        [entry] = rel["apps"]
        self.assertEqual(entry["definition"]["name"], "hello")
        self.assertEqual(entry["definition"]["mod"][0], "ion.core.pack.processapp")

    def test_processapp_entry(self):
        path = self.write(
            "x.rel",
            rel_text(
                [
                    {"name": "greeter", "version": "2", "processapp": HELLO_PROCESSAPP, "args": {"a": 1}, "mult": True},
                ]
            ),
        )
        [entry] = load_rel_file(path)["apps"]
        self.assertEqual(
            entry["definition"],
            {
                "type": "application",
                "name": "greeter",
                "version": "2",
                "mod": ("ion.core.pack.processapp", list(HELLO_PROCESSAPP), {}),
                "config": {},
            },
        )

    def test_app_names_resolve_in_the_configured_app_dir(self):
        apps = self.tmpdir()
        self.write("mine.app", app_text(name="mine"), apps)
        self.use_app_dir(apps)
        [entry] = load_rel_file(self.write("x.rel", rel_text([{"name": "mine"}])))["apps"]
        self.assertEqual(entry["definition"]["name"], "mine")

    def test_empty_release(self):
        self.assertEqual(load_rel_file(self.write("x.rel", rel_text([])))["apps"], [])

    def test_missing_file(self):
        path = os.path.join(self.tmpdir(), "absent.rel")
        self.assertConfigError(load_rel_file, path, "release file", "cannot read it")

    def test_syntax_error_names_the_line(self):
        path = self.write("x.rel", "{'type': 'release',\n 'name': 'x',\n 'apps': [{'name': 'hello'},,]}\n")
        self.assertConfigError(load_rel_file, path, "release file", "(line 3)")

    def test_not_a_dict(self):
        self.assertConfigError(load_rel_file, self.write("x.rel", "'release'"), "must hold a dict, not a str")

    def test_wrong_type(self):
        path = self.write("x.rel", app_text())
        self.assertConfigError(load_rel_file, path, "'type' must be 'release', not 'application'")

    def test_missing_name(self):
        path = self.write("x.rel", repr({"type": "release", "apps": []}))
        self.assertConfigError(load_rel_file, path, "'name' (a non-empty string) is required")

    def test_bad_apps(self):
        self.assertConfigError(load_rel_file, self.write("a.rel", rel_text("hello")), "'apps' must be a list")
        self.assertConfigError(
            load_rel_file, self.write("b.rel", rel_text(["hello"])), "app entry 'hello' needs a 'name'"
        )
        self.assertConfigError(load_rel_file, self.write("c.rel", rel_text([{"version": "1"}])), "needs a 'name'")
        bad_config = rel_text([{"name": "hello", "config": "x"}])
        self.assertConfigError(load_rel_file, self.write("d.rel", bad_config), "app 'hello': 'config' must be a dict")
        bad_args = rel_text([{"name": "hello", "args": ["x"]}])
        self.assertConfigError(load_rel_file, self.write("e.rel", bad_args), "app 'hello': 'args' must be a dict")

    def test_bad_processapp(self):
        for i, processapp in enumerate([("p", "m"), "p m c", ("p", "m", 3), ("p", "m", "c", "d")]):
            path = self.write("p%d.rel" % i, rel_text([{"name": "svc", "processapp": processapp}]))
            self.assertConfigError(load_rel_file, path, "app 'svc': 'processapp' must be (proc_name, module, class)")

    def test_app_without_app_file(self):
        apps = self.tmpdir()
        self.use_app_dir(apps)
        path = self.write("x.rel", rel_text([{"name": "nosuchapp"}]))
        self.assertConfigError(
            load_rel_file, path, "app 'nosuchapp'", os.path.join(apps, "nosuchapp.app"), "cannot read it"
        )

    def test_invalid_app_file_of_an_entry(self):
        apps = self.tmpdir()
        self.write("broken.app", app_text(name="broken", mod=("m",)), apps)
        self.use_app_dir(apps)
        path = self.write("x.rel", rel_text([{"name": "broken"}]))
        self.assertConfigError(load_rel_file, path, "app 'broken'", os.path.join(apps, "broken.app"), "'mod' must be")

    def test_literal_eval_only(self):
        directory = self.tmpdir()
        marker = os.path.join(directory, "PWNED")
        text = "{'type': 'release', 'name': 'x', 'apps': [__import__('os').system('touch %s')]}" % marker
        self.assertConfigError(load_rel_file, self.write("x.rel", text, directory), "not a Python literal")
        self.assertFalse(os.path.exists(marker))


class AppLoadingTests(FileHelpers, BrokerTestMixin):
    """Starting apps and releases in a running container."""

    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "app-loading-tester"})
        yield self.proc.spawn()

    # -- helpers ---------------------------------------------------------

    def recorder_module(self, start_result=None):
        """
        A fresh app module that records its start/stop calls in `module.calls`.
        start() fires with ('sup-<app>', {'app', 'args', 'kwargs'}) unless start_result is given.
        """
        module = types.ModuleType("ion_test_app_%s" % uuid.uuid4().hex)
        module.calls = []

        def start(container, starttype, app_definition, *args, **kwargs):
            module.calls.append(("start", app_definition["name"], starttype))
            if start_result is not None:
                return start_result
            state = {"app": app_definition["name"], "args": args, "kwargs": kwargs}
            return defer.succeed(("sup-" + app_definition["name"], state))

        def stop(container, state):
            module.calls.append(("stop", state["app"]))

        module.start, module.stop = start, stop
        sys.modules[module.__name__] = module
        self.addCleanup(sys.modules.pop, module.__name__, None)
        return module

    def source_module(self, source):
        """A module on disk (so importing it runs `source`); returns its name."""
        directory = self.tmpdir()
        name = "ion_test_src_%s" % uuid.uuid4().hex
        self.write(name + ".py", textwrap.dedent(source), directory)
        sys.path.insert(0, directory)
        importlib.invalidate_caches()
        self.addCleanup(sys.path.remove, directory)
        self.addCleanup(sys.modules.pop, name, None)
        return name

    def capture_log(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def started_apps(self):
        return [name for name, _, _ in self.container.app_manager.applications]

    def ping(self, service="hello"):
        return ServiceClient(proc=self.proc, targetname=service).rpc_send("ping", None)

    # -- valid apps and releases ------------------------------------------

    @defer.inlineCallbacks
    def test_app_file_starts_service(self):
        state = yield self.container.start_app(HELLO_APP)
        self.assertEqual(self.started_apps(), ["ioncore", "hello"])
        [supervisor] = state
        self.assertEqual(supervisor.name, "app-supervisor-hello")
        content, _, _ = yield self.ping()
        self.assertEqual(content, {"pong": "pong"})
        content, _, _ = yield ServiceClient(proc=self.proc, targetname="hello").rpc_send("hello", {"name": "app"})
        self.assertEqual(content["greeting"], "Hello, app!")

    @defer.inlineCallbacks
    def test_rel_file_starts_service(self):
        rel = yield self.container.start_rel(HELLO_REL)
        self.assertEqual(rel["name"], "HelloRel")
        self.assertEqual(self.started_apps(), ["ioncore", "hello"])
        content, _, _ = yield self.ping()
        self.assertEqual(content, {"pong": "pong"})

    @defer.inlineCallbacks
    def test_processapp_entry(self):
        path = self.write(
            "x.rel",
            rel_text(
                [
                    {"name": "greeter", "processapp": HELLO_PROCESSAPP, "args": {"servicename": "greeter_svc"}},
                ]
            ),
        )
        yield self.container.start_rel(path)
        self.assertEqual(self.started_apps(), ["ioncore", "greeter"])
        names = sorted(p.proc_name for p in self.container.proc_manager.process_registry.values())
        self.assertIn("app-supervisor-greeter", names)
        self.assertIn("hello", names)
        # The entry's args became the process's spawn args: it serves under the name given there.
        content, _, _ = yield self.ping("greeter_svc")
        self.assertEqual(content, {"pong": "pong"})

    @defer.inlineCallbacks
    def test_app_already_started_is_skipped(self):
        events = self.capture_log()
        yield self.container.start_app(HELLO_APP)
        again = yield self.container.start_app(HELLO_APP)
        self.assertIsNone(again)
        self.assertEqual(self.started_apps(), ["ioncore", "hello"])
        warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertIn("Application hello already started; skipped", warnings)

    @defer.inlineCallbacks
    def test_rel_repeating_an_app_starts_it_once(self):
        yield self.container.start_rel(self.write("x.rel", rel_text([{"name": "hello"}, {"name": "hello"}])))
        self.assertEqual(self.started_apps(), ["ioncore", "hello"])

    @defer.inlineCallbacks
    def test_mult_starts_another_instance(self):
        path = self.write("x.rel", rel_text([{"name": "hello"}, {"name": "hello", "mult": True}]))
        yield self.container.start_rel(path)
        self.assertEqual(self.started_apps(), ["ioncore", "hello", "hello"])
        services = [p for p in self.container.proc_manager.process_registry.values() if p.proc_name == "hello"]
        self.assertEqual(len(services), 2)
        content, _, _ = yield self.ping()
        self.assertEqual(content, {"pong": "pong"})

    @defer.inlineCallbacks
    def test_app_config_is_merged(self):
        section = ioninit.config("test.test_app_loading.settings")
        self.assertIsNone(section["colour"])
        module = self.recorder_module()
        apps = self.tmpdir()
        config = {"test.test_app_loading.settings": {"colour": "blue", "size": 1}}
        self.write("painter.app", app_text(name="painter", mod=(module.__name__, []), config=config), apps)
        self.use_app_dir(apps)
        yield self.container.start_app(os.path.join(apps, "painter.app"))
        self.assertEqual((section["colour"], section["size"]), ("blue", 1))
        # A release entry's config is merged over the app's own.
        overlay = {"test.test_app_loading.settings": {"size": 2}}
        entry = {"name": "painter", "mult": True, "config": overlay}
        yield self.container.start_rel(self.write("x.rel", rel_text([entry])))
        self.assertEqual((section["colour"], section["size"]), ("blue", 2))

    @defer.inlineCallbacks
    def test_start_arguments(self):
        """mod args, then kwargs from mod[2], the caller's app_args and the container arg apparg_<name>."""
        module = self.recorder_module()
        mod = (module.__name__, ["a1", 2], {"k": "mod", "m": 1, "x": "mod"})
        self.container.args["apparg_rec"] = "{'k': 'apparg', 'z': [3]}"
        path = self.write("rec.app", app_text(name="rec", mod=mod))
        state = yield self.container.start_app(path, app_args={"k": "caller", "x": "caller"})
        self.assertEqual(module.calls, [("start", "rec", "permanent")])
        self.assertEqual(state["args"], ("a1", 2))
        self.assertEqual(state["kwargs"], {"k": "apparg", "m": 1, "x": "caller", "z": [3]})

    @defer.inlineCallbacks
    def test_apparg_as_dict(self):
        module = self.recorder_module()
        self.container.args["apparg_rec"] = {"k": 1}
        state = yield self.container.start_app(self.write("rec.app", app_text(name="rec", mod=(module.__name__, []))))
        self.assertEqual(state["kwargs"], {"k": 1})

    @defer.inlineCallbacks
    def test_rel_entry_args_reach_start(self):
        module = self.recorder_module()
        apps = self.tmpdir()
        self.write("rec.app", app_text(name="rec", mod=(module.__name__, [], {"k": 0})), apps)
        self.use_app_dir(apps)
        rel = yield self.container.start_rel(self.write("x.rel", rel_text([{"name": "rec", "args": {"k": 1}}])))
        [entry] = rel["apps"]
        self.assertEqual(self.container.app_manager.applications[-1][2]["kwargs"], {"k": 1})
        self.assertEqual(entry["name"], "rec")

    @defer.inlineCallbacks
    def test_apps_stop_in_reverse_order(self):
        module = self.recorder_module()
        directory = self.tmpdir()
        for name in ("first", "second"):
            path = self.write(name + ".app", app_text(name=name, mod=(module.__name__, [])), directory)
            yield self.container.start_app(path)
        yield self._stop_container()
        self.assertEqual(
            [call[:2] for call in module.calls],
            [("start", "first"), ("start", "second"), ("stop", "second"), ("stop", "first")],
        )

    # -- errors ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_start_returning_a_bad_value(self):
        module = self.recorder_module(start_result="oops")
        path = self.write("bad.app", app_text(name="bad", mod=(module.__name__, [])))
        error = yield self.assertFailure(self.container.start_app(path), ConfigurationError)
        self.assertIn("application bad", str(error))
        self.assertIn("%s.start() must give (supervisor_id, state), not 'oops'" % module.__name__, str(error))
        self.assertEqual(self.started_apps(), ["ioncore"])

    @defer.inlineCallbacks
    def test_module_that_does_not_exist(self):
        path = self.write("bad.app", app_text(name="bad", mod=("ion.no_such_module", [])))
        error = yield self.assertFailure(self.container.start_app(path), FatalError)
        self.assertIn("application bad: cannot import module ion.no_such_module", str(error))
        self.assertIn("No module named 'ion.no_such_module'", str(error))
        self.assertEqual(self.started_apps(), ["ioncore"])

    @defer.inlineCallbacks
    def test_module_that_fails_to_import(self):
        name = self.source_module("raise RuntimeError('broken on import')\n")
        path = self.write("bad.app", app_text(name="bad", mod=(name, [])))
        error = yield self.assertFailure(self.container.start_app(path), FatalError)
        self.assertIn("application bad: cannot import module %s: RuntimeError: broken on import" % name, str(error))

    @defer.inlineCallbacks
    def test_start_that_fails(self):
        name = self.source_module("""
            def start(container, starttype, app_definition, *args, **kwargs):
                raise OSError('no room')
            """)
        path = self.write("bad.app", app_text(name="bad", mod=(name, [])))
        error = yield self.assertFailure(self.container.start_app(path), FatalError)
        self.assertIn("application bad failed to start: no room", str(error))
        self.assertEqual(self.started_apps(), ["ioncore"])

    @defer.inlineCallbacks
    def test_processapp_with_unknown_process_module(self):
        path = self.write(
            "x.rel", rel_text([{"name": "ghost", "processapp": ("ghost", "ion.no_such_service", "Ghost")}])
        )
        # R1: the app supervisor's child fails to import, and the app start turns that into FatalError.
        error = yield self.assertFailure(self.container.start_rel(path), FatalError)
        self.assertIn("ion.no_such_service", str(error))
        self.assertIsInstance(error.__cause__, ImportError)

    @defer.inlineCallbacks
    def test_bad_apparg(self):
        module = self.recorder_module()
        path = self.write("rec.app", app_text(name="rec", mod=(module.__name__, [])))
        self.container.args["apparg_rec"] = "[1, 2]"
        error = yield self.assertFailure(self.container.start_app(path), ConfigurationError)
        self.assertIn("container arg apparg_rec must be a dict", str(error))
        self.container.args["apparg_rec"] = "{'k': open('x')}"
        error = yield self.assertFailure(self.container.start_app(path), ConfigurationError)
        self.assertIn("container arg apparg_rec: not a dict literal", str(error))
        self.assertEqual(module.calls, [])

    @defer.inlineCallbacks
    def test_bad_release_starts_nothing(self):
        """Every entry is checked before the first app starts."""
        apps = self.tmpdir()
        self.use_app_dir(apps)
        with open(HELLO_APP, encoding="utf-8") as f:
            self.write("hello.app", f.read(), apps)
        path = self.write("x.rel", rel_text([{"name": "hello"}, {"name": "nosuchapp"}]))
        error = yield self.assertFailure(self.container.start_rel(path), ConfigurationError)
        self.assertIn(path, str(error))
        self.assertIn("app 'nosuchapp'", str(error))
        self.assertEqual(self.started_apps(), ["ioncore"])

    @defer.inlineCallbacks
    def test_release_that_runs_code_is_refused(self):
        directory = self.tmpdir()
        marker = os.path.join(directory, "PWNED")
        path = self.write("x.rel", "__import__('os').system('touch %s')" % marker, directory)
        error = yield self.assertFailure(self.container.start_rel(path), ConfigurationError)
        self.assertIn(path, str(error))
        self.assertFalse(os.path.exists(marker))


for_each_broker(AppLoadingTests, globals(), base=IonTestCase)
