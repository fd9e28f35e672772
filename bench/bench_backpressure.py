"""
A publisher that never waits, against RabbitMQ, for several max_in_flight bounds.

    python bench/bench_backpressure.py [--broker URL] [--publishes N] [--body BYTES] [--bounds 10,100,1000,10000]

For each bound, in a fresh OS process (so its RSS is its own): N publishes of BYTES-byte bodies to
a queue nobody consumes, made in batches of 1,000 per reactor turn without waiting for any of them
(like a publisher on a timer that ignores its Deferreds).  It reports the publishes confirmed per
second, the most in flight (unconfirmed) and waiting at once, and the process's RSS growth at its
peak.  The queue is deleted afterwards.  See bench/README.txt.
"""

import argparse
import json
import os
import subprocess
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BATCH = 1000


def rss_kib(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def one_run(url, bound, publishes, body_size):
    """In this process: publish, measure, print one JSON line."""
    import dataclasses

    from twisted.internet import defer, reactor, task

    from ion.core.messaging.broker import connect
    from ion.core.messaging.broker.address import BrokerAddress

    figures = {}

    @defer.inlineCallbacks
    def run():
        conn = yield connect(dataclasses.replace(BrokerAddress.from_url(url), max_in_flight=bound))
        queue = yield conn.queue_declare("bench-bp-%s" % uuid.uuid4().hex[:8], auto_delete=False)
        body = b"x" * body_size
        most = {"in_flight": 0, "waiting": 0}
        before = rss_kib()
        started = reactor.seconds()
        done = []
        for start in range(0, publishes, BATCH):
            for _ in range(min(BATCH, publishes - start)):
                done.append(conn.publish("", queue, body))
            most["in_flight"] = max(most["in_flight"], conn.in_flight)
            most["waiting"] = max(most["waiting"], conn.waiting)
            yield task.deferLater(reactor, 0, lambda: None)  # the reactor turns; nothing waits for the publishes
        while conn.waiting:
            most["in_flight"] = max(most["in_flight"], conn.in_flight)
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield defer.gatherResults(done)
        took = reactor.seconds() - started
        figures.update(bound=bound, publishes=publishes, body=body_size, confirmed_per_s=round(publishes / took),
                       in_flight_max=most["in_flight"], waiting_max=most["waiting"],
                       rss_growth_peak_mib=round((rss_kib("VmHWM") - before) / 1024, 1))
        yield conn.queue_delete(queue)
        yield conn.close()

    def finish(result):
        reactor.stop()
        return result

    reactor.callWhenRunning(lambda: run().addBoth(finish))
    reactor.run()
    print(json.dumps(figures))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--publishes", type=int, default=50000)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--bounds", default="10,100,1000,10000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one_run(args.broker, args.one, args.publishes, args.body)
    print("%8s %10s %14s %14s %12s %16s" % ("bound", "publishes", "confirmed/s", "in_flight_max", "waiting_max",
                                             "RSS growth MiB"))
    for bound in (int(b) for b in args.bounds.split(",")):
        out = subprocess.run([sys.executable, __file__, "--broker", args.broker, "--publishes", str(args.publishes),
                              "--body", str(args.body), "--one", str(bound)], capture_output=True, text=True, check=True)
        f = json.loads(out.stdout.strip().splitlines()[-1])
        print("%8d %10d %14d %14d %12d %16.1f" % (f["bound"], f["publishes"], f["confirmed_per_s"], f["in_flight_max"],
                                                  f["waiting_max"], f["rss_growth_peak_mib"]))


if __name__ == "__main__":
    main()
