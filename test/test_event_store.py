"""The event store on SQLite and the real PostgreSQL: schema, dedup, exact bodies, queries, paging, retention."""

from twisted.internet import defer
from twisted.trial import unittest

from ion.core import ioninit

from ion.core.messaging import envelope
from ion.core.messaging.broker.topic import matches
from ion.core.object.message_instance import new_message_instance
from ion.services.dm.distribution import events
from ion.core.object.codec import CodecError
from ion.core.object.object_utils import is_repeated
from ion.services.dm.inventory.event_rows import event_row, parse_raw_event, raw_event_row
from ion.services.dm.inventory.event_store import EventStore, StoreError
from ion.tools import event_catalog
from test.databases import DatabaseTestMixin, for_each_database


def make_row(origin, when, event_id=3003, name="E", received=0.0):
    """A store row of a real encoded logging event."""
    msg = new_message_instance(events.EVENT_MESSAGE_TYPE)
    msg.name, msg.origin, msg.datetime = name, origin, when
    payload = msg.CreateObject(events.LOGGING_EVENT_MESSAGE_TYPE)
    msg.additional_data = payload
    key = "%d.%s" % (event_id, origin)
    sent = envelope.encode("sender", key, None, msg)
    return event_row(envelope.decode(sent.body), sent.body, key, received)


