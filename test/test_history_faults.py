"""
Fault tests of the event history on the real RabbitMQ and PostgreSQL: 0
lost and 0 duplicate rows when the persister is SIGKILLed mid-stream and a
new one takes over, and when PostgreSQL restarts mid-stream (always left
running).  The tests print FIGURES lines for the closing note.
"""

import os

from twisted.internet import defer, reactor, task, threads, utils

from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.inventory.event_persister import EventPersister
from ion.test.iontest import IonTestCase
from test import event_peer
from test.brokers import RABBIT_URL, BrokerTestMixin
from test.databases import DatabaseTestMixin

EVENTS = 3000
WINDOW = 100


def counts(url):
    """(rows, distinct names, distinct content keys) in the store at `url` (blocking; run in a thread)."""
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*), count(DISTINCT name), count(DISTINCT content_key) FROM ion_events"
        ).fetchone()


def pg_cluster(action):
    """pg_ctlcluster restart/start of the local cluster, as the machine notes say."""
    version = sorted(os.listdir("/etc/postgresql"))[0]
    return utils.getProcessOutputAndValue(
        "pg_ctlcluster", ["--skip-systemctl-redirect", version, "main", action], env=os.environ
    )


class HistoryFaultTest(BrokerTestMixin, DatabaseTestMixin, IonTestCase):
    broker_url = RABBIT_URL
    database = "postgresql"
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        self.sysname = self.unique_name("histfault")
        yield self._start_container(sysname=self.sysname)
        self.addCleanup(self._stop_container)
        self.proc = Process(spawnargs={"proc-name": "history-fault-tester"})
        yield self.proc.spawn()
        self.url = yield self.store_url()
        self.queue = self.unique_name("persist")

    @defer.inlineCallbacks
    def publish_all(self, on_progress):
        """EVENTS persistent events, confirmed, WINDOW at a time; `on_progress(sent)` between windows."""
        pub = events.InfoLoggingEventPublisher(process=self.proc, origin="fault.src", persistent=True)
        yield self.proc.register_life_cycle_object(pub)
        for first in range(0, EVENTS, WINDOW):
            yield defer.gatherResults(
                [pub.create_and_publish_event(name=str(i)) for i in range(first, first + WINDOW)], consumeErrors=True
            )
            yield on_progress(first + WINDOW)

    @defer.inlineCallbacks
    def wait_all_stored(self, timeout=120):
        """Polls the row counts until EVENTS rows are there (or more: a duplicate would show); fires with them."""
        deadline = reactor.seconds() + timeout
        while True:
            found = yield threads.deferToThread(counts, self.url)
            if found[0] >= EVENTS or reactor.seconds() > deadline:
                return found
            yield task.deferLater(reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def test_persister_killed_mid_stream(self):
        first = yield event_peer.spawn(self, "persist", RABBIT_URL, self.sysname, self.queue, self.url)
        self.addCleanup(self._drop_queue, first.queue)
        state = {"killed_at": None}

        @defer.inlineCallbacks
        def progress(sent):
            if state["killed_at"] is None:
                rows = (yield threads.deferToThread(counts, self.url))[0]
                if rows >= 500:
                    state["killed_at"] = rows
                    yield first.kill()
                    yield event_peer.spawn(self, "persist", RABBIT_URL, self.sysname, self.queue, self.url)

        yield self.publish_all(progress)
        self.assertIsNotNone(state["killed_at"], "the persister stored too little to be killed mid-stream")
        rows, names, keys = yield self.wait_all_stored()
        print("\nFIGURES persister SIGKILL at %d rows: %d sent, %d rows, %d distinct, %d lost, %d duplicate"
              % (state["killed_at"], EVENTS, rows, names, EVENTS - names, rows - names))
        self.assertEqual((rows, names, keys), (EVENTS, EVENTS, EVENTS))

    @defer.inlineCallbacks
    def test_postgres_restarted_mid_stream(self):
        self.addCleanup(pg_cluster, "start")  # always left running
        persister = EventPersister(
            spawnargs={"queue": self.queue, "store": self.url, "event_id": events.LOGGING_INFO_EVENT_ID,
                       "batch_size": 50, "backoff": 0.2, "max_backoff": 2}
        )
        yield persister.spawn()
        self.addCleanup(self._drop_queue, persister.queue)
        self.addCleanup(persister.terminate_unless_over)
        state = {"restarted_at": None}

        @defer.inlineCallbacks
        def progress(sent):
            if state["restarted_at"] is None and persister.stats["stored"] >= 500:
                state["restarted_at"] = persister.stats["stored"]
                out, err, code = yield pg_cluster("restart")
                self.assertEqual(code, 0, err)

        yield self.publish_all(progress)
        self.assertIsNotNone(state["restarted_at"], "too little stored to restart PostgreSQL mid-stream")
        rows, names, keys = yield self.wait_all_stored()
        print("\nFIGURES PostgreSQL restart at %d rows: %d sent, %d rows, %d distinct, %d lost, %d duplicate; "
              "%d failed batches, %d events requeued"
              % (state["restarted_at"], EVENTS, rows, names, EVENTS - names, rows - names,
                 persister.stats["failed_batches"], persister.stats["requeued"]))
        self.assertEqual((rows, names, keys), (EVENTS, EVENTS, EVENTS))
        self.flushLoggedErrors()  # adbapi logs the broken connection's failed rollback

    def _drop_queue(self, queue):
        if self.container is not None:
            return self.container.exchange_manager.delete_queue(queue)

