"""
The event persister on both brokers (the store on SQLite; one class on
PostgreSQL too): every event stored once, batches bounded by size and time
on an injected clock, acks only after the commit, a refusing store leaves
the events in the queue and is logged once per outage, retention.
"""

from twisted.internet import defer, task
from twisted.logger import LogLevel, globalLogPublisher

from ion.core.messaging import envelope
from ion.core.object.message_instance import new_message_instance
from ion.core.object.gpb.net.ooici.core.container.container_pb2 import Structure
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.inventory.event_persister import EventPersister
from ion.test.iontest import IonTestCase
from test.brokers import RABBIT_URL, BrokerTestMixin, for_each_broker, wait_for
from test.databases import DatabaseTestMixin


class RefusingStore:
    """A real store that refuses every write while `down` is true (the database is 'down')."""

    def __init__(self, store):
        self._store = store
        self.url = store.url
        self.down = False

    def open(self):
        return self._store.open()

    def close(self):
        self._store.close()

    def insert(self, rows):
        if self.down:
            return defer.fail(ConnectionError("store is down"))
        return self._store.insert(rows)

    def __getattr__(self, name):
        return getattr(self._store, name)


class PersisterFixture(BrokerTestMixin, DatabaseTestMixin):
    """A container, a tester process, a queue name and a store URL per test; persisters made on demand."""

    database = "sqlite"
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.sysname = self.unique_name("hist")
        yield self._start_container(sysname=self.sysname)
        self.addCleanup(self._stop_container)
        self.proc = Process(spawnargs={"proc-name": "history-tester"})
        yield self.proc.spawn()
        self.queue = self.unique_name("persist")
        self.url = yield self.store_url()

    @defer.inlineCallbacks
    def spawn_persister(self, store=None, clock=None, **spawnargs):
        spawnargs.setdefault("queue", self.queue)
        # Only the tests' logging events, unless a test asks for every event (lifecycle events too).
        spawnargs.setdefault("event_id", events.LOGGING_INFO_EVENT_ID)
        spawnargs.setdefault("store", self.url)
        kwargs = {"clock": clock} if clock is not None else {}
        persister = EventPersister(spawnargs=spawnargs, store=store, **kwargs)
        yield persister.spawn()
        self.addCleanup(self._drop_queue, persister.queue)
        self.addCleanup(persister.terminate_unless_over)
        return persister

    def _drop_queue(self, queue):
        if self.container is not None:
            return self.container.exchange_manager.delete_queue(queue)

    @defer.inlineCallbacks
    def publisher(self, origin, persistent=False):
        pub = events.InfoLoggingEventPublisher(process=self.proc, origin=origin, persistent=persistent)
        yield self.proc.register_life_cycle_object(pub)
        return pub

    @defer.inlineCallbacks
    def stored(self, persister, **query):
        records, _ = yield persister.store.find_events(limit=1000, **query)
        return records

    @defer.inlineCallbacks
    def wait_stored(self, persister, count):
        yield wait_for(lambda: persister.stats["stored"] >= count, timeout=30)
        records = yield self.stored(persister)
        self.assertEqual(len(records), count)
        return records



