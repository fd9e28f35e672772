"""
`ion-events history`, `replay` and `tail --since` on both databases; those
that need a broker on both brokers too (4 classes).  The commands run as the
console script's subprocess wherever a separate process can reach the
broker and store (RabbitMQ; history needs no broker at all), in-process on
the embedded broker (see test_ion_events).
"""

import io
import json

from twisted.internet import defer
from twisted.python import usage
from twisted.trial import unittest

from ion.services.dm.distribution import events
from ion.services.dm.inventory.event_persister import EventPersister
from ion.services.dm.inventory.event_replay import REPLAY_HEADER
from ion.test.iontest import IonTestCase
from ion.tools import event_history, ion_events
from test.brokers import BROKER_URLS, for_each, wait_for
from test.databases import DATABASES, DatabaseTestMixin, for_each_database
from test.test_event_repository import CollectingSubscriber
from test.test_event_store import make_row
from test.test_ion_events import IonEventsRunner, run_script


class ParseTimeTest(unittest.TestCase):
    def test_ages_and_iso(self):
        self.assertEqual(event_history.parse_time("10m", now=1000.0), 400.0)
        self.assertEqual(event_history.parse_time("1d", now=86400.0), 0.0)
        self.assertEqual(event_history.parse_time("1970-01-01T00:01:00"), 60.0)
        self.assertEqual(event_history.parse_time("1970-01-01T01:00:00+01:00"), 0.0)

    def test_bad_time_named(self):
        with self.assertRaises(usage.UsageError) as caught:
            event_history.parse_time("yesterday")
        self.assertIn("yesterday", str(caught.exception))


class HistoryScriptTests(DatabaseTestMixin):
    """`ion-events history` (no broker) as a subprocess of the console script."""

    timeout = 60

    @defer.inlineCallbacks
    def test_filters_formats_and_limit(self):
        url = yield self.store_url()
        store = yield self.open_store(url)
        yield store.insert([make_row("proc.a", 100.0), make_row("proc.b", 200.0, name="B"),
                            make_row("other", 300.0, event_id=3002), make_row("proc.a.x", 400.0)])
        out, err, code = yield run_script("history", "3003", "--origin", "proc.*", "--store", url)
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        self.assertTrue(lines[0].startswith("1970-01-01T00:03:20+00:00 3003 proc.b B"), lines[0])
        out, err, code = yield run_script("history", "--json", "--store", url, "--until", "1970-01-01T00:02:00")
        self.assertEqual(code, 0, err)
        (shown,) = [json.loads(line) for line in out.splitlines()]
        self.assertEqual((shown["origin"], shown["time"]), ("proc.a", "1970-01-01T00:01:40+00:00"))
        self.assertNotIn("body", shown)
        out, err, code = yield run_script("history", "--limit", "3", "--since", "1970-01-01T00:01:41", "--store", url)
        self.assertEqual([line.split(" ")[2] for line in out.splitlines()], ["proc.a.x", "other", "proc.b"])
        out, err, code = yield run_script("history", "InfoLogging", "LOGGING_ERROR", "--limit", "2", "--store", url)
        self.assertEqual([line.split(" ")[1] for line in out.splitlines()], ["3003", "3002"])

    @defer.inlineCallbacks
    def test_dry_run_replay_lists_oldest_first(self):
        url = yield self.store_url()
        store = yield self.open_store(url)
        yield store.insert([make_row("proc.a", 100.0, name="first"), make_row("proc.a", 200.0, name="second")])
        out, err, code = yield run_script("replay", "--dry-run", "--origin", "proc.a", "--store", url)
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual([line.split(" ")[3] for line in lines[:2]], ["first", "second"])
        self.assertEqual(lines[2], "would replay 2 events to their routing keys")

    @defer.inlineCallbacks
    def test_bad_arguments_exit_2_with_one_line(self):
        url = yield self.store_url()
        cases = [
            (["history", "--since", "yesterday"], "--since: 'yesterday' is neither an age"),
            (["history", "--limit", "0"], "--limit must be a whole number"),
            (["history", "Nope"], "no event named 'Nope'"),
            (["history", "--store", "sqlite:"], "names no SQLite file"),
            (["replay", "--dry-run", "--rate", "fast"], "--rate must be a number"),
            (["replay", "--dry-run", "3003", "3002"], "one EVENT at most, not 2"),
            (["replay", "--dry-run", "--store", "sqlite:"], "names no SQLite file"),
            (["replay"], "embedded broker"),
            (["history", "--store", "/nonexistent/events.sqlite"], "no event store at /nonexistent/events.sqlite"),
        ]
        for argv, message in cases:
            if "--store" not in argv:
                argv = argv + ["--store", url]
            _out, err, code = yield run_script(*argv)
            self.assertEqual((code, len(err.strip().splitlines())), (2, 1), (argv, err))
            self.assertIn(message, err, argv)

    @defer.inlineCallbacks
    def test_store_down_is_one_line_exit_1(self):
        _out, err, code = yield run_script("history", "--store", "postgresql://postgres@127.0.0.1:1/none")
        self.assertEqual((code, err.count("\n")), (1, 1), err)
        self.assertIn("OperationalError", err)


for_each_database(HistoryScriptTests, globals())


class _GatedStore:
    """The real store, but find_events waits for `gate`: lets a test put live events in tail's catch-up window."""

    def __init__(self, store):
        self.store = store
        self.gate = defer.Deferred()
        self.asked = False

    @defer.inlineCallbacks
    def find_events(self, **query):
        self.asked = True
        yield self.gate
        found = yield self.store.find_events(**query)
        return found


