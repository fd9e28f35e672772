"""
`twistd cc`: the capability container as a Twisted service (R1 §7.1, §7.2).

    twistd -n cc [options] [file.app|file.rel|script.py ...]

With no broker named the container runs on the embedded in-memory broker;
`-h HOST` (with -p/-v/--broker_* options) or `--broker URL` selects RabbitMQ;
a cluster's nodes are listed comma-separated (`-h a,b:5673`, or in the URL)
or with --broker given once per node.
"""

import dataclasses
import fcntl
import os
import runpy
import signal
import sys
from urllib.parse import parse_qs, urlsplit

from twisted.application import service
from twisted.internet import defer, reactor
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
)
from twisted.python import usage
from twisted.python.components import Componentized

from ion.core import ioninit
from ion.core.cc import status
from ion.core.cc.container import create_new_container, stop_container
from ion.core.exception import ConfigurationError, UsageError
from ion.core.messaging.broker.address import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_RECONNECT_TIMEOUT,
    NODE_ORDERS,
    BrokerAddress,
    parse_max_in_flight,
    parse_node_order,
    parse_reconnect_timeout,
)
from ion.core.resources import resource_path
from ion.services.dm.distribution import queue_types

log = Logger()
CONF = ioninit.config(__name__)
# The broker password from the environment: unlike --broker_password, not shown to other local users
# (a process's arguments are in /proc/<pid>/cmdline and ps; its environment is readable only by its owner).
PASSWORD_VARIABLE = "ION_BROKER_PASSWORD"
VERSION = "1.1.5.post3"
# The ion.config section the subscribers read their default queue type from.
PUBSUB_CONFIG = "ion.services.dm.distribution.publisher_subscriber"
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
# Options that name a broker piece by piece; --broker names it whole.
BROKER_PART_OPTIONS = ("broker_host", "broker_port", "broker_vhost", "broker_heartbeat", "broker_reconnect_timeout",
                       "broker_max_in_flight", "broker_username", "broker_password", "broker_credfile")


class OptionValueError(SystemExit):
    """
    A bad option value: twistd prints this one line and exits 1.  (A
    UsageError would make twistd print the whole --help text before it.)
    """

    def __init__(self, message):
        super().__init__("twistd cc: %s" % (message,))


def parse_log_level(name):
    """A LogLevel from its name (debug, info, warn or warning, error, critical)."""
    text = str(name).strip().lower()
    text = "warn" if text == "warning" else text
    if text not in LOG_LEVELS:
        raise ValueError("log level %r: expected one of %s" % (name, ", ".join(LOG_LEVELS)))
    return LogLevel.levelWithName(text)


def _port(value):
    try:
        port = int(value)
    except ValueError:
        raise ValueError("--broker_port must be a number, not %r" % (value,)) from None
    if not 0 < port < 65536:
        raise ValueError("--broker_port must be 1..65535, not %d" % (port,))
    return port


def _heartbeat(value):
    try:
        seconds = int(value)
    except ValueError:
        raise ValueError("--broker_heartbeat must be whole seconds, not %r" % (value,)) from None
    if seconds < 0:
        raise ValueError("--broker_heartbeat must not be negative, not %d" % (seconds,))
    return seconds


def _reconnect_timeout(value):
    try:
        return parse_reconnect_timeout(value)
    except ValueError:
        raise ValueError("--broker_reconnect_timeout must be 0 or more seconds, not %r" % (value,)) from None


def _max_in_flight(value):
    try:
        return parse_max_in_flight(value)
    except ValueError:
        raise ValueError("--broker_max_in_flight must be a whole number, 1 or more, not %r" % (value,)) from None


