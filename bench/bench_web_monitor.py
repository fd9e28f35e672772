"""
Publish-to-browser latency of the web monitor's stream, and the cost of a /metrics scrape.

    python bench/bench_web_monitor.py [--broker URL|memory] [--events N]

One container in this OS process runs the web monitor on a free port; an
SSE client (twisted.web's Agent) reads /stream.  Each of --events events is
published only after the previous one arrived on the stream, so a figure is
one event's trip: publish, broker, subscriber, JSON, HTTP.  Then /metrics is
fetched --events times from the status site.
"""

import argparse
import statistics
import sys
import time

from twisted.internet import defer, task

sys.path.insert(0, ".")

from ion.core.cc import status  # noqa: E402
from ion.core.cc.container import create_new_container, stop_container  # noqa: E402
from ion.core.messaging.broker.address import BrokerAddress  # noqa: E402
from ion.core.process.process import Process  # noqa: E402
from ion.services.dm.distribution import events  # noqa: E402
from ion.services.dm.distribution.notify_web_monitor import NotificationWebMonitorService  # noqa: E402
from test.webclient import get, open_stream  # noqa: E402


def percentiles(seconds):
    ordered = sorted(seconds)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return "p50 %.2f ms, p95 %.2f ms, max %.2f ms" % (pick(0.5), pick(0.95), ordered[-1] * 1000)


@defer.inlineCallbacks
def run(reactor, broker, count):
    container = create_new_container()
    yield container.initialize(BrokerAddress.from_url(broker), {"sysname": "bench-web-%d" % (time.time(),)})
    yield container.activate()
    try:
        web = NotificationWebMonitorService(spawnargs={"proc-name": "bench_web_monitor", "port": 0})
        yield web.spawn()
        proc = Process(spawnargs={"proc-name": "bench-publisher"})
        yield proc.spawn()
        pub = events.InfoLoggingEventPublisher(process=proc, origin="bench")
        yield proc.register_life_cycle_object(pub)
        response, stream = yield open_stream(web.url + "/stream?event=3003&origin=bench")
        trips = []
        for n in range(count):
            started = time.perf_counter()
            yield pub.create_and_publish_event(name="e%d" % n)
            while len(stream.events) <= n:
                yield task.deferLater(reactor, 0, lambda: None)
            trips.append(time.perf_counter() - started)
        response._transport.stopProducing()
        print("publish -> SSE event, %d events on %s: %s (mean %.2f ms)"
              % (count, broker.split("@")[-1], percentiles(trips), statistics.mean(trips) * 1000))
        listening = status.listen(container, 0)
        url = "http://127.0.0.1:%d/metrics" % (listening.getHost().port,)
        scrapes = []
        for _ in range(count):
            started = time.perf_counter()
            yield get(url)
            scrapes.append(time.perf_counter() - started)
        yield listening.stopListening()
        print("/metrics scrape, %d times: %s" % (count, percentiles(scrapes)))
        yield web.terminate()
    finally:
        yield stop_container(container)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--broker", default="memory")
    parser.add_argument("--events", type=int, default=500)
    args = parser.parse_args()
    task.react(run, (args.broker, args.events))


if __name__ == "__main__":
    main()
