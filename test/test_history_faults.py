"""
Fault tests of the event history on the real RabbitMQ and PostgreSQL: 0
lost and 0 duplicate rows when the persister is SIGKILLed mid-stream and a
new one takes over, when PostgreSQL restarts mid-stream or while the
persister is idle (always left running), and when a publisher re-sends
after its connection is cut.  The tests print FIGURES lines for the
closing note.  The PostgreSQL restarts take an exclusive lock file, so two
runs of these tests on one machine do not restart it under each other.
"""

import fcntl
import os

from twisted.internet import defer, reactor, task, threads, utils

from ion.services.dm.distribution import events
from ion.test.iontest import IonTestCase
from test import event_peer
from test.brokers import RABBIT_URL, wait_for
from test.proxy import TcpProxy
from test.test_event_persister import PersisterFixture

EVENTS = 3000
WINDOW = 100
PG_RESTART_LOCK = "/tmp/ion-test-postgres-restart.lock"


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


@defer.inlineCallbacks
def hold_restart_lock(testcase):
    """Wait for the PostgreSQL restart lock and hold it to the end of the test (after its restart cleanup)."""
    fd = os.open(PG_RESTART_LOCK, os.O_CREAT | os.O_RDWR, 0o666)
    yield threads.deferToThread(fcntl.flock, fd, fcntl.LOCK_EX)
    testcase.addCleanup(os.close, fd)  # cleanups run last first: this one after the `start` added next


class HistoryFaultTest(PersisterFixture, IonTestCase):
    broker_url = RABBIT_URL
    database = "postgresql"
    timeout = 240

    @defer.inlineCallbacks
    def publish_all(self, on_progress, first=0, count=EVENTS):
        """`count` persistent events named from `first`, confirmed, WINDOW at a time; `on_progress(sent)` between."""
        pub = events.InfoLoggingEventPublisher(process=self.proc, origin="fault.src", persistent=True)
        yield self.proc.register_life_cycle_object(pub)
        for start in range(first, first + count, WINDOW):
            yield defer.gatherResults(
                [pub.create_and_publish_event(name=str(i)) for i in range(start, min(start + WINDOW, first + count))],
                consumeErrors=True,
            )
            yield on_progress(start + WINDOW)

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
        yield hold_restart_lock(self)
        self.addCleanup(pg_cluster, "start")  # always left running
        persister = yield self.persister()
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

    @defer.inlineCallbacks
    def test_postgres_restarted_while_idle(self):
        """The persister's connection dies while it has nothing to write; the next events still all arrive."""
        yield hold_restart_lock(self)
        self.addCleanup(pg_cluster, "start")  # always left running
        persister = yield self.persister()
        yield self.publish_all(lambda sent: None, count=EVENTS // 2)
        yield wait_for(lambda: persister.stats["stored"] >= EVENTS // 2, timeout=60)
        out, err, code = yield pg_cluster("restart")
        self.assertEqual(code, 0, err)
        yield self.publish_all(lambda sent: None, first=EVENTS // 2, count=EVENTS - EVENTS // 2)
        rows, names, keys = yield self.wait_all_stored()
        print("\nFIGURES PostgreSQL restart with the persister idle after %d rows: %d sent, %d rows, %d distinct, "
              "%d lost, %d duplicate; %d failed batches, %d events requeued"
              % (EVENTS // 2, EVENTS, rows, names, EVENTS - names, rows - names,
                 persister.stats["failed_batches"], persister.stats["requeued"]))
        self.assertEqual((rows, names, keys), (EVENTS, EVENTS, EVENTS))
        self.flushLoggedErrors()  # adbapi logs the broken connection's failed rollback

    @defer.inlineCallbacks
    def test_publisher_resends_after_its_connection_is_cut(self):
        """A publisher (own process, through a proxy) cut twice mid-stream re-sends what was not confirmed."""
        proxy = TcpProxy()
        self.addCleanup(proxy.stop)
        persister = yield self.persister()
        peer = yield event_peer.spawn(self, "publish", proxy.url(), self.sysname, EVENTS, "fault.src")
        cuts = 0
        for at in (EVENTS // 3, 2 * EVENTS // 3):
            yield wait_for(lambda: len(peer.confirmed) >= at, timeout=60)
            cuts += proxy.cut()
        yield peer.done
        self.assertEqual(len(peer.confirmed), EVENTS)
        rows, names, keys = yield self.wait_all_stored()
        yield wait_for(lambda: persister.stats["stored"] == EVENTS, timeout=30)
        print("\nFIGURES publisher cut %d times (%d connection attempts): %d confirmed, %d rows, %d distinct, "
              "%d lost, %d duplicate; %d re-sent copies delivered and skipped by content key"
              % (cuts, proxy.attempts, EVENTS, rows, names, EVENTS - names, rows - names,
                 persister.stats["duplicates"]))
        self.assertEqual(cuts, 2)
        self.assertEqual((rows, names, keys), (EVENTS, EVENTS, EVENTS))

    def persister(self):
        return self.spawn_persister(batch_size=50, backoff=0.2, max_backoff=2)