class Options(usage.Options):
    synopsis = "[options] [file.app|file.rel|script.py ...]"
    longdesc = "Starts an ION capability container with the given apps, releases and scripts."

    optParameters = [
        ["sysname", "s", None, "System (cluster) name; scopes exchanges and queues."],
        ["broker", None, None, "Broker URL: amqp://user:pass@host:port/vhost, amqps://... for TLS, or memory."
         "  A cluster: amqp://user:pass@host1:port1,host2:port2/vhost, or --broker once per node."],
        ["broker_host", "h", None, "AMQP broker host, or a cluster's hosts as host1,host2:port2 (default: the"
         " embedded in-memory broker)."],
        ["broker_node_order", None, "in_order",
         "Order in which a cluster's nodes are tried: %s (a --broker URL may say ?node_order=shuffle too)."
         % " or ".join(NODE_ORDERS)],
        ["broker_port", "p", 5672, "AMQP broker port."],
        ["broker_vhost", "v", "/", "AMQP virtual host."],
        ["broker_heartbeat", None, 30, "AMQP heartbeat in seconds (0: off)."],
        ["broker_reconnect_timeout", None, DEFAULT_RECONNECT_TIMEOUT,
         "Seconds a broker call waits for a lost connection to come back before failing (0: fails at once;"
         " a --broker URL takes ?reconnect_timeout=S instead)."],
        ["broker_max_in_flight", None, DEFAULT_MAX_IN_FLIGHT,
         "Unconfirmed publishes per connection before publishing waits (a --broker URL takes ?max_in_flight=N)."],
        ["broker_username", None, "guest", "AMQP user name."],
        ["broker_password", None, None,
         "AMQP password (default guest).  Other local users can read it in ps; use $%s or"
         " --broker_credfile instead." % PASSWORD_VARIABLE],
        ["broker_credfile", None, None, "File holding 'username password' for the broker."],
        ["boot_script", "b", None, "Python file defining boot(); run before the scripts."],
        ["lockfile", None, None, "File locked until startup is complete."],
        ["args", "a", "", "Container args: \"{'k': 'v'}\" or k=v,k2=v2."],
        ["status_port", None, None, "Serve /metrics, /live and /ready on 127.0.0.1:PORT (default: off)."],
        ["default_queue_type", None, None,
         "Queue type of named durable subscriptions that name none: classic or quorum (default: ion.config's"
         " default_queue_type of ion.services.dm.distribution.publisher_subscriber, classic)."],
        ["log-level", None, None,
         "Lowest level logged: debug, info, warn, error or critical (default: ion.config's"
         " ion.core.cc.service log_level, else info)."],
    ]
    optFlags = [
        ["no_shell", "n", "Do not start the interactive shell."],
        ["no_history", "i", "Do not read or write ~/.cchistory."],
        ["no_dbmanhole", None, "Do not start the debug manhole (it is off unless ion.config's debug_manhole is True)."],
    ]

    def opt_broker(self, url):
        """Broker URL: amqp://user:pass@host:port/vhost, amqps://... for TLS, or memory; repeat it per cluster node."""
        self["broker"] = (self["broker"] or ()) + (url,)

    def opt_version(self):
        """Print the version and exit."""
        print("ION capability container %s" % VERSION)
        raise SystemExit(0)

    def parseArgs(self, *scripts):
        self["scripts"] = list(scripts)

    def postOptions(self):
        for script in self["scripts"]:
            if not script.endswith((".app", ".rel", ".py")):
                raise usage.UsageError("%s: expected a .app, .rel or .py file" % (script,))
        try:
            # Checked here, not by usage coercers, so a bad value is one line (see OptionValueError).
            self["broker_address"] = check_broker_options(self)
            if self["status_port"] is not None:
                self["status_port"] = status.parse_port(self["status_port"])
            self["args"] = ioninit.merge_sysname(self["args"], self["sysname"])
            self["container_args"] = ioninit.parse_container_args(self["args"])
            self["log_level"] = parse_log_level(self["log-level"] or CONF.get("log_level", "info"))
            if self["default_queue_type"] is not None:
                queue_types.check_default(self["default_queue_type"], "--default_queue_type")
        except (ValueError, UsageError) as e:
            raise OptionValueError(e) from e

    def broker_address(self):
        """From --broker or the --broker_* options; $ION_BROKER_PASSWORD fills in a password not given."""
        from_environment = os.environ.get(PASSWORD_VARIABLE)
        if self["broker"]:
            given = [_option_name(self, name) for name in BROKER_PART_OPTIONS if self[name] != self.defaults[name]]
            if given:
                raise ValueError("--broker URL and %s both name the broker: give one or the other" % (", ".join(given),))
            address = _cluster_address(self["broker"])
            if from_environment is not None and address.kind == "amqp" and not any(map(_names_password, _urls(self["broker"]))):
                address = dataclasses.replace(address, password=from_environment)
            return _ordered(address, self["broker_node_order"])
        if not self["broker_host"] or self["broker_host"] == "memory":
            return BrokerAddress.from_url("memory")
        return _ordered(BrokerAddress.from_options(
            host=self["broker_host"],
            port=self["broker_port"],
            vhost=self["broker_vhost"],
            username=self["broker_username"],
            password=_first(self["broker_password"], from_environment, "guest"),
            credfile=self["broker_credfile"],
            heartbeat=self["broker_heartbeat"],
            reconnect_timeout=self["broker_reconnect_timeout"],
            max_in_flight=self["broker_max_in_flight"],
        ), self["broker_node_order"])


