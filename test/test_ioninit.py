"""ion.core.ioninit: configuration files and views (§7.3), container args and ids (§4.1, §7.1)."""

import os

from twisted.trial import unittest

from ion.core import ioninit
from ion.core.ioninit import ConfigurationError
from ion.core.resources import resource_path


class IoninitTestCase(unittest.TestCase):
    """Leaves ioninit as it found it, and keeps the environment's own override out of the way."""

    def setUp(self):
        # Cleanups run last-first: restore the environment, then reload.
        self.addCleanup(ioninit.reset)
        saved = os.environ.pop(ioninit.LOCAL_CONFIG_ENV, None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, ioninit.LOCAL_CONFIG_ENV, saved)
        self.addCleanup(os.environ.pop, ioninit.LOCAL_CONFIG_ENV, None)
        ioninit.reset()

    def write(self, text, path=None):
        path = path or self.mktemp()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path


class ShippedConfigTest(IoninitTestCase):
    def test_keys_we_rely_on(self):
        conf = ioninit.read_config_file(resource_path(ioninit.ION_CONFIG))
        self.assertEqual(conf["ion.core.cc.container"], {"fail_fast": True, "master_off": False})
        self.assertEqual(conf["ion.core.process.process"], {"fail_fast": True, "rpc_timeout": 15})
        self.assertEqual(conf["ion.core.pack.app_manager"]["ioncore_app"], "res/apps/ioncore.app")
        self.assertEqual(conf["ion.core.object.gpb_wrapper"], {"STR_GPBS": True, "VALIDATE_ATTRS": True})
        self.assertEqual(conf["ion.test.iontest"]["broker_host"], "memory")
        self.assertIsNone(conf["ion.test.iontest"]["start_app"])
        self.assertEqual(conf["ion.core.cc.service"], {"broker_heartbeat": 30, "log_level": "info"})
        self.assertIs(conf["ion.services.dm.distribution.publisher_subscriber"]["register_on_build"], False)

    def test_loaded_at_import(self):
        self.assertEqual(ioninit.config("ion.core.process.process")["rpc_timeout"], 15)


class ConfigViewTest(IoninitTestCase):
    def setUp(self):
        super().setUp()
        ioninit.merge_config({"mod.a": {"x": 1, "none": None}})
        self.view = ioninit.config("mod.a")

    def test_lookups(self):
        self.assertEqual(self.view["x"], 1)
        self.assertIsNone(self.view["missing"])
        self.assertEqual(self.view.getValue("missing", 5), 5)
        self.assertIsNone(self.view.getValue("missing"))
        self.assertEqual(self.view.get("x", 5), 1)
        self.assertIsNone(self.view.get("none", 5))
        self.assertIn("x", self.view)
        self.assertNotIn("missing", self.view)

    def test_unknown_section_is_empty(self):
        view = ioninit.config("no.such.module")
        self.assertIsNone(view["x"])
        self.assertEqual(view.as_dict(), {})

    def test_view_is_live(self):
        later = ioninit.config("mod.later")
        ioninit.merge_config({"mod.a": {"x": 2, "y": 3}, "mod.later": {"z": 4}})
        self.assertEqual((self.view["x"], self.view["y"]), (2, 3))
        self.assertEqual(later["z"], 4)

    def test_view_survives_reload(self):
        ioninit.load_config([self.write("{'mod.a': {'x': 9}}")])
        self.assertEqual(self.view["x"], 9)

    def test_as_dict_is_a_copy(self):
        copy = self.view.as_dict()
        copy["x"] = 100
        self.assertEqual(self.view["x"], 1)


class MergeTest(IoninitTestCase):
    def test_recursive(self):
        ioninit.merge_config({"m": {"keep": 1, "nested": {"a": 1, "b": 1}}})
        ioninit.merge_config({"m": {"new": 2, "nested": {"b": 2, "c": 3}}})
        self.assertEqual(
            ioninit.config("m").as_dict(),
            {"keep": 1, "new": 2, "nested": {"a": 1, "b": 2, "c": 3}},
        )

    def test_non_dict_replaces(self):
        ioninit.merge_config({"m": {"v": {"a": 1}}})
        ioninit.merge_config({"m": {"v": [1, 2]}})
        self.assertEqual(ioninit.config("m")["v"], [1, 2])

    def test_merged_values_are_copied(self):
        overlay = {"m": {"v": {"a": [1]}}}
        ioninit.merge_config(overlay)
        overlay["m"]["v"]["a"].append(2)
        self.assertEqual(ioninit.config("m")["v"], {"a": [1]})

    def test_section_must_be_dict(self):
        e = self.assertRaises(ConfigurationError, ioninit.merge_config, {"m": 3}, "myapp.app")
        self.assertIn("myapp.app", str(e))
        self.assertIn("'m'", str(e))
        self.assertRaises(ConfigurationError, ioninit.merge_config, [("m", {})])