class HistoryLiveTests(IonEventsRunner, DatabaseTestMixin):
    """tail --since and replay: a persister of this test's container fills the store the commands read."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.url = yield self.store_url()
        self.persister = EventPersister(spawnargs={
            "queue": self.unique_name("persist"), "store": self.url, "event_id": events.LOGGING_INFO_EVENT_ID,
            "batch_size": 20, "batch_interval": 0.01})
        yield self.persister.spawn()
        self.addCleanup(self.container.exchange_manager.delete_queue, self.persister.queue)
        self.addCleanup(self.persister.terminate_unless_over)
        self.pub = yield self.publisher(origin="hist.src")

    @defer.inlineCallbacks
    def publish(self, *names):
        for name in names:
            yield self.pub.create_and_publish_event(origin="hist.src", name=name)

    @defer.inlineCallbacks
    def publish_stored(self, *names):
        before = self.persister.stats["stored"]
        yield self.publish(*names)
        yield wait_for(lambda: self.persister.stats["stored"] >= before + len(names), timeout=30)

    @defer.inlineCallbacks
    def test_tail_since_then_live_no_gap_no_duplicate(self):
        yield self.publish_stored("h0", "h1", "h2")
        run = self.ion_events("tail", "--since", "10m", "--json", "--count", "6", "InfoLogging",
                              "--origin", "hist.*", "--store", self.url)
        yield run.ready
        yield self.publish("l0", "l1", "l2")
        code = yield run.exited
        self.assertEqual(code, 0, run.err)
        records = [json.loads(line) for line in run.lines()]
        self.assertEqual([r["fields"]["name"] for r in records], ["h0", "h1", "h2", "l0", "l1", "l2"])
        self.assertEqual(records[0]["routing_key"], "3003.hist.src")

    @defer.inlineCallbacks
    def test_tail_since_skips_live_events_it_read_stored(self):
        """Events that arrive live while the stored ones are read, and are stored by then, print once."""
        yield self.publish_stored("h0", "h1")
        options = ion_events.TailOptions()
        options.parseOptions(["--since", "1h", "--count", "5", "--json", "3003", "--origin", "hist.src"])
        store = _GatedStore(self.persister.store)
        out = io.StringIO()
        tail = ion_events.Tail(options, ion_events.Output(out=out, err=io.StringIO()), store=store)
        started = tail.start()
        self.addCleanup(tail.stop)
        yield wait_for(lambda: store.asked, timeout=30)
        yield self.publish_stored("l0", "l1")  # live (held) and stored
        yield wait_for(lambda: len(tail._held) == 2, timeout=30)
        store.gate.callback(None)
        yield started
        yield self.publish("l2")
        yield tail.done
        names = [json.loads(line)["fields"]["name"] for line in out.getvalue().splitlines()]
        self.assertEqual(names, ["h0", "h1", "l0", "l1", "l2"])

    @defer.inlineCallbacks
    def test_tail_since_several_events_merged_in_time_order(self):
        rows = [make_row("m.a", 100.0), make_row("m.b", 200.0, event_id=3002), make_row("m.c", 300.0),
                make_row("m.d", 400.0, event_id=1052)]
        yield self.persister.store.insert(rows)
        options = ion_events.TailOptions()
        options.parseOptions(["--since", "1970-01-01T00:00:00", "--count", "3", "3003", "3002", "--store", self.url])
        out = io.StringIO()
        tail = ion_events.Tail(options, ion_events.Output(out=out, err=io.StringIO()))
        yield tail.start()
        self.addCleanup(tail.stop)
        seen = yield tail.done
        self.assertEqual(seen, 3)
        self.assertEqual([line.split(" ")[3] for line in out.getvalue().splitlines()], ["m.a", "m.b", "m.c"])

    @defer.inlineCallbacks
    def test_replay_to_queue_marked_in_order(self):
        yield self.publish_stored("r0", "r1", "r2")
        sub = CollectingSubscriber(process=self.proc, origin="nobody", queue_name=self.unique_name("replayq"))
        yield self.proc.register_life_cycle_object(sub)
        self.addCleanup(self.container.exchange_manager.delete_queue, sub.queue)
        run = self.ion_events("replay", "3003", "--origin", "hist.#", "--to-queue", sub.queue, "--rate", "500",
                              "--store", self.url)
        code = yield run.exited
        self.assertEqual(code, 0, run.err)
        self.assertEqual(run.lines(), ["replayed 3 events to queue %s" % (sub.queue,)])
        yield wait_for(lambda: len(sub.got) == 3, timeout=30)
        self.assertEqual([data["content"].name for data, _d in sub.got], ["r0", "r1", "r2"])
        self.assertTrue(all(REPLAY_HEADER in d.properties["headers"] for _data, d in sub.got))
        run = self.ion_events("replay", "--to-queue", self.unique_name("nosuchq"), "--store", self.url)
        code = yield run.exited
        self.assertEqual(code, 2, run.err)
        self.assertIn("there is no queue", run.err)


for _broker_suffix, _broker_url in BROKER_URLS:
    for _made in for_each(HistoryLiveTests, {"__name__": __name__}, "database", DATABASES, IonTestCase):
        _name = _made.__name__.replace("Test", _broker_suffix + "Test")
        globals()[_name] = type(_name, (_made,), {"broker_url": _broker_url, "__module__": __name__})
del _made