def _urls(broker):
    """--broker's URLs: a tuple from the command line, a str from callers that set it directly."""
    return (broker,) if isinstance(broker, str) else broker


def _cluster_address(broker):
    """One BrokerAddress from --broker given once or more."""
    urls = _urls(broker)
    address = BrokerAddress.from_url(urls[0])
    for url in urls[1:]:
        address = address.with_nodes(BrokerAddress.from_url(url))
    return address


def _ordered(address, node_order):
    """`address` shuffling its nodes if --broker_node_order says so."""
    if address.kind != "amqp" or parse_node_order(node_order) == "in_order":
        return address
    return dataclasses.replace(address, node_order=node_order)


def apply_default_queue_type(options):
    """--default_queue_type, if given, overrides ion.config's for the subscribers of this container."""
    if options.get("default_queue_type") is not None:
        ioninit.merge_config({PUBSUB_CONFIG: {"default_queue_type": options["default_queue_type"]}},
                             origin="--default_queue_type")


def check_broker_options(options):
    """
    Check and convert the broker options of `options` (these Options, or
    another command's with the same broker options and broker_address);
    fires ValueError naming a bad one; returns the BrokerAddress.
    """
    options["broker_port"] = _port(options["broker_port"])
    options["broker_heartbeat"] = _heartbeat(options["broker_heartbeat"])
    options["broker_reconnect_timeout"] = _reconnect_timeout(options["broker_reconnect_timeout"])
    options["broker_max_in_flight"] = _max_in_flight(options["broker_max_in_flight"])
    try:
        parse_node_order(options["broker_node_order"])
    except ValueError:
        raise ValueError("--broker_node_order must be %s, not %r" % (" or ".join(NODE_ORDERS),
                                                                    options["broker_node_order"])) from None
    return options.broker_address()


def broker_option_parameters():
    """The optParameters naming the broker and the system, for other commands (ion-events)."""
    wanted = ("sysname", "broker", "broker_node_order") + BROKER_PART_OPTIONS
    return [list(p) for p in Options.optParameters if p[0] in wanted]


def _option_name(options, name):
    """How the user spells an option: -h/--broker_host, or --broker_vhost when it has no short form."""
    shorts = {long: short for long, short, *_ in options.optParameters if short}
    return "-%s/--%s" % (shorts[name], name) if name in shorts else "--" + name


def _first(*values):
    return next(v for v in values if v is not None)


def _names_password(url):
    """True when a broker URL carries a password itself (amqp://user:PASS@... or endpoint:...?password=)."""
    if url.startswith("endpoint:"):
        return "password" in parse_qs(url.partition("?")[2])
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


