"""
`ion-events` against a running container (this test's), on both brokers.

On RabbitMQ each command is the console script's module run as a
subprocess, as a user runs it.  The embedded broker lives inside one OS
process, so no other process can reach it (the script refuses it): there the
same subcommands run in-process through ion.tools.ion_events.run, with the
same options, output and exit codes.
"""

import io
import json
import os
import sys

from twisted.internet import defer, protocol, reactor, task
from twisted.python import usage
from twisted.trial import unittest

from ion.core.messaging.exchange import ExchangeManager
from ion.core.process.process import Process
from ion.services.dm.distribution import dead_letters, events
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory
from ion.test.iontest import IonTestCase
from ion.tools import event_catalog, ion_events
from test.brokers import BrokerTestMixin, for_each_broker, wait_for
from test.test_events import Collector

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = [sys.executable, "-m", "ion.core.cc.ion_events_command"]


@defer.inlineCallbacks
def run_script(*argv):
    """The console script's module as a subprocess to its end: fires with (stdout, stderr, exit code)."""
    from twisted.internet import utils

    env = dict(os.environ, PYTHONPATH=REPO)
    out, err, code = yield utils.getProcessOutputAndValue(COMMAND[0], COMMAND[1:] + list(argv), env=env)
    return out.decode(), err.decode(), code


class Run:
    """One ion-events run as the test sees it: stdout lines, stderr text, `ready` (tail subscribed) and `exited`."""

    def __init__(self):
        self.out = ""
        self.err = ""
        self.ready = defer.Deferred()
        self.exited = defer.Deferred()

    def lines(self):
        return self.out.splitlines()

    def got_err(self, text):
        self.err += text
        if "ion-events: tailing" in self.err and not self.ready.called:
            self.ready.callback(None)

    def ended(self, code):
        if not self.ready.called:
            self.ready.callback(None)
        self.exited.callback(code)


class _Subprocess(protocol.ProcessProtocol):
    def __init__(self, run):
        self.run = run

    def outReceived(self, data):
        self.run.out += data.decode("utf-8")

    def errReceived(self, data):
        self.run.got_err(data.decode("utf-8"))

    def processEnded(self, reason):
        self.run.ended(reason.value.exitCode)


class _ErrStream(io.StringIO):
    def __init__(self, run):
        super().__init__()
        self.run = run

    def write(self, text):
        self.run.got_err(text)
        return len(text)


class _OutStream(io.StringIO):
    def __init__(self, run):
        super().__init__()
        self.run = run

    def write(self, text):
        self.run.out += text
        return len(text)