class PersisterTests(PersisterFixture):
    @defer.inlineCallbacks
    def test_every_event_stored_once_with_its_exact_body(self):
        persister = yield self.spawn_persister(batch_size=10, batch_interval=0.05, event_id=None)
        pub = yield self.publisher("proc.a")
        other = yield self.publisher("proc.b")
        for i in range(25):
            yield (pub if i % 2 else other).create_and_publish_event(name="e%d" % i)
        yield wait_for(lambda: persister.stats["stored"] >= 25, timeout=30)
        yield wait_for(lambda: not persister._pending and not persister._writing)
        records = yield self.stored(persister, origin="proc.*")
        self.assertEqual(len(records), 25)
        lifecycle = yield self.stored(persister, event_id=events.PROCESS_LIFECYCLE_EVENT_ID)
        self.assertTrue(lifecycle, "the persister's own lifecycle events are stored too")
        self.assertEqual(sorted(r["name"] for r in records), sorted("e%d" % i for i in range(25)))
        self.assertEqual({r["routing_key"] for r in records}, {"3003.proc.a", "3003.proc.b"})
        # The content key is the SHA-1 key of the IonMsg head in the exact body stored.
        heads = {Structure.FromString(envelope.unpack_body(r["body"])["content"]).head.key.hex() for r in records}
        self.assertEqual({r["content_key"] for r in records}, heads)
        self.assertEqual(len(heads), 25)
        self.assertEqual(records[0].message["content"].name, records[0]["name"])
        depth = yield self.container.exchange_manager.queue_depth(persister.queue)
        self.assertEqual(depth, 0)

    @defer.inlineCallbacks
    def test_resent_event_is_one_row(self):
        persister = yield self.spawn_persister(batch_size=1)
        pub = yield self.publisher("proc.a")
        event = yield pub.create_and_publish_event(name="once")
        yield pub.publish_event(event)  # a publisher re-sending after a reconnect
        yield wait_for(lambda: persister.stats["stored"] + persister.stats["duplicates"] >= 2)
        self.assertEqual(persister.stats, dict(persister.stats, stored=1, duplicates=1))
        records = yield self.stored(persister)
        self.assertEqual([r["name"] for r in records], ["once"])

    @defer.inlineCallbacks
    def test_what_is_not_an_event_is_rejected_not_stored(self):
        persister = yield self.spawn_persister(batch_size=1)
        exchange = events.get_events_exchange_point()
        not_an_event = new_message_instance(events.LOGGING_EVENT_MESSAGE_TYPE)  # an IonMsg of another object
        for body in (b"not msgpack", envelope.encode("me", "3003.x", None, not_an_event).body):
            yield self.container.exchange_manager.publish_raw(exchange, "3003.x", body)
        pub = yield self.publisher("proc.a")
        yield pub.create_and_publish_event(name="real")
        yield self.wait_stored(persister, 1)
        self.assertEqual(persister._subscriber.stats["undecodable"], 2)
        depth = yield self.container.exchange_manager.queue_depth(persister.queue)
        self.assertEqual(depth, 0)

    @defer.inlineCallbacks
    def test_batches_bounded_by_size_and_time(self):
        clock = task.Clock()
        persister = yield self.spawn_persister(clock=clock, batch_size=5, batch_interval=10)
        pub = yield self.publisher("proc.a")
        for i in range(3):
            yield pub.create_and_publish_event(name="t%d" % i)
        yield wait_for(lambda: len(persister._pending) == 3)
        self.assertEqual(persister.stats["stored"], 0)
        clock.advance(10)
        yield self.wait_stored(persister, 3)
        for i in range(5):
            yield pub.create_and_publish_event(name="s%d" % i)
        yield self.wait_stored(persister, 8)  # a full batch goes without waiting for the clock

    @defer.inlineCallbacks
    def test_terminate_writes_what_is_held(self):
        clock = task.Clock()
        persister = yield self.spawn_persister(clock=clock, batch_size=50, batch_interval=60)
        pub = yield self.publisher("proc.a")
        for i in range(3):
            yield pub.create_and_publish_event(name="h%d" % i)
        yield wait_for(lambda: len(persister._pending) == 3)
        queue = persister.queue
        yield persister.terminate()  # the clock never moved: the stop itself writes them
        self.assertEqual(persister.stats["stored"], 3)
        depth = yield self.container.exchange_manager.queue_depth(queue)
        self.assertEqual(depth, 0)

    @defer.inlineCallbacks
    def test_refusing_store_keeps_events_queued_and_logs_once(self):
        clock = task.Clock()
        url = yield self.store_url()
        from ion.services.dm.inventory.event_store import EventStore

        store = RefusingStore(EventStore(url))
        persister = yield self.spawn_persister(store=store, clock=clock, batch_size=4, backoff=1, max_backoff=4)
        errors = []

        def observe(event):
            if event.get("log_level") == LogLevel.error and "EventPersister" in event.get("log_format", ""):
                errors.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        store.down = True
        pub = yield self.publisher("proc.a")
        for i in range(4):
            yield pub.create_and_publish_event(name="d%d" % i)
        for attempt in range(1, 6):
            yield wait_for(lambda: persister.stats["failed_batches"] >= attempt)
            clock.advance(4)  # past the backoff: the batch is requeued and comes back
        self.assertEqual(len(errors), 1)
        self.assertEqual(persister.stats["stored"], 0)
        self.assertGreaterEqual(persister.stats["requeued"], 16)
        store.down = False
        yield wait_for(lambda: persister.stats["failed_batches"] >= 5 and not persister._writing)
        clock.advance(10)
        yield self.wait_stored(persister, 4)
        self.assertEqual(len(errors), 1)

    @defer.inlineCallbacks
    def test_events_wait_in_the_durable_queue_for_the_next_persister(self):
        first = yield self.spawn_persister(batch_size=1)
        yield first.terminate()
        pub = yield self.publisher("proc.a", persistent=True)
        for i in range(6):
            yield pub.create_and_publish_event(name="w%d" % i)
        second = yield self.spawn_persister(batch_size=4, batch_interval=0.05)
        yield self.wait_stored(second, 6)

    @defer.inlineCallbacks
    def test_retention_deletes_old_events_a_bounded_number_per_run(self):
        clock = task.Clock()
        clock.advance(1000)
        persister = yield self.spawn_persister(
            clock=clock, batch_size=1, retention_age=100, retention_interval=5, retention_batch=2
        )
        pub = yield self.publisher("proc.a")
        for when in (10, 20, 30, 990):
            yield pub.create_and_publish_event(name="r", datetime=float(when))
        yield self.wait_stored(persister, 4)
        clock.advance(5)
        yield wait_for(lambda: persister.stats["retention_deleted"] == 2)
        clock.advance(5)
        yield wait_for(lambda: persister.stats["retention_deleted"] == 3)
        records = yield self.stored(persister)
        self.assertEqual([r["event_time"] for r in records], [990.0])

    def test_bad_spawn_args_named(self):
        from ion.core.exception import ConfigurationError

        for args in ({"batch_size": 0}, {"batch_interval": "x"}, {"retention_age": -1}):
            with self.assertRaises(ConfigurationError) as caught:
                EventPersister(spawnargs=dict(args, store="sqlite::memory:"))
            self.assertIn(next(iter(args)), str(caught.exception))


for_each_broker(PersisterTests, globals(), base=IonTestCase)


class PersisterPostgresRabbitTest(PersisterTests, IonTestCase):
    """The same body with the store on the real PostgreSQL."""

    broker_url = RABBIT_URL
    database = "postgresql"