class LoadTest(IoninitTestCase):
    def test_files_merge_in_order(self):
        first = self.write("{'m': {'a': 1, 'b': 1}}")
        second = self.write("{'m': {'b': 2}, 'n': {}}")
        ioninit.load_config([first, second])
        self.assertEqual(ioninit.config("m").as_dict(), {"a": 1, "b": 2})
        self.assertIn("n", ioninit._config)
        self.assertNotIn("ion.core.process.process", ioninit._config)

    def test_comments_are_allowed(self):
        path = self.write("# header\n{\n  'm': {'a': 1},  # trailing\n}\n")
        self.assertEqual(ioninit.read_config_file(path), {"m": {"a": 1}})

    def test_local_override_file(self):
        # trial runs in a scratch directory, and resources resolve against the cwd first.
        local = self.write("{'ion.core.process.process': {'rpc_timeout': 99}}", ioninit.ION_LOCAL_CONFIG)
        self.addCleanup(os.remove, local)
        self.assertIn(os.path.abspath(local), ioninit.default_config_paths())
        ioninit.load_config()
        view = ioninit.config("ion.core.process.process")
        self.assertEqual((view["rpc_timeout"], view["fail_fast"]), (99, True))

    def test_env_override_file(self):
        os.environ[ioninit.LOCAL_CONFIG_ENV] = self.write("{'ion.core.cc.container': {'master_off': True}}")
        ioninit.load_config()
        view = ioninit.config("ion.core.cc.container")
        self.assertEqual((view["master_off"], view["fail_fast"]), (True, True))

    def test_missing_env_file_is_an_error(self):
        missing = os.path.abspath(self.mktemp())
        os.environ[ioninit.LOCAL_CONFIG_ENV] = missing
        e = self.assertRaises(ConfigurationError, ioninit.load_config)
        self.assertIn(missing, str(e))

    def test_bad_file_changes_nothing(self):
        ioninit.merge_config({"m": {"a": 1}})
        paths = [self.write("{'m': {'a': 2}}"), self.write("{'m': ")]
        self.assertRaises(ConfigurationError, ioninit.load_config, paths)
        self.assertEqual(ioninit.config("m")["a"], 1)


class BadFileTest(IoninitTestCase):
    def check(self, text, *fragments):
        path = self.write(text)
        e = self.assertRaises(ConfigurationError, ioninit.read_config_file, path)
        self.assertIsInstance(e, ValueError)
        for fragment in (path,) + fragments:
            self.assertIn(fragment, str(e))

    def test_syntax_error_names_line(self):
        self.check("{\n  'm': {'a': 1},\n  'n': {'b' 2},\n}\n", "line 3", "syntax error")

    def test_not_a_dict(self):
        self.check("['m']", "must be a dict", "list")

    def test_section_not_a_dict(self):
        self.check("{'m': 5}", "section 'm'", "int")

    def test_code_is_not_run(self):
        marker = os.path.abspath(self.mktemp())
        self.check(f"{{'m': {{'a': open({marker!r}, 'w')}}}}", "not a plain literal")
        self.assertFalse(os.path.exists(marker))

    def test_missing_file(self):
        path = os.path.abspath(self.mktemp())
        e = self.assertRaises(ConfigurationError, ioninit.read_config_file, path)
        self.assertIn(path, str(e))


class ContainerArgsTest(unittest.TestCase):
    def test_dict_literal(self):
        text = " {'sysname': 'x', 'apparg_foo': {'n': 1}} "
        self.assertEqual(
            ioninit.parse_container_args(text),
            {"sysname": "x", "apparg_foo": {"n": 1}, "_args": text},
        )

    def test_pairs(self):
        text = " sysname = mine , contid=c1,,path=a=b, empty= "
        self.assertEqual(
            ioninit.parse_container_args(text),
            {"sysname": "mine", "contid": "c1", "path": "a=b", "empty": "", "_args": text},
        )

    def test_pair_values_stay_strings(self):
        self.assertEqual(ioninit.parse_container_args("n=5")["n"], "5")

    def test_free_text(self):
        self.assertEqual(ioninit.parse_container_args(" hello there "), {"args": "hello there", "_args": " hello there "})

    def test_empty(self):
        self.assertEqual(ioninit.parse_container_args(""), {"_args": ""})
        self.assertEqual(ioninit.parse_container_args(None), {"_args": ""})

    def test_errors_name_the_text(self):
        for text in ["{'a': ", "{1, 2}", "a=1, =2", "a=1, b"]:
            e = self.assertRaises(ConfigurationError, ioninit.parse_container_args, text)
            self.assertIn(repr(text), str(e))