class CapabilityContainer(service.Service):
    """Runs one Container for the life of the twistd process."""

    def __init__(self, options):
        self.options = options
        self.container = None
        self.started = defer.Deferred()
        self._starting = None
        self._lock = _Lockfile(options["lockfile"]) if options.get("lockfile") else None
        self.status_port = None
        self.shells = []

    def setServiceParent(self, parent):
        """
        twistd's Application is the parent: a log observer set on it replaces
        twistd's own, so this one (twistd's, filtered by --log-level) is used.
        """
        server_options = getattr(self.options, "parent", None)
        if server_options is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, level_filtered(twistd_log_observer(server_options), self.options["log_level"]))
        service.Service.setServiceParent(self, parent)

    def startService(self):
        service.Service.startService(self)
        import_from_cwd()
        # twistd calls this before reactor.run(): start once the reactor runs, so our
        # signal handlers are in place before "Container ... started" is logged.
        reactor.callWhenRunning(self._start_when_running)

    def _start_when_running(self):
        _stop_on_signals()
        self._starting = self._start()
        self._starting.addErrback(self._fatal)

    @defer.inlineCallbacks
    def _start(self):
        address = self.options["broker_address"]
        if address.kind == "memory":
            log.info("No broker named: using the embedded in-memory broker (use -h HOST or --broker URL for RabbitMQ)")
        apply_default_queue_type(self.options)
        self.container = create_new_container()
        yield self.container.initialize(address, self.options["container_args"])
        yield self.container.activate()
        if self.options.get("status_port"):
            self.status_port = status.listen(self.container, self.options["status_port"])
        if self.options.get("boot_script"):
            boot = runpy.run_path(self.options["boot_script"]).get("boot")
            if not callable(boot):
                raise ConfigurationError("boot script %s defines no boot()" % (self.options["boot_script"],))
            yield defer.maybeDeferred(boot)
        for script in self.options.get("scripts", []):
            yield self._run_script(script)
        if self._lock is not None:
            self._lock.release()
        yield self.container.publish_startup_event(self.options.get("scripts", []))
        log.info("Container {id} started", id=self.container.id)
        self._start_shells()
        self.started.callback(self.container)

    def _start_shells(self):
        """The terminal shell and the debug manhole, as the options and ion.config ask (see their modules)."""
        from ion.core.cc import shell, shell_api
        from ion.core.cc.debug_manhole import DebugManhole

        if not self.options.get("no_shell") and shell.TerminalShell.possible():
            banner = shell_banner(self.container)
            terminal = shell.TerminalShell(shell_api.namespace(self), banner, history=not self.options.get("no_history"))
            terminal.start()
            self.shells.append(terminal)
        if not self.options.get("no_dbmanhole") and CONF.get("debug_manhole", False):
            manhole = DebugManhole(shell_api.namespace(self))
            log.info("Debug manhole on 127.0.0.1 port {port} (in {path})", port=manhole.listen(), path=manhole.path)
            self.shells.append(manhole)

    def _run_script(self, script):
        """Run a .app, .rel or .py file; a relative path may also name one installed with the package."""
        script = resource_path(script)
        if not os.path.exists(script):
            raise ConfigurationError("%s: no such file" % (script,))
        if script.endswith(".app"):
            return self.container.start_app(script, app_args=dict(self.options["container_args"]))
        if script.endswith(".rel"):
            return self.container.start_rel(script)
        return defer.maybeDeferred(runpy.run_path, script, run_name="__ion_script__")

    def _fatal(self, failure):
        if _is_configuration_error(failure.value):
            # The user's mistake: say what it is in one line; the traceback is for debugging.
            log.error("Container startup failed: {error}", error=failure.value)
            log.failure("Container startup failed", failure, level=LogLevel.debug)
        else:
            log.failure("Container startup failed", failure)
        if not self.started.called:
            self.started.errback(failure)
            self.started.addErrback(lambda _: None)
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        # twistd calls startService before reactor.run(), so an early failure
        # (e.g. a bad release file on the embedded broker) must stop it once running.
        reactor.callWhenRunning(reactor.stop)

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        for shell in reversed(self.shells):
            yield shell.stop()
        self.shells = []
        if self._starting is not None and not self._starting.called:
            yield self.started.addErrback(lambda _: None)
        if self.status_port is not None:
            yield self.status_port.stopListening()
        container, self.container = self.container, None
        if container is None:
            return
        yield stop_container(container)
        log.info("Container {id} stopped", id=container.id)


def shell_banner(container):
    """What the shell says first: version, container, sysname, broker and virtualenv."""
    return (
        "ION capability container %s\ncontainer %s, sysname %s, broker %s\nvirtualenv %s\n"
        "shell_api: info() ps() ms() svc() ping(name) ... ; expr? for help; Ctrl-D leaves\n"
    ) % (VERSION, container.id, ioninit.sys_name, container.exchange_manager.description, sys.prefix)


def _is_configuration_error(error):
    """
    A ConfigurationError or an ImportError (a .app or .rel naming a module
    that is not there), or an error one of them caused (an app that failed
    to start over one).
    """
    while error is not None:
        if isinstance(error, (ConfigurationError, ImportError)):
            return True
        error = error.__cause__
    return False


def import_from_cwd():
    """
    Put the directory the container runs in first on sys.path, as `python -m`
    would: a user's own service modules there are importable by .app and .rel
    files (R1 users had their checkout, where they started it, on the path).
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def twistd_log_observer(server_options):
    """The observer twistd itself would log to for these options (--logfile, --syslog, -n)."""
    from twisted.scripts._twistd_unix import UnixAppLogger

    return UnixAppLogger(server_options)._getLogObserver()


def level_filtered(observer, level):
    """`observer` seeing only events at `level` or above (legacy observers are wrapped first)."""
    if not ILogObserver.providedBy(observer):
        observer = LegacyLogObserverWrapper(observer)
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=level)])


def _stop_on_signals():
    """SIGINT/SIGTERM stop the reactor cleanly, so twistd exits 0 (it would re-raise the signal)."""

    def handler(signum, frame):
        log.info("Received {signal}: stopping the container", signal=signal.Signals(signum).name)
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class _Lockfile:
    """An exclusive fcntl lock held from construction until startup completes."""

    def __init__(self, path):
        self.file = open(path, "a")
        fcntl.lockf(self.file, fcntl.LOCK_EX)

    def release(self):
        fcntl.lockf(self.file, fcntl.LOCK_UN)
        self.file.close()


def makeService(options):
    return CapabilityContainer(options)
