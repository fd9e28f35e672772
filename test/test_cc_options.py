"""`twistd cc` command-line parsing: ion.core.cc.service.Options (R1 §7.1)."""

import io
import os
from contextlib import redirect_stdout

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial import unittest

from ion.core import ioninit
from ion.core.cc.service import PASSWORD_VARIABLE, VERSION, OptionValueError, Options
from ion.core.messaging.broker.address import BrokerAddress
from test.brokers import RABBIT_URL
from test.test_twistd import TwistdMixin


def parse(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options


class DefaultsTest(unittest.TestCase):
    def test_no_options_means_embedded_broker(self):
        options = parse()
        address = options["broker_address"]
        self.assertEqual(address.kind, "memory")
        self.assertEqual(address.memory_name, "default")
        self.assertEqual(options["scripts"], [])
        self.assertEqual(options["args"], "")
        self.assertEqual(options["container_args"], {"_args": ""})
        self.assertIsNone(options["sysname"])
        self.assertIsNone(options["boot_script"])
        self.assertIsNone(options["lockfile"])
        for flag in ("no_shell", "no_history", "no_dbmanhole"):
            self.assertFalse(options[flag], flag)

    def test_broker_host_memory_is_embedded(self):
        self.assertEqual(parse("-h", "memory")["broker_address"].kind, "memory")

    def test_defaults_apply_once_a_host_is_given(self):
        address = parse("-h", "broker.example.org")["broker_address"]
        self.assertEqual(address.kind, "amqp")
        self.assertEqual((address.host, address.port, address.vhost), ("broker.example.org", 5672, "/"))
        self.assertEqual((address.username, address.password), ("guest", "guest"))
        self.assertEqual(address.heartbeat, 30)


class BrokerOptionsTest(unittest.TestCase):
    def test_short_options(self):
        address = parse("-h", "127.0.0.1", "-p", "5673", "-v", "/ion")["broker_address"]
        self.assertEqual(address.kind, "amqp")
        self.assertEqual((address.host, address.port, address.vhost), ("127.0.0.1", 5673, "/ion"))
        self.assertEqual(address.description, "amqp://127.0.0.1:5673/%2Fion")

    def test_long_options(self):
        options = parse(
            "--broker_host=rabbit",
            "--broker_port=5000",
            "--broker_vhost=v",
            "--broker_heartbeat=7",
            "--broker_username=alice",
            "--broker_password=s3cret",
        )
        address = options["broker_address"]
        self.assertEqual((address.host, address.port, address.vhost), ("rabbit", 5000, "v"))
        self.assertEqual(address.heartbeat, 7)
        self.assertEqual((address.username, address.password), ("alice", "s3cret"))
        self.assertNotIn("s3cret", repr(address))
        self.assertNotIn("s3cret", str(address))

    def test_heartbeat_zero_turns_it_off(self):
        self.assertEqual(parse("-h", "rabbit", "--broker_heartbeat", "0")["broker_address"].heartbeat, 0)

    def test_credfile_overrides_username_and_password(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("bob  hunter2\n")
        os.chmod(path, 0o600)
        address = parse("-h", "rabbit", "--broker_username", "ignored", "--broker_credfile", path)["broker_address"]
        self.assertEqual((address.username, address.password), ("bob", "hunter2"))

    def test_broker_url(self):
        address = parse("--broker", "amqp://u:p@rabbit:5999/ion%2Fdev?heartbeat=5")["broker_address"]
        self.assertEqual(address.kind, "amqp")
        self.assertEqual((address.host, address.port, address.vhost), ("rabbit", 5999, "ion/dev"))
        self.assertEqual((address.username, address.password, address.heartbeat), ("u", "p", 5))

    def test_broker_url_and_host_is_an_error(self):
        """Which of two brokers was meant cannot be guessed: the error names both options."""
        error = self.assertRaises(OptionValueError, parse, "--broker", "amqp://u:secret@rabbit/", "-h", "other")
        self.assertIn("--broker URL and -h/--broker_host both name the broker", str(error.code))
        self.assertNotIn("secret", str(error.code))
        error = self.assertRaises(OptionValueError, parse, "--broker", "memory", "-p", "5673", "--broker_username", "u")
        self.assertIn("--broker URL and -p/--broker_port, --broker_username both name the broker", str(error.code))

    def test_broker_url_memory(self):
        self.assertEqual(parse("--broker", "memory")["broker_address"].kind, "memory")
        self.assertEqual(parse("--broker", "memory://side")["broker_address"].memory_name, "side")

    def test_cluster_in_one_url(self):
        address = parse("--broker", "amqp://u:p@127.0.0.1:5701,127.0.0.1:5702/%2F")["broker_address"]
        self.assertEqual(address.nodes, (("127.0.0.1", 5701), ("127.0.0.1", 5702)))
        self.assertEqual(address.node_order, "in_order")

    def test_broker_repeated_adds_nodes(self):
        address = parse("--broker", "amqp://u:p@a:5701/v", "--broker", "amqp://u:p@b:5702,c/v")["broker_address"]
        self.assertEqual(address.nodes, (("a", 5701), ("b", 5702), ("c", 5672)))
        self.assertEqual((address.username, address.password, address.vhost), ("u", "p", "v"))

    def test_ion_events_takes_a_cluster_too(self):
        from ion.core.cc.ion_events_command import parse as parse_ion_events

        options = parse_ion_events(["--broker", "amqp://u:p@a:5701/v", "--broker", "amqp://u:p@b:5702/v",
                                    "--broker_node_order", "shuffle", "-s", "sys", "tail"])
        address = options["broker_address"]
        self.assertEqual((address.nodes, address.node_order), ((("a", 5701), ("b", 5702)), "shuffle"))

    def test_node_order_option(self):
        self.assertEqual(parse("--broker", "amqp://a,b/", "--broker_node_order", "shuffle")["broker_address"]
                         .node_order, "shuffle")
        self.assertEqual(parse("--broker", "amqp://a,b/?node_order=shuffle")["broker_address"].node_order, "shuffle")
        address = parse("-h", "a,b:5673", "--broker_node_order=shuffle")["broker_address"]
        self.assertEqual((address.nodes, address.node_order), ((("a", 5672), ("b", 5673)), "shuffle"))
        self.assertEqual(parse("--broker_node_order", "shuffle")["broker_address"].kind, "memory")


class ContainerArgsTest(unittest.TestCase):
    def test_key_value_pairs(self):
        options = parse("-a", " a = 1 , b=two ")
        self.assertEqual(options["container_args"], {"a": "1", "b": "two", "_args": " a = 1 , b=two "})

    def test_dict_literal(self):
        options = parse("--args", "{'a': 1, 'apparg_hello': {'x': 2}}")
        self.assertEqual(options["container_args"]["a"], 1)
        self.assertEqual(options["container_args"]["apparg_hello"], {"x": 2})

    def test_other_text_is_stored_under_args(self):
        self.assertEqual(parse("-a", "just words")["container_args"]["args"], "just words")

    def test_sysname_alone(self):
        options = parse("--sysname", "mycluster")
        self.assertEqual(options["args"], "sysname=mycluster")
        self.assertEqual(options["container_args"]["sysname"], "mycluster")

    def test_sysname_is_prepended_to_pairs(self):
        options = parse("-s", "mycluster", "-a", "k=v")
        self.assertEqual(options["container_args"], {"sysname": "mycluster", "k": "v", "_args": options["args"]})

    def test_sysname_replaces_the_one_in_pairs(self):
        options = parse("-s", "new", "-a", "k=v, sysname=old.name, z=1")
        self.assertEqual(options["container_args"]["sysname"], "new")
        self.assertEqual(options["container_args"]["k"], "v")
        self.assertEqual(options["container_args"]["z"], "1")
        self.assertNotIn("old", options["args"])

    def test_sysname_merges_into_dict_literal(self):
        options = parse("--sysname", "new", "-a", "{'sysname': 'old', 'k': [1, 2]}")
        args = options["container_args"]
        self.assertEqual((args["sysname"], args["k"]), ("new", [1, 2]))

    def test_sysname_with_free_text(self):
        args = parse("-s", "new", "-a", "free")["container_args"]
        self.assertEqual((args["sysname"], args["args"]), ("new", "free"))

    def test_sysname_from_args_only(self):
        self.assertEqual(parse("-a", "sysname=fromargs")["container_args"]["sysname"], "fromargs")


class ScriptsAndFlagsTest(unittest.TestCase):
    def test_positional_scripts_in_order(self):
        options = parse("res/deploy/hello.rel", "/abs/x.app", "boot.py")
        self.assertEqual(options["scripts"], ["res/deploy/hello.rel", "/abs/x.app", "boot.py"])

    def test_short_flags(self):
        options = parse("-n", "-i")
        self.assertTrue(options["no_shell"])
        self.assertTrue(options["no_history"])
        self.assertFalse(options["no_dbmanhole"])

    def test_long_flags(self):
        options = parse("--no_shell", "--no_history", "--no_dbmanhole")
        self.assertTrue(options["no_shell"])
        self.assertTrue(options["no_history"])
        self.assertTrue(options["no_dbmanhole"])

    def test_boot_script_and_lockfile(self):
        options = parse("-b", "boot.py", "--lockfile", "cc.lock")
        self.assertEqual((options["boot_script"], options["lockfile"]), ("boot.py", "cc.lock"))

    def test_version(self):
        out = io.StringIO()
        with redirect_stdout(out):
            error = self.assertRaises(SystemExit, parse, "--version")
        self.assertEqual(error.code, 0)
        self.assertIn(VERSION, out.getvalue())


class UsageErrorsTest(unittest.TestCase):
    def assertUsageError(self, argv, *fragments):
        """A bad option value is one line for twistd to print (a UsageError would print all of --help too)."""
        error = self.assertRaises(OptionValueError, parse, *argv)
        message = error.code
        self.assertIsInstance(message, str)
        self.assertTrue(message.startswith("twistd cc: "), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_bad_port(self):
        self.assertUsageError(["-p", "abc"], "--broker_port", "'abc'")
        self.assertUsageError(["-h", "rabbit", "--broker_port", "0"], "--broker_port", "1..65535")
        self.assertUsageError(["-p", "70000"], "--broker_port", "70000")

    def test_bad_heartbeat(self):
        self.assertUsageError(["--broker_heartbeat", "soon"], "--broker_heartbeat", "'soon'")
        self.assertUsageError(["--broker_heartbeat", "-1"], "--broker_heartbeat", "negative")

    def test_bad_args_text(self):
        self.assertUsageError(["-a", "k=v, junk"], "container args", "'junk' is not key=value")
        self.assertUsageError(["-a", "=v"], "container args", "not key=value")
        self.assertUsageError(["-a", "{'k': "], "container args", "not a valid dict literal")
        self.assertUsageError(["-a", "{1, 2}"], "container args", "not a dict")

    def test_args_never_evaluated(self):
        self.assertUsageError(["-a", "{'k': __import__('os').getcwd()}"], "not a valid dict literal")

    def test_bad_sysname(self):
        self.assertUsageError(["--sysname", "two words"], "sysname 'two words'")

    def test_unknown_script_extension(self):
        error = self.assertRaises(usage.UsageError, parse, "hello.rel", "notes.txt")
        self.assertIn("notes.txt: expected a .app, .rel or .py file", str(error))

    def test_bad_broker_url(self):
        self.assertUsageError(["--broker", "http://rabbit/"], "http://rabbit/", "scheme must be amqp")
        self.assertUsageError(["--broker", "amqp://rabbit:99999/"], "bad port")
        self.assertUsageError(["--broker", "amqp://rabbit/?colour=red"], "unknown setting(s) colour")

    def test_bad_cluster_options(self):
        self.assertUsageError(["--broker", "amqp://a,b:x/"], "bad port 'x' in node 'b:x'")
        self.assertUsageError(["--broker_node_order", "random"], "--broker_node_order", "'random'", "in_order or shuffle")
        self.assertUsageError(["--broker", "amqp://u:p@a/v", "--broker", "amqp://u:p@b/w"], "differ in vhost")
        self.assertUsageError(["--broker", "amqp://a/", "--broker", "memory"], "only amqp:// and amqps://")
        self.assertUsageError(["-h", "a,,b"], "empty node")

    def test_bad_broker_url_hides_password(self):
        message = self.assertUsageError(["--broker", "ftp://me:topsecret@rabbit/"], "ftp://me:***@rabbit/")
        self.assertNotIn("topsecret", message)

    def test_bad_credfile(self):
        missing = os.path.join(self.mktemp(), "none")
        self.assertUsageError(["-h", "rabbit", "--broker_credfile", missing], "broker credential file", missing)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("only-a-user\n")
        os.chmod(path, 0o600)
        self.assertUsageError(["-h", "rabbit", "--broker_credfile", path], path, "expected 'username password'")

    def test_bad_log_level(self):
        self.assertUsageError(["--log-level", "loud"], "log level 'loud'", "debug, info, warn, error, critical")

    def test_unknown_option(self):
        error = self.assertRaises(usage.UsageError, parse, "--no_such_option")
        self.assertIn("no_such_option", str(error))


class LogLevelTest(unittest.TestCase):
    def test_info_by_default(self):
        self.assertEqual(parse()["log_level"], LogLevel.info)

    def test_option(self):
        self.assertEqual(parse("--log-level", "debug")["log_level"], LogLevel.debug)
        self.assertEqual(parse("--log-level=WARNING")["log_level"], LogLevel.warn)

    def test_config_key(self):
        self.addCleanup(ioninit.load_config)
        ioninit.merge_config({"ion.core.cc.service": {"log_level": "error"}})
        self.assertEqual(parse()["log_level"], LogLevel.error)
        self.assertEqual(parse("--log-level", "info")["log_level"], LogLevel.info)


class PasswordFromEnvironmentTest(unittest.TestCase):
    """$ION_BROKER_PASSWORD: a password that, unlike --broker_password, other local users cannot read in ps."""

    def setUp(self):
        previous = os.environ.pop(PASSWORD_VARIABLE, None)
        self.addCleanup(self.restore, previous)
        os.environ[PASSWORD_VARIABLE] = "from-env"

    def restore(self, previous):
        os.environ.pop(PASSWORD_VARIABLE, None)
        if previous is not None:
            os.environ[PASSWORD_VARIABLE] = previous

    def test_used_when_no_password_option(self):
        self.assertEqual(PASSWORD_VARIABLE, "ION_BROKER_PASSWORD")
        self.assertEqual(parse("-h", "rabbit", "--broker_username", "alice")["broker_address"].password, "from-env")

    def test_password_option_and_credfile_win(self):
        self.assertEqual(parse("-h", "rabbit", "--broker_password", "cli")["broker_address"].password, "cli")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("bob hunter2\n")
        os.chmod(path, 0o600)
        self.assertEqual(parse("-h", "rabbit", "--broker_credfile", path)["broker_address"].password, "hunter2")

    def test_fills_in_a_url_without_password(self):
        self.assertEqual(parse("--broker", "amqp://alice@rabbit/")["broker_address"].password, "from-env")
        self.assertEqual(parse("--broker", "amqp://alice:own@rabbit/")["broker_address"].password, "own")
        self.assertEqual(parse("--broker", "endpoint:tcp:host=h:port=1?password=own")["broker_address"].password, "own")
        self.assertEqual(parse("--broker", "endpoint:tcp:host=h:port=1")["broker_address"].password, "from-env")

    def test_default_without_it_is_guest(self):
        del os.environ[PASSWORD_VARIABLE]
        self.assertEqual(parse("-h", "rabbit")["broker_address"].password, "guest")

    def test_help_says_the_option_is_visible(self):
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertRaises(SystemExit, Options().parseOptions, ["--help"])
        self.assertIn(PASSWORD_VARIABLE, " ".join(out.getvalue().split()))


class MaxInFlightOptionTest(unittest.TestCase):
    def test_default_option_and_url(self):
        self.assertEqual(parse("-h", "rabbit")["broker_address"].max_in_flight, 1000)
        self.assertEqual(parse("-h", "rabbit", "--broker_max_in_flight", "50")["broker_address"].max_in_flight, 50)
        self.assertEqual(parse("--broker", "amqp://rabbit/?max_in_flight=7")["broker_address"].max_in_flight, 7)
        self.assertEqual(BrokerAddress.from_url("endpoint:tcp:host=h:port=1?max_in_flight=3").max_in_flight, 3)

    def test_bad_values_are_named(self):
        for value in ("0", "-1", "many", "1.5"):
            error = self.assertRaises(OptionValueError, parse, "-h", "rabbit", "--broker_max_in_flight", value)
            self.assertIn("--broker_max_in_flight", str(error))
            self.assertIn(repr(value), str(error))
            error = self.assertRaises(OptionValueError, parse, "--broker", "amqp://rabbit/?max_in_flight=" + value)
            self.assertIn("max_in_flight", str(error))


class PasswordFromEnvironmentTwistdTest(TwistdMixin, unittest.TestCase):
    """A real twistd: the password in $ION_BROKER_PASSWORD is the one it logs in with."""

    @defer.inlineCallbacks
    def test_twistd_logs_in_with_the_environment_password(self):
        address = BrokerAddress.from_url(RABBIT_URL)
        secret = "not-%s-%s" % (address.password, os.urandom(4).hex())
        previous = os.environ.get(PASSWORD_VARIABLE)
        os.environ[PASSWORD_VARIABLE] = secret  # spawn_twistd passes its own environment on
        try:
            proto = self.spawn_twistd("--no_shell", "-h", address.host, "-p", str(address.port),
                                      "--broker_username", address.username)
        finally:
            os.environ.pop(PASSWORD_VARIABLE)
            if previous is not None:
                os.environ[PASSWORD_VARIABLE] = previous
        code = yield proto.exited()
        self.assertNotEqual(code, 0, proto.output())
        self.assertIn("refused to open as %r" % address.username, proto.output())  # the wrong password was used
        self.assertNotIn(secret, proto.output())
