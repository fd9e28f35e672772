"""
The `ion-events` console script: watch and poke the events of a running system.

    ion-events [broker options] -s SYSNAME tail|publish|types|dead-letters|history|replay ...

It takes the container's broker options (-h/--broker_host ..., --broker URL,
--broker_credfile, amqps:// for TLS) and runs the subcommand of
ion.tools.ion_events in a small container of its own on that broker, in the
system -s names.  The embedded broker lives inside one OS process, so it is
refused here: use the subcommands in-process (ion.tools.ion_events.run).
`history` and `replay --dry-run` read only the event store (--store) and
need no broker.

Exit codes: 0 success, 1 broker or runtime error (one line), 2 usage error.
"""

import os
import signal
import sys

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python import usage

from ion.core.cc.container import create_new_container, stop_container
from ion.core.cc.service import Options as ContainerOptions
from ion.core.cc.service import broker_option_parameters, check_broker_options, level_filtered, parse_log_level
from ion.core.messaging.broker import connect
from ion.core.messaging.exchange import ExchangeManager
from ion.services.dm.inventory.event_store import StoreError
from ion.tools import ion_events

PROGRAM = "ion-events"


class Options(usage.Options):
    synopsis = "[broker options] -s SYSNAME COMMAND [options]   (COMMAND --help for each)"
    optParameters = broker_option_parameters()
    subCommands = ion_events.SUBCOMMANDS
    broker_address = ContainerOptions.broker_address
    opt_broker = ContainerOptions.opt_broker

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("name a command: tail, publish, types, dead-letters, history or replay")
        if not ion_events.needs_broker(self.subCommand, self.subOptions):
            return
        try:
            self["broker_address"] = check_broker_options(self)
        except ValueError as e:
            raise usage.UsageError(str(e)) from e
        if self["broker_address"].kind == "memory":
            raise usage.UsageError(
                "the embedded broker lives inside one container's process: name a broker with -h HOST or --broker URL")
        if not self["sysname"]:
            raise usage.UsageError("give -s/--sysname: the system whose events to use")


def parse(argv):
    """Options from argv; UsageError naming what was wrong (--help exits 0 itself)."""
    options = Options()
    options.parseOptions(argv)
    return options


def _usage_exit(message):
    sys.stderr.write("%s: %s\n" % (PROGRAM, message))
    return 2


@defer.inlineCallbacks
def _run(reactor, options):
    output = ion_events.Output()
    if not ion_events.needs_broker(options.subCommand, options.subOptions):
        code = yield ion_events.run(options.subCommand, options.subOptions, output)
        return code
    address = options["broker_address"]
    container = create_new_container()
    broker = None
    stopped = defer.Deferred()
    try:
        yield container.initialize(address, {"sysname": options["sysname"]})
        yield container.activate()
        # The tool's own connection, for the dead-letter queue and depths.
        broker = ExchangeManager((yield connect(address)))
        signal.signal(signal.SIGINT, lambda *_: reactor.callFromThread(_fire, stopped))
        code = yield ion_events.run(options.subCommand, options.subOptions, output, broker, stopped)
    finally:
        if broker is not None:
            yield broker.close()
        yield stop_container(container)
    return code


def _fire(d):
    if not d.called:
        d.callback(None)


def main(argv=None):
    """The console script: exits 0, 1 or 2."""
    try:
        _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # Whoever read our output went away (`ion-events tail | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


def _main(argv):
    try:
        options = parse(argv)
    except usage.UsageError as e:
        raise SystemExit(_usage_exit(e)) from None
    if options.subCommand == "dead-letters" and options.subOptions["action"] == "purge" and not options.subOptions["yes"]:
        answer = input("Purge every dead letter of %s? [y/N] " % (options["sysname"],)) if sys.stdin.isatty() else ""
        if answer.strip().lower() not in ("y", "yes"):
            raise SystemExit(_usage_exit("nothing purged (give --yes to purge without asking)"))
    _quiet_logging()
    codes = []

    def run(reactor):
        d = _run(reactor, options)
        d.addCallback(codes.append)
        d.addErrback(_failed, codes)
        return d

    try:
        task.react(run)
    except SystemExit:
        pass
    raise SystemExit(codes[0] if codes else 1)


def _failed(failure, codes):
    if failure.check(usage.UsageError, StoreError):  # StoreError: --store or a query argument not usable
        codes.append(_usage_exit(failure.value))
    else:
        # One line, also for a driver's message of several (psycopg's "connection failed: ...\n\tIs the server ...").
        message = " ".join(str(failure.value).split())
        sys.stderr.write("%s: %s: %s\n" % (PROGRAM, type(failure.value).__name__, message))
        codes.append(1)


def _quiet_logging():
    """
    Only critical lines from the container reach stderr: stdout is the
    command's, and a broker error is the command's one line (exit 1).
    """
    globalLogBeginner.beginLoggingTo([level_filtered(textFileLogObserver(sys.stderr), parse_log_level("critical"))],
                                     redirectStandardIO=False)


if __name__ == "__main__":
    main()
