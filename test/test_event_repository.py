"""
History queries and replay on both brokers (store on SQLite; one class on
Rabbit + PostgreSQL): the event_repository service and its client, keyset
pages over RPC, origin patterns, replay marked x-ion-replay with the exact
body, at a bounded rate.
"""

from twisted.internet import defer, task

from ion.services.dm.distribution import events
from ion.services.dm.inventory import event_replay
from ion.services.dm.inventory.event_repository import EventRepositoryClient, EventRepositoryService
from ion.test.iontest import IonTestCase
from test.brokers import RABBIT_URL, for_each_broker, wait_for
from test.test_event_persister import PersisterFixture


class CollectingSubscriber(events.EventSubscriber):
    """Keeps (message dict, delivery) of each event it gets."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.got = []

    def _receive_handler(self, data, msg):
        self.got.append((data, msg.delivery))
        msg.ack()


class RepositoryTests(PersisterFixture):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.persister = yield self.spawn_persister(batch_size=50, batch_interval=0.02)
        self.service = EventRepositoryService(spawnargs={"store": self.url})
        yield self.service.spawn()
        self.addCleanup(self.service.terminate_unless_over)
        self.client = EventRepositoryClient(proc=self.proc)

    @defer.inlineCallbacks
    def publish(self, count, origins=("proc.a", "proc.b")):
        publishers = []
        for origin in origins:
            publishers.append((yield self.publisher(origin)))
        for i in range(count):
            yield publishers[i % len(publishers)].create_and_publish_event(name="n%d" % i, datetime=1000.0 + i)
        yield wait_for(lambda: self.persister.stats["stored"] >= count, timeout=30)

    @defer.inlineCallbacks
    def subscriber(self, **kwargs):
        sub = CollectingSubscriber(process=self.proc, **kwargs)
        yield self.proc.register_life_cycle_object(sub)
        return sub

    @defer.inlineCallbacks
    def test_find_events_pages_over_rpc(self):
        yield self.publish(12)
        page, cursor = yield self.client.find_events(origin="proc.a", limit=4)
        self.assertEqual([r.event.name for r in page], ["n10", "n8", "n6", "n4"])
        self.assertEqual(page[0]["fields"]["name"], "n10")
        rest, cursor = yield self.client.find_events(origin="proc.a", limit=4, after=cursor)
        self.assertEqual([r["name"] for r in rest], ["n2", "n0"])
        self.assertIsNone(cursor)
        everything, _ = yield self.client.find_events(origin="proc.*", start=1003, end=1006, descending=False)
        self.assertEqual([r["name"] for r in everything], ["n3", "n4", "n5"])
        self.assertEqual(everything[0].message["content"].datetime, 1003.0)

    @defer.inlineCallbacks
    def test_bad_query_answered_400(self):
        with self.assertRaises(Exception) as caught:
            yield self.client.find_events(limit=0)
        self.assertIn("limit", str(caught.exception))

    @defer.inlineCallbacks
    def test_replay_to_original_keys_marked_and_exact(self):
        yield self.publish(6)
        sub = yield self.subscriber(origin="proc.a")
        replayed = yield self.client.replay(origin="proc.a", rate=1000)
        self.assertEqual(replayed, 3)
        yield wait_for(lambda: len(sub.got) == 3)
        stored, _ = yield self.client.find_events(origin="proc.a", descending=False)
        self.assertEqual([d.body for _data, d in sub.got], [r["body"] for r in stored])
        self.assertEqual([d.routing_key for _data, d in sub.got], ["3003.proc.a"] * 3)
        self.assertEqual([d.properties["headers"][event_replay.REPLAY_HEADER] for _data, d in sub.got],
                         [r["content_key"] for r in stored])
        # The persister saw the replays too: the same content keys, so no new rows.
        yield wait_for(lambda: self.persister.stats["duplicates"] >= 3)
        self.assertEqual(self.persister.stats["stored"], 6)

    @defer.inlineCallbacks
    def test_replay_to_a_named_queue(self):
        yield self.publish(4)
        sub = yield self.subscriber(origin="nobody", queue_name=self.unique_name("replayq"))
        replayed = yield self.client.replay(to_queue=sub.queue, rate=1000, origin="#")
        self.assertEqual(replayed, 4)
        yield wait_for(lambda: len(sub.got) == 4)
        self.assertEqual([data["content"].name for data, _d in sub.got], ["n0", "n1", "n2", "n3"])
        dry = yield self.client.replay(to_queue=sub.queue, dry_run=True, origin="proc.b")
        self.assertEqual(dry, 2)

    @defer.inlineCallbacks
    def test_replay_rate_bounded_on_the_clock(self):
        yield self.publish(5)
        clock = task.Clock()
        done = event_replay.replay(self.persister.store, self.container.exchange_manager, {"origin": "proc.#"},
                                   rate=10, clock=clock, dry_run=True)
        steps = 0
        while not done.called:
            yield wait_for(lambda: done.called or clock.getDelayedCalls())
            if clock.getDelayedCalls():
                clock.advance(0.1)
                steps += 1
        count = yield done
        self.assertEqual((count, steps), (5, 4))  # 5 events at 10/s take 0.4 s after the first

    def test_bad_replay_rate(self):
        return self.assertFailure(event_replay.replay(self.persister.store, None, rate=0), Exception)


for_each_broker(RepositoryTests, globals(), base=IonTestCase)


class RepositoryPostgresRabbitTest(RepositoryTests, IonTestCase):
    broker_url = RABBIT_URL
    database = "postgresql"