class StoreTests(DatabaseTestMixin):
    @defer.inlineCallbacks
    def test_schema_made_on_first_use_and_reopened(self):
        url = yield self.store_url()
        first = yield self.open_store(url)
        yield first.insert([make_row("a", 1.0)])
        first.close()
        again = yield self.open_store(url)
        found, _ = yield again.find_events()
        self.assertEqual([r["origin"] for r in found], ["a"])

    @defer.inlineCallbacks
    def test_duplicates_skipped_by_content_key(self):
        store = yield self.open_store()
        row = make_row("a", 1.0)
        added = yield store.insert([row, dict(row), make_row("a", 2.0)])
        self.assertEqual(added, 2)
        added = yield store.insert([dict(row)])
        self.assertEqual(added, 0)
        found, _ = yield store.find_events()
        self.assertEqual(len(found), 2)

    @defer.inlineCallbacks
    def test_body_exact_and_event_decoded(self):
        store = yield self.open_store()
        row = make_row("proc.1", 5.5, name="hello")
        yield store.insert([row])
        (record,), cursor = yield store.find_events(origin="proc.1")
        self.assertIsNone(cursor)
        self.assertEqual(record["body"], row["body"])
        self.assertEqual(record["content_key"], row["content_key"])
        self.assertEqual(record["event_id"], 3003)
        self.assertEqual(record["routing_key"], "3003.proc.1")
        self.assertEqual(record["fields"]["name"], "hello")
        self.assertEqual(record.message["content"].name, "hello")
        self.assertEqual(record.message["content"].datetime, 5.5)

    @defer.inlineCallbacks
    def test_newest_first_time_range_and_event_id(self):
        store = yield self.open_store()
        yield store.insert([make_row("a", float(t), event_id=3003 if t % 2 else 3002) for t in range(10)])
        found, _ = yield store.find_events(limit=3)
        self.assertEqual([r["event_time"] for r in found], [9.0, 8.0, 7.0])
        found, _ = yield store.find_events(start=2, end=5, descending=False)
        self.assertEqual([r["event_time"] for r in found], [2.0, 3.0, 4.0])
        found, _ = yield store.find_events(event_id=3002)
        self.assertEqual([r["event_time"] for r in found], [8.0, 6.0, 4.0, 2.0, 0.0])

    @defer.inlineCallbacks
    def test_keyset_paging_covers_everything_once(self):
        store = yield self.open_store()
        # Equal times: the row id breaks the tie, so no page repeats or skips one.
        yield store.insert([make_row("a", float(t // 3)) for t in range(25)])
        for descending in (True, False):
            seen, after = [], None
            while True:
                page, after = yield store.find_events(limit=4, descending=descending, after=after)
                seen += [r["row"] for r in page]
                if after is None:
                    break
            self.assertEqual(len(seen), 25)
            self.assertEqual(seen, sorted(set(seen), key=seen.index))
        with self.assertRaises(StoreError):
            yield store.find_events(after="nonsense")

    @defer.inlineCallbacks
    def test_origin_patterns_follow_the_topic_rules(self):
        store = yield self.open_store()
        origins = ["a", "a.b", "a.b.c", "a.bc", "a-b", "b.a", "a.b.c.d", "x.b.c"]
        yield store.insert([make_row(o, float(i)) for i, o in enumerate(origins)])
        for pattern in ("a", "a.#", "a.*", "a.b.#", "*.b.*", "#.c", "#", "*", "a.*.c", "#.b.#", "a.b"):
            found, _ = yield store.find_events(origin=pattern, limit=100)
            expected = sorted(o for o in origins if matches(pattern, o))
            self.assertEqual(sorted(r["origin"] for r in found), expected, pattern)

    @defer.inlineCallbacks
    def test_pattern_paging_past_rows_it_turns_away(self):
        store = yield self.open_store()
        yield store.insert([make_row("a.x" if t % 50 else "a.y.z", float(t)) for t in range(500)])
        page, after = yield store.find_events(origin="a.*.z", limit=3)
        self.assertEqual([r["event_time"] for r in page], [450.0, 400.0, 350.0])
        page, after = yield store.find_events(origin="a.*.z", limit=10, after=after)
        self.assertEqual([r["event_time"] for r in page], [300.0, 250.0, 200.0, 150.0, 100.0, 50.0, 0.0])
        self.assertIsNone(after)

    @defer.inlineCallbacks
    def test_retention_bounded_per_run(self):
        store = yield self.open_store()
        yield store.insert([make_row("a", float(t)) for t in range(10)])
        removed = yield store.delete_older_than(7, limit=4)
        self.assertEqual(removed, 4)
        removed = yield store.delete_older_than(7, limit=4)
        self.assertEqual(removed, 3)
        found, _ = yield store.find_events()
        self.assertEqual([r["event_time"] for r in found], [9.0, 8.0, 7.0])

    @defer.inlineCallbacks
    def test_bad_arguments_named(self):
        store = yield self.open_store()
        for kwargs in ({"limit": 0}, {"limit": "5"}, {"origin": 5}):
            with self.assertRaises(StoreError) as caught:
                yield store.find_events(**kwargs)
            self.assertIn(next(iter(kwargs)), str(caught.exception))


for_each_database(StoreTests, globals())



class StoreLocationTests(unittest.TestCase):
    def test_bad_locations_named(self):
        for url in ("sqlite:", 5):
            self.assertRaises(StoreError, EventStore, url)

    def test_location_from_container_arg_then_config(self):
        self.patch(ioninit, "cont_args", {"event_store": "sqlite:/tmp/x.sqlite"})
        self.assertEqual(EventStore().url, "sqlite:/tmp/x.sqlite")
        self.assertEqual(EventStore("postgresql://h/db").dialect, "postgresql")
        self.patch(ioninit, "cont_args", {})
        self.assertEqual(EventStore().dialect, "sqlite")


def _sample(field):
    """A value for a scalar protobuf field: the last enum value, text, bytes, a bool or a number."""
    if field.enum_type is not None:
        return field.enum_type.values[-1].number
    if field.type == field.TYPE_STRING:
        return "text-" + field.name
    if field.type == field.TYPE_BYTES:
        return b"\x01\xff"
    if field.type == field.TYPE_BOOL:
        return True
    return 1.5 if field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT) else 7


class RawRowTest(unittest.TestCase):
    """The persister's raw path gives the row the decoded path gives, for every event type."""

    def encoded(self, event_id, fill=True):
        msg = new_message_instance(events.EVENT_MESSAGE_TYPE)
        msg.name, msg.origin, msg.datetime = "n", "o.p", 12.5
        publisher = event_catalog.find(str(event_id)).publisher
        if fill and publisher is not None and publisher.msg_type is not None:
            payload = msg.CreateObject(publisher.msg_type)
            gpb = payload.GPBMessage
            for field in gpb.DESCRIPTOR.fields:
                if field.message_type is None:
                    if is_repeated(field):
                        getattr(gpb, field.name).extend([_sample(field), _sample(field)])
                    else:
                        setattr(gpb, field.name, _sample(field))
            msg.additional_data = payload
        key = "%d.o.p" % (event_id,)
        return envelope.encode("sender", key, None, msg).body, key

    def test_same_row_for_every_event_type(self):
        for kind in event_catalog.all_types():
            for fill in (True, False):
                body, key = self.encoded(kind.event_id, fill)
                decoded = event_row(envelope.decode(body), body, key, 1.0)
                raw = raw_event_row(parse_raw_event(envelope.decode(body, raw=True)["content"]), body, key, 1.0)
                self.assertEqual(raw, decoded, kind.name)

    def test_not_an_event_is_a_codec_error(self):
        with self.assertRaises(CodecError):
            parse_raw_event(b"\x00garbage")
        other = new_message_instance(events.LOGGING_EVENT_MESSAGE_TYPE)  # an IonMsg, but not of an EventMessage
        sent = envelope.encode("sender", "3003.o", None, other)
        with self.assertRaises(CodecError) as caught:
            parse_raw_event(envelope.decode(sent.body, raw=True)["content"])
        self.assertIn("not an event", str(caught.exception))
        body, key = self.encoded(3003)
        with self.assertRaises(CodecError):
            raw_event_row(parse_raw_event(envelope.decode(body, raw=True)["content"]), body, "no-id", 1.0)
