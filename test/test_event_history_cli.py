"""ion-history on SQLite and PostgreSQL: time arguments, filters, text and JSON lines."""

import argparse
import io
import json

from twisted.internet import defer
from twisted.trial import unittest

from ion.interact import event_history
from test.databases import DatabaseTestMixin, for_each_database
from test.test_event_store import make_row


class ParseTimeTest(unittest.TestCase):
    def test_ages_and_iso(self):
        self.assertEqual(event_history.parse_time("10m", now=1000.0), 400.0)
        self.assertEqual(event_history.parse_time("1d", now=86400.0), 0.0)
        self.assertEqual(event_history.parse_time("1970-01-01T00:01:00"), 60.0)
        self.assertEqual(event_history.parse_time("1970-01-01T01:00:00+01:00"), 0.0)

    def test_bad_time_named(self):
        with self.assertRaises(argparse.ArgumentTypeError) as caught:
            event_history.parse_time("yesterday")
        self.assertIn("yesterday", str(caught.exception))


class HistoryCommandTests(DatabaseTestMixin):
    @defer.inlineCallbacks
    def test_filters_and_formats(self):
        url = yield self.store_url()
        store = yield self.open_store(url)
        yield store.insert([make_row("proc.a", 100.0), make_row("proc.b", 200.0, name="B"),
                            make_row("other", 300.0, event_id=3002)])
        out = io.StringIO()
        args = event_history.parser().parse_args(["3003", "--origin", "proc.*", "--store", url])
        count = yield event_history.show(args, out)
        self.assertEqual(count, 2)
        lines = out.getvalue().splitlines()
        self.assertTrue(lines[0].startswith("1970-01-01T00:03:20+00:00 3003 proc.b B"), lines[0])
        out = io.StringIO()
        args = event_history.parser().parse_args(["--json", "--store", url, "--until", "1970-01-01T00:02:00"])
        yield event_history.show(args, out)
        (shown,) = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual((shown["origin"], shown["time"]), ("proc.a", "1970-01-01T00:01:40+00:00"))
        self.assertNotIn("body", shown)


for_each_database(HistoryCommandTests, globals())