class IonEventsRunner(BrokerTestMixin):
    """A container on the test's broker and `ion_events(*argv)`: a subprocess on RabbitMQ, in-process on memory."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.sysname = self.unique_name("evcli")
        yield self._start_container(sysname=self.sysname)
        self.proc = Process(spawnargs={"proc-name": "ion-events-test"})
        yield self.proc.spawn()
        # What the console script gives the commands: an ExchangeManager on a connection of its own.
        self.connection = ExchangeManager((yield self.connect_broker()))
        if self.on_rabbit:  # durable: it would outlive the test (cleanups run last first: before the close)
            self.addCleanup(dead_letters.delete, self.connection, dead_letters.dead_letter_name(self.sysname))

    def tearDown(self):
        return self._stop_container()

    def ion_events(self, *argv):
        run = Run()
        if self.on_rabbit:
            env = dict(os.environ, PYTHONPATH=REPO)
            args = COMMAND + ["--broker", self.broker_url, "-s", self.sysname] + list(argv)
            run.transport = reactor.spawnProcess(_Subprocess(run), COMMAND[0], args, env=env, path=self.mktemp_dir())
            self.addCleanup(self._kill, run)
        else:
            self._in_process(run, list(argv))
        return run

    def mktemp_dir(self):
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def _in_process(self, run, argv):
        """The subcommand as the console script runs it, in this process (see the module docstring)."""
        command, rest = argv[0], argv[1:]
        options_class = {name: cls for name, _short, cls, _doc in ion_events.SUBCOMMANDS}[command]
        output = ion_events.Output(out=_OutStream(run), err=_ErrStream(run))
        stopped = defer.Deferred()
        run.interrupt = lambda: stopped.called or stopped.callback(None)
        try:
            options = options_class()
            options.parseOptions(rest)
        except usage.UsageError as e:
            run.got_err("ion-events: %s\n" % (e,))
            run.ended(2)
            return
        d = ion_events.run(command, options, output, self.connection, stopped)

        def failed(failure):
            failure.trap(usage.UsageError)
            run.got_err("ion-events: %s\n" % (failure.value,))
            return 2

        d.addErrback(failed).addCallback(run.ended)

    def interrupt(self, run):
        if self.on_rabbit:
            run.transport.signalProcess("INT")
        else:
            run.interrupt()

    def _kill(self, run):
        if not run.exited.called:
            run.transport.signalProcess("KILL")
            return run.exited

    def publisher(self, cls=events.InfoLoggingEventPublisher, origin="tool"):
        pub = cls(process=self.proc, origin=origin)
        return self.proc.register_life_cycle_object(pub).addCallback(lambda _: pub)



class IonEventsTests(IonEventsRunner):
    # --- tail -----------------------------------------------------------
    @defer.inlineCallbacks
    def test_tail_json_count_by_id_and_origin_pattern(self):
        info = yield self.publisher()
        error = yield self.publisher(events.ErrorLoggingEventPublisher)
        yield info.create_and_publish_event(origin="tool.a", name="before the tail")
        run = self.ion_events("tail", "--json", "--count", "3", "InfoLogging", "--origin", "tool.*")
        yield run.ready
        yield error.create_and_publish_event(origin="tool.a", name="other id")
        yield info.create_and_publish_event(origin="elsewhere", name="other origin")
        yield info.create_and_publish_event(origin="tool.a.b", name="two words")
        for i in range(3):
            yield info.create_and_publish_event(origin="tool.x%d" % i, name="e%d" % i, status="ERROR")
        code = yield run.exited
        self.assertEqual(code, 0, run.err)
        records = [json.loads(line) for line in run.lines()]
        self.assertEqual([r["fields"]["name"] for r in records], ["e0", "e1", "e2"])
        self.assertEqual(records[0]["routing_key"], "3003.tool.x0")
        self.assertEqual((records[0]["event_id"], records[0]["event"]), (3003, "InfoLogging"))
        self.assertEqual(records[0]["fields"]["status"], "ERROR")
        self.assertEqual(records[0]["payload_type"], "LoggingEventMessage")

    @defer.inlineCallbacks
    def test_tail_lines_until_interrupted(self):
        pub = yield self.publisher(events.ProcessLifecycleEventPublisher)
        run = self.ion_events("tail", "1052", "--origin", "cli-proc")
        yield run.ready
        yield pub.create_and_publish_event(origin="cli-proc", state="ACTIVE", name="one")
        yield pub.create_and_publish_event(origin="cli-proc", state="TERMINATED", name="two")
        yield wait_for(lambda: len(run.lines()) == 2, timeout=30)
        self.interrupt(run)
        code = yield run.exited
        self.assertEqual(code, 0, run.err)
        self.assertIn("ion-events: 2 events seen", run.err)
        first = run.lines()[0].split(" ")
        self.assertEqual(first[1:4], ["1052", "ProcessLifecycle", "cli-proc"])
        self.assertIn("name=one", first)
        self.assertIn("state=ACTIVE", first)

    @defer.inlineCallbacks
    def test_tail_full_shows_every_field(self):
        pub = yield self.publisher(events.ProcessLifecycleEventPublisher)
        run = self.ion_events("tail", "--full", "--count", "1", "ProcessLifecycleEventSubscriber", "--origin", "full")
        yield run.ready
        yield pub.create_and_publish_event(origin="full", state="ACTIVE", name="x")
        self.assertEqual((yield run.exited), 0, run.err)
        lines = [line.strip() for line in run.lines()]
        self.assertEqual(lines[0], "1052 ProcessLifecycle  (routing key 1052.full)")
        for expected in ("name: x", "status: IN_PROGRESS", "user_id:", "payload ResourceLifecycleEventMessage:",
                         "state: ACTIVE"):
            self.assertIn(expected, lines)

    @defer.inlineCallbacks
    def test_tail_queue_is_bounded_and_says_when_it_drops(self):
        run = Run()
        output = ion_events.Output(out=_OutStream(run), err=_ErrStream(run))
        options = ion_events.TailOptions()
        options.parseOptions(["--queue-limit", "3", "3003", "--origin", "bounded"])
        watcher = ion_events.Tail(options, output)
        yield watcher.start()
        self.addCleanup(watcher.stop)
        (sub,) = watcher.subscribers
        config = sub.consumer_config
        self.assertEqual((config["queue"], config["auto_delete"], config["durable"]), (None, True, False))
        self.assertEqual(config["arguments"], {"x-max-length": 3, "x-overflow": "drop-head", "x-queue-type": "classic"})
        held = []
        sub.ondata = lambda data: held.append(defer.Deferred()) or held[-1]  # a tail that has stopped reading

        def read_again():
            sub.ondata = lambda data: None
            for d in held:
                d.called or d.callback(None)

        self.addCleanup(read_again)
        pub = yield self.publisher(origin="bounded")
        for i in range(6):
            yield pub.create_and_publish_event(name="n%d" % i)
        yield wait_for(lambda: "is full (3 events): the oldest are being dropped" in run.err, timeout=15)

    # --- publish --------------------------------------------------------
    @defer.inlineCallbacks
    def test_publish_reaches_a_subscriber_with_every_field(self):
        collector = Collector()
        yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.ProcessLifecycleEventSubscriber, origin="cli-pub", handler=collector)
        run = self.ion_events(
            "publish", "ProcessLifecycle", "--origin", "cli-pub", "name=n", "description=a description",
            "status=CACHED", "body=b", "user_id=u", "data_resource_id=r", "datetime=12.5", "state=TERMINATED")
        code = yield run.exited
        self.assertEqual(code, 0, run.err)
        self.assertEqual(run.lines(), ["published 1052.cli-pub (confirmed by the broker)"])
        (data,) = yield collector.wait(1)
        event = data["content"]
        record = event_catalog.event_record(data["receiver"], event)
        self.assertEqual(record["fields"], {
            "name": "n", "description": "a description", "status": "CACHED", "body": "b", "user_id": "u",
            "data_resource_id": "r", "datetime": 12.5, "origin": "cli-pub"})
        self.assertEqual(record["payload"], {"state": "TERMINATED"})

    # --- dead letters ---------------------------------------------------
    @defer.inlineCallbacks
    def test_dead_letters_list_show_requeue_purge(self):
        refused = []
        accepted = Collector()

        def handler(data):
            if data["content"].name == "poison" and not refused:
                refused.append(data)
                raise ValueError("handler refuses the poison")
            accepted(data)

        sub = yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin="dl", handler=handler, dead_letter=True)
        pub = yield self.publisher(origin="dl")
        yield pub.create_and_publish_event(name="poison")
        name = dead_letters.dead_letter_name()
        yield self.until_depth(name, 1)
        self.flushLoggedErrors(ValueError)

        run = self.ion_events("dead-letters", "list")
        self.assertEqual((yield run.exited), 0, run.err)
        self.assertEqual(run.lines()[0], "1. 3003.dl  attempts 1  subscriber %s  queue %s" % (sub._sub_name, sub.queue))
        self.assertEqual(run.lines()[1].strip(), "reason: ValueError: handler refuses the poison")
        run = self.ion_events("dead-letters", "show", "1")
        self.assertEqual((yield run.exited), 0, run.err)
        self.assertIn("original_exchange: %s" % (events.get_events_exchange_point(),), run.out)
        self.assertEqual((yield self.connection.queue_depth(name)), 1)  # looking leaves it there

        run = self.ion_events("dead-letters", "requeue")
        self.assertEqual((yield run.exited), 0, run.err)
        self.assertEqual(run.lines(), ["requeued 1 dead letters to their original routes"])
        yield accepted.wait(1)
        self.assertEqual(accepted.names(), ["poison"])
        self.assertEqual((yield self.connection.queue_depth(name)), 0)

        refused.clear()
        yield pub.create_and_publish_event(name="poison")
        yield self.until_depth(name, 1)
        self.flushLoggedErrors(ValueError)
        run = self.ion_events("dead-letters", "purge", "--yes")
        self.assertEqual((yield run.exited), 0, run.err)
        self.assertEqual(run.lines(), ["purged 1 dead letters from %s" % (name,)])
        self.assertEqual((yield self.connection.queue_depth(name)), 0)

    @defer.inlineCallbacks
    def until_depth(self, queue, depth):
        depths = []

        @defer.inlineCallbacks
        def check():
            depths.append((yield self.connection.queue_depth(queue)))

        yield check()
        while depths[-1] != depth:
            self.assertLess(len(depths), 600, "queue %s never held %d (depths %s)" % (queue, depth, depths[-5:]))
            yield task.deferLater(reactor, 0.05, lambda: None)
            yield check()

    # --- usage errors ---------------------------------------------------
    @defer.inlineCallbacks
    def test_bad_arguments_exit_2_with_one_line(self):
        cases = [
            (["tail", "Nope"], "no event named 'Nope'"),
            (["tail", "--count", "x"], "--count"),
            (["publish", "3003"], "--origin is required"),
            (["publish", "3003", "--origin", "x", "nam=1"], "unused kwargs remaining ({'nam': 1})"),
            (["publish", "3003", "--origin", "x", "name=1"], None),  # a str field: "1" is text
            (["publish", "1052", "--origin", "x", "state=ON"], "state='ON' is not a name of state"),
            (["publish", "3003", "--origin", "a*"], "contains a wildcard"),
            (["dead-letters", "frob"], "expected list, show N, requeue or purge, not 'frob'"),
            (["dead-letters", "show"], "show takes a number N"),
        ]
        for argv, message in cases:
            run = self.ion_events(*argv)
            code = yield run.exited
            if message is None:
                self.assertEqual(code, 0, (argv, run.err))
                continue
            self.assertEqual(code, 2, (argv, run.err))
            self.assertEqual(len(run.err.strip().splitlines()), 1, (argv, run.err))
            self.assertIn(message, run.err, argv)


IonEventsMemoryTest, IonEventsRabbitTest = for_each_broker(IonEventsTests, globals(), base=IonTestCase)


class ScriptTest(unittest.TestCase):
    """What needs no broker, or refuses one, as a subprocess."""

    def script(self, *argv):
        return run_script(*argv)

    @defer.inlineCallbacks
    def test_types(self):
        out, err, code = yield self.script("types")
        self.assertEqual(code, 0, err)
        self.assertIn("3003  InfoLogging", out)
        out, err, code = yield self.script("types", "LOGGING_INFO")
        self.assertEqual(code, 0, err)
        self.assertIn("publishers:  InfoLoggingEventPublisher", out)
        self.assertIn("status: enum Status (IN_PROGRESS, CACHED, ERROR, NO_CACHE)", out)

    @defer.inlineCallbacks
    def test_help_for_each_subcommand(self):
        for command in ("tail", "publish", "types", "dead-letters", "history", "replay"):
            out, err, code = yield self.script(command, "--help")
            self.assertEqual(code, 0, err)
            self.assertIn("--help", out)

    @defer.inlineCallbacks
    def test_embedded_broker_and_missing_sysname_are_usage_errors(self):
        _out, err, code = yield self.script("tail")
        self.assertEqual((code, err.count("\n")), (2, 1), err)
        self.assertIn("embedded broker lives inside one container's process", err)
        _out, err, code = yield self.script("-h", "127.0.0.1", "tail")
        self.assertEqual(code, 2, err)
        self.assertIn("give -s/--sysname", err)

    @defer.inlineCallbacks
    def test_broker_down_is_one_line_exit_1(self):
        _out, err, code = yield self.script("-h", "127.0.0.1", "-p", "1", "-s", "x", "dead-letters", "list")
        self.assertEqual(code, 1, err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("cannot connect", err)
