"""
Event history figures (issue 14), medians of --runs runs:

* persister: N persistent events wait in the persister's durable queue on
  RabbitMQ; a persister is started and timed until all are stored
  (events/s, and events per CPU second of the bench process, which the
  other loads of a shared machine disturb less), into PostgreSQL and into
  SQLite;
* queries on PostgreSQL with --rows stored events (1,000 origins, one event
  every few seconds): the 100 newest of one origin, and a one-hour page of
  100, through the store's find_events (adbapi), milliseconds.

    . /work/venv/bin/activate
    python bench/bench_history.py                       # about a minute or two
    python bench/bench_history.py --rows 100000 --events 5000

Each run uses a database of its own on --pg (dropped afterwards) and a
SQLite file in a temporary directory.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task, threads  # noqa: E402

from ion.core import ioninit  # noqa: E402
from ion.core.cc.container import create_new_container, forget_container  # noqa: E402
from ion.core.messaging.broker.address import BrokerAddress  # noqa: E402
from ion.core.process.process import Process  # noqa: E402
from ion.services.dm.distribution.events import InfoLoggingEventPublisher, LOGGING_INFO_EVENT_ID  # noqa: E402
from ion.services.dm.inventory.event_persister import EventPersister  # noqa: E402
from ion.services.dm.inventory.event_store import EventStore  # noqa: E402


def admin(pg, statement):
    import psycopg

    with psycopg.connect(pg + "/postgres", autocommit=True) as conn:
        conn.execute(statement)


@defer.inlineCallbacks
def fresh_database(pg, cleanups):
    name = "ion_bench_%s" % uuid.uuid4().hex[:10]
    yield threads.deferToThread(admin, pg, "CREATE DATABASE %s" % name)
    cleanups.append(lambda: threads.deferToThread(admin, pg, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name))
    return "%s/%s" % (pg, name)


@defer.inlineCallbacks
def persister_rate(args, url):
    """Events per second a persister drains from a queue holding args.events events into `url`."""
    container = create_new_container()
    yield container.initialize(BrokerAddress.from_url(args.broker), {"sysname": "bench-%s" % uuid.uuid4().hex[:8]})
    yield container.activate()
    queue = "bench_persister"
    try:
        proc = Process(spawnargs={"proc-name": "bench-history"})
        yield proc.spawn()
        spawnargs = {"store": url, "queue": queue, "event_id": LOGGING_INFO_EVENT_ID, "batch_size": args.batch}
        first = EventPersister(spawnargs=spawnargs)
        yield first.spawn()  # declares the durable queue
        name = first.queue
        yield first.terminate()
        pub = InfoLoggingEventPublisher(process=proc, origin="bench.origin", persistent=True)
        yield proc.register_life_cycle_object(pub)
        sent = 0
        while sent < args.events:
            window = [pub.create_and_publish_event(name="b%d" % i) for i in range(sent, min(sent + 200, args.events))]
            yield defer.gatherResults(window, consumeErrors=True)
            sent += len(window)
        persister = EventPersister(spawnargs=spawnargs)
        started, cpu = time.perf_counter(), time.process_time()
        yield persister.spawn()
        from twisted.internet import reactor

        while persister.stats["stored"] < args.events:
            yield task.deferLater(reactor, 0.01, lambda: None)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        yield persister.terminate()
        yield container.exchange_manager.delete_queue(name)
        return args.events / elapsed, args.events / cpu
    finally:
        yield container.terminate()
        forget_container(container)
        ioninit.reset()


def fill(pg_url, rows):
    """Insert `rows` synthetic events straight in SQL (1,000 origins, one every 2.6 s from t=0)."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO ion_events (event_id, name, origin, event_time, received, routing_key, content_key,
                                       body, fields)
               SELECT 3003, 'bench', 'proc.' || (g %% 1000), g * 2.6, g * 2.6, '3003.proc.' || (g %% 1000),
                      md5(g::text) || 'x', decode(repeat('ab', 200), 'hex'), '{}'
               FROM generate_series(1, %s) AS g""",
            (rows,),
        )
        conn.execute("ANALYZE ion_events")


@defer.inlineCallbacks
def query_times(args, url):
    store = EventStore(url)
    yield store.open()
    try:
        yield threads.deferToThread(fill, url, args.rows)
        newest, page = [], []
        for i in range(args.queries):
            started = time.perf_counter()
            records, _ = yield store.find_events(origin="proc.%d" % (i * 37 % 1000), limit=100)
            newest.append((time.perf_counter() - started) * 1000)
            assert len(records) == min(100, args.rows // 1000), len(records)
            start = (i * 7919 % (args.rows - 3000)) * 2.6
            started = time.perf_counter()
            records, _ = yield store.find_events(start=start, end=start + 3600, limit=100)
            page.append((time.perf_counter() - started) * 1000)
            assert len(records) == 100, len(records)
        return statistics.median(newest), statistics.median(page)
    finally:
        store.close()


@defer.inlineCallbacks
def main(reactor, args):
    cleanups = []
    figures = {"pg": [], "sqlite": [], "pg_cpu": [], "sqlite_cpu": [], "newest": [], "page": []}
    try:
        for _ in range(args.runs):
            url = yield fresh_database(args.pg, cleanups)
            for kind, store in (("pg", url), ("sqlite", "sqlite:" + os.path.join(tempfile.mkdtemp(), "events.sqlite"))):
                rate, per_cpu = yield persister_rate(args, store)
                figures[kind].append(rate)
                figures[kind + "_cpu"].append(per_cpu)
        for _ in range(args.runs):
            url = yield fresh_database(args.pg, cleanups)
            newest, page = yield query_times(args, url)
            figures["newest"].append(newest)
            figures["page"].append(page)
    finally:
        for cleanup in cleanups:
            yield cleanup()
    for kind, name in (("pg", "PostgreSQL"), ("sqlite", "SQLite")):
        print("FIGURES persister into %s: %.0f events/s (median of %s); %.0f events per CPU second of this process"
              % (name, statistics.median(figures[kind]), ["%.0f" % v for v in figures[kind]],
                 statistics.median(figures[kind + "_cpu"])))
    print("FIGURES %d rows on PostgreSQL: 100 newest of one origin %.2f ms, one-hour page of 100 %.2f ms (medians)" % (
        args.rows, statistics.median(figures["newest"]), statistics.median(figures["page"])))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rows", type=int, default=1000000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    task.react(main, (parser.parse_args(),))