class MergeSysnameTest(unittest.TestCase):
    def merged(self, text, sysname="x"):
        return ioninit.merge_sysname(text, sysname)

    def test_replaces_existing(self):
        self.assertEqual(self.merged("a=1, sysname=old, b=2"), "a=1, sysname=x, b=2")
        self.assertEqual(self.merged("sysname=old"), "sysname=x")

    def test_replaces_whole_value(self):
        # R1 matched only \w+, leaving "-cluster" behind.
        self.assertEqual(self.merged("sysname=my-cluster,b=2"), "sysname=x,b=2")

    def test_other_keys_untouched(self):
        self.assertEqual(self.merged("mysysname=a"), "sysname=x, mysysname=a")

    def test_prepends(self):
        self.assertEqual(self.merged("contid=c"), "sysname=x, contid=c")
        self.assertEqual(self.merged(""), "sysname=x")
        self.assertEqual(self.merged(None), "sysname=x")

    def test_dict_and_free_text_stay_parseable(self):
        merged = self.merged("{'sysname': 'old', 'contid': 'c'}")
        self.assertEqual(
            {k: v for k, v in ioninit.parse_container_args(merged).items() if k != "_args"},
            {"sysname": "x", "contid": "c"},
        )
        merged = self.merged("free, text")
        self.assertEqual(ioninit.parse_container_args(merged)["args"], "free, text")
        self.assertEqual(ioninit.parse_container_args(merged)["sysname"], "x")

    def test_no_sysname(self):
        self.assertEqual(ioninit.merge_sysname("a=1", None), "a=1")

    def test_bad_sysname(self):
        for bad in ["a,b", "a=b", "a b"]:
            self.assertRaises(ConfigurationError, ioninit.merge_sysname, "", bad)

    def test_round_trip(self):
        args = ioninit.parse_container_args(self.merged("contid=c"))
        self.assertEqual((args["sysname"], args["contid"]), ("x", "c"))


class ContainerIdTest(IoninitTestCase):
    def test_default_format(self):
        self.patch(ioninit.socket, "gethostname", lambda: "my.host.example.org")
        self.patch(ioninit.os, "getpid", lambda: 12345)
        self.assertEqual(ioninit.default_container_id(), "my_host_example_org_12345")
        self.assertEqual(ioninit.container_id(), "my_host_example_org_12345")

    def test_real_id_has_no_dots(self):
        cid = ioninit.default_container_id()
        self.assertNotIn(".", cid)
        self.assertTrue(cid.endswith("_%d" % os.getpid()))

    def test_contid_override(self):
        ioninit.apply_container_args({"contid": "box1"})
        self.assertEqual(ioninit.container_id(), "box1")


class ApplyArgsTest(IoninitTestCase):
    def test_sysname_given(self):
        ioninit.apply_container_args("sysname=cluster, contid=c")
        self.assertEqual(ioninit.sys_name, "cluster")
        self.assertEqual(ioninit.cont_args["contid"], "c")
        self.assertEqual(ioninit.cont_args["_args"], "sysname=cluster, contid=c")

    def test_sysname_defaults_to_container_id(self):
        ioninit.apply_container_args({})
        self.assertEqual(ioninit.sys_name, ioninit.default_container_id())

    def test_sysname_defaults_to_contid(self):
        ioninit.apply_container_args({"contid": "c9", "sysname": ""})
        self.assertEqual(ioninit.sys_name, "c9")

    def test_cont_args_updated_in_place(self):
        held = ioninit.cont_args
        ioninit.apply_container_args({"a": 1})
        ioninit.apply_container_args({"b": 2})
        self.assertIs(ioninit.cont_args, held)
        self.assertEqual(held, {"b": 2})

    def test_reset(self):
        ioninit.apply_container_args("sysname=s")
        ioninit.container_instance = object()
        ioninit.testing = False
        ioninit.merge_config({"m": {"a": 1}})
        ioninit.reset()
        self.assertEqual(
            (ioninit.sys_name, ioninit.container_instance, ioninit.cont_args, ioninit.testing),
            (None, None, {}, True),
        )
        self.assertIsNone(ioninit.config("m")["a"])
        self.assertEqual(ioninit.config("ion.core.process.process")["rpc_timeout"], 15)


class UnknownContainerArgsTest(unittest.TestCase):
    def test_known_keys(self):
        args = ioninit.parse_container_args("sysname=x, contid=c, apparg_hello={'a': 1}")
        self.assertEqual(ioninit.unknown_container_args(args), [])
        self.assertEqual(ioninit.unknown_container_args(ioninit.parse_container_args("free text")), [])

    def test_misspelt_keys_are_named_with_a_suggestion(self):
        args = ioninit.parse_container_args("sysname=x,syssname=y,contd=1,appargs_hello=2,colour=red")
        self.assertEqual(
            ioninit.unknown_container_args(args),
            [("syssname", "sysname"), ("contd", "contid"), ("appargs_hello", "apparg_<app>"), ("colour", None)],
        )
