"""
The project's events beside pika SelectConnection, in one run (issue 11, item 5).

    python bench/bench_vs_pika.py [--broker URL] [--runs 3] [--events N] [--fanout-events N]
                                  [--rate 1000] [--seconds 5] [--window 1000] [--prefetch P]
                                  [--scenarios rate,fanout,latency] [--json FILE]

Every publisher and every consumer is its own OS process; the parent only
starts them and collects what they report.  Each run has six scenarios, pika
first, then the project, on the same RabbitMQ:

  rate      pika: confirms on, up to --window unconfirmed, 460-byte bodies, one
            consumer with prefetch 100 and a basic.ack each.  Project:
            create_and_publish_event, --window calls in flight (confirms on,
            the default), one InfoLoggingEventSubscriber with its DEFAULT
            settings.
  fanout    the same, with 10 consumers (10 queues) in one consumer process.
  latency   one publish every 1/--rate s for --seconds; latency = arrival in
            the consumer - the send time carried in the message (pika: the
            body's first 8 bytes; project: the event's `datetime`, its default).

Figures: publish rate (N / (last confirm - first publish)), delivered rate
(deliveries / (last delivery - first publish)), latency p50/p99, client CPU
(os.times user+sys) per publish and per delivery in the client processes,
the local RabbitMQ node's CPU per event (its beam.smp, read from /proc: on
this 2-core machine the broker's work takes CPU from the clients), and the
growth of each client's peak RSS (ru_maxrss) over the N events.
Each project figure is printed with its ratio to pika's of the same run; with
--runs R the medians of the R runs and every run's value.  --prefetch P gives
the project subscriber prefetch_count=P instead of its default (to choose it).
"""

import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

RABBIT = "amqp://guest:guest@127.0.0.1:5672/%2F"
BODY_BYTES = 460  # the project's InfoLogging event body
ORIGIN = "vspika"
WAIT = 120  # seconds, plus one per 1,000 events (see patience)


def patience(events):
    """How long a scenario of `events` may take: a slow machine needs minutes for 1,000,000."""
    return WAIT + events / 1000


def cpu_seconds():
    t = os.times()
    return t.user + t.system


def rabbit_cpu_seconds():
    """User+system CPU seconds of the local RabbitMQ node (its beam.smp), None if there is none to read."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
            if not argv[0].endswith(b"beam.smp") or not any(b"rabbit" in arg for arg in argv):
                continue
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return None


def peak_rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def say(word, **figures):
    print(word, json.dumps(figures), flush=True)


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Pacer:
    """How many sends are due by now at `rate` per second since the first call."""

    def __init__(self, rate, total):
        self.rate, self.total, self.sent, self.start = rate, total, 0, None

    def due(self):
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        return min(self.total, int((now - self.start) * self.rate) + 1) - self.sent


# -- pika ---------------------------------------------------------------------------


def pika_open(args, on_channel):
    import pika

    def opened(connection):
        connection.channel(on_open_callback=on_channel)

    def failed(_connection, error):
        raise SystemExit("pika: cannot connect: %s" % (error,))

    connection = pika.SelectConnection(pika.URLParameters(args.broker), on_open_callback=opened,
                                       on_open_error_callback=failed)
    return connection


def pika_consumer(args):
    """--subs queues bound to the exchange, prefetch 100, ack each; 'ready', then 'result'."""
    expected = args.events * args.subs
    state = {"count": 0, "latencies": [], "bound": 0}
    holder = {}

    def on_message(channel, method, _properties, body):
        if args.paced:
            state["latencies"].append(time.time() - struct.unpack("d", body[:8])[0])
        channel.basic_ack(method.delivery_tag)
        state["count"] += 1
        if state["count"] == expected:
            finish()

    def finish():
        say("result", last=time.time(), deliveries=state["count"], cpu=cpu_seconds() - state["cpu"],
            rss_growth_kib=peak_rss_kib() - state["rss"], **latency_figures(state["latencies"]))
        holder["connection"].ioloop.stop()

    def on_channel(channel):
        channel.exchange_declare(args.exchange, exchange_type="topic", auto_delete=True,
                                 callback=lambda _f: channel.basic_qos(prefetch_count=100, callback=lambda _f: declare(channel)))

    def declare(channel):
        for _ in range(args.subs):
            channel.queue_declare("", exclusive=True, callback=lambda frame: bind(channel, frame.method.queue))

    def bind(channel, queue):
        channel.queue_bind(queue, args.exchange, routing_key="#", callback=lambda _f: consume(channel, queue))

    def consume(channel, queue):
        channel.basic_consume(queue, on_message, auto_ack=False)
        state["bound"] += 1
        if state["bound"] == args.subs:
            state["cpu"], state["rss"] = cpu_seconds(), peak_rss_kib()
            say("ready")

    holder["connection"] = pika_open(args, on_channel)
    holder["connection"].ioloop.start()


def pika_publisher(args):
    """--events publishes with confirms, at most --window unconfirmed (or paced at --rate); then 'result'."""
    import collections

    import pika

    padding = os.urandom((BODY_BYTES - 8) // 2).hex().encode()[: BODY_BYTES - 8]
    properties = pika.BasicProperties(content_type="application/octet-stream", delivery_mode=1)
    unconfirmed = collections.deque()
    state = {"next_tag": 1, "confirmed": 0}
    holder = {}
    pacer = Pacer(args.rate, args.events) if args.paced else None

    def publish_one(channel):
        channel.basic_publish(args.exchange, "event." + ORIGIN, struct.pack("d", time.time()) + padding, properties)
        unconfirmed.append(state["next_tag"])
        state["next_tag"] += 1

    def fill(channel):
        while len(unconfirmed) < args.window and state["next_tag"] <= args.events:
            publish_one(channel)

    def tick(channel):
        for _ in range(pacer.due()):
            publish_one(channel)
            pacer.sent += 1
        if pacer.sent < args.events:
            holder["connection"].ioloop.call_later(0.001, lambda: tick(channel))

    def on_confirm(frame, channel):
        method = frame.method
        if getattr(method, "multiple", False):
            while unconfirmed and unconfirmed[0] <= method.delivery_tag:
                unconfirmed.popleft()
                state["confirmed"] += 1
        else:
            unconfirmed.remove(method.delivery_tag)
            state["confirmed"] += 1
        if state["confirmed"] == args.events:
            say("result", start=state["start"], end=time.time(), cpu=cpu_seconds() - state["cpu"],
                rss_growth_kib=peak_rss_kib() - state["rss"])
            holder["connection"].ioloop.stop()
        elif pacer is None:
            fill(channel)

    def on_channel(channel):
        channel.confirm_delivery(ack_nack_callback=lambda frame: on_confirm(frame, channel),
                                 callback=lambda _f: declared(channel))

    def declared(channel):
        channel.exchange_declare(args.exchange, exchange_type="topic", auto_delete=True,
                                 callback=lambda _f: go(channel))

    def go(channel):
        state["cpu"], state["rss"], state["start"] = cpu_seconds(), peak_rss_kib(), time.time()
        if pacer is None:
            fill(channel)
        else:
            tick(channel)

    holder["connection"] = pika_open(args, on_channel)
    holder["connection"].ioloop.start()


# -- the project ---------------------------------------------------------------------


def latency_figures(latencies):
    if not latencies:
        return {}
    return {"p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99)}


def ion_main(args, role):
    from twisted.internet import task

    from bench_events import start_logging

    start_logging()
    task.react(ion_subscriber if role == "ion_sub" else ion_publisher, [args])


def ion_subscriber(reactor, args):
    from twisted.internet import defer

    from bench_events import start_container, stop_container
    from ion.core.process.process import Process
    from ion.services.dm.distribution.events import InfoLoggingEventSubscriber
    from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory

    @defer.inlineCallbacks
    def run():
        container = yield start_container(args.broker, args.sysname)
        done = defer.Deferred()
        expected = args.events * args.subs
        state = {"count": 0, "latencies": []}

        def handler(data):
            if args.paced:
                state["latencies"].append(time.time() - data["content"].datetime)
            state["count"] += 1
            if state["count"] == expected:
                done.callback(time.time())

        proc = Process(spawnargs={"proc-name": "bench-subscriber"})
        yield proc.spawn()
        options = {} if args.prefetch is None else {"prefetch_count": args.prefetch}
        for _ in range(args.subs):
            yield SubscriberFactory(process=proc).build(
                subscriber_type=InfoLoggingEventSubscriber, origin=ORIGIN, handler=handler, **options)
        cpu, rss = cpu_seconds(), peak_rss_kib()
        say("ready")
        last = yield done.addTimeout(patience(expected), reactor)
        say("result", last=last, deliveries=state["count"], cpu=cpu_seconds() - cpu,
            rss_growth_kib=peak_rss_kib() - rss, **latency_figures(state["latencies"]))
        yield proc.terminate()
        yield stop_container(container)

    return run()


def ion_publisher(reactor, args):
    from twisted.internet import defer, task

    from bench_events import in_window, start_container, stop_container
    from ion.core.process.process import Process
    from ion.services.dm.distribution.events import InfoLoggingEventPublisher

    @defer.inlineCallbacks
    def run():
        container = yield start_container(args.broker, args.sysname)
        proc = Process(spawnargs={"proc-name": "bench-publisher"})
        yield proc.spawn()
        publisher = InfoLoggingEventPublisher(process=proc, origin=ORIGIN)
        yield proc.register_life_cycle_object(publisher)
        # Warm-up under another origin: nothing is bound to it.
        yield publisher.create_and_publish_event(origin="warmup", name="bench event", description="warm-up")

        def one(n):
            return publisher.create_and_publish_event(name="bench event", description="event %d" % n)

        cpu, rss, start = cpu_seconds(), peak_rss_kib(), time.time()
        if args.paced:
            pacer, sent = Pacer(args.rate, args.events), []

            def tick():
                for _ in range(pacer.due()):
                    sent.append(one(pacer.sent))
                    pacer.sent += 1
                if pacer.sent >= args.events:
                    loop.stop()

            loop = task.LoopingCall(tick)
            yield loop.start(0.001)
            yield defer.gatherResults(sent)
        else:
            yield in_window(args.events, args.window, one)
        say("result", start=start, end=time.time(), cpu=cpu_seconds() - cpu, rss_growth_kib=peak_rss_kib() - rss)
        yield proc.terminate()
        yield stop_container(container)

    return run()


# -- the parent ----------------------------------------------------------------------


def child(args, role, **extra):
    argv = [sys.executable, os.path.abspath(__file__), "--role", role, "--broker", args.broker,
            "--sysname", args.sysname, "--exchange", args.exchange, "--window", str(args.window),
            "--rate", str(args.rate)]
    if args.prefetch is not None:
        argv += ["--prefetch", str(args.prefetch)]
    for key, value in extra.items():
        if value is True:
            argv.append("--" + key)
        elif value is not False:
            argv += ["--" + key, str(value)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def read(proc, word, events=0):
    deadline = time.time() + patience(events)
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("child %s ended before saying %r" % (proc.args[3], word))
        if line.startswith(word + " "):
            return json.loads(line[len(word) + 1:])
    raise RuntimeError("child %s did not say %r in time" % (proc.args[3], word))


def scenario(args, side, events, subs=1, paced=False):
    """One consumer process and one publisher process; the figures of both."""
    args.sysname = "vspika-%s" % uuid.uuid4().hex[:8]
    args.exchange = "%s.pika" % args.sysname
    consumer = child(args, side + "_sub", events=events, subs=subs, paced=paced)
    broker_cpu = None
    try:
        read(consumer, "ready")
        broker_cpu = rabbit_cpu_seconds()
        publisher = child(args, side + "_pub", events=events, paced=paced)
        pub = read(publisher, "result", events * subs)
        sub = read(consumer, "result", events * subs)
        if broker_cpu is not None:  # the publisher's start and end are in it: noise against N events
            broker_cpu = rabbit_cpu_seconds() - broker_cpu
        publisher.wait(WAIT)
        consumer.wait(WAIT)
    finally:
        for proc in (consumer,):
            if proc.poll() is None:
                proc.terminate()
    figures = {
        "publish_rate": events / (pub["end"] - pub["start"]),
        "delivered_rate": sub["deliveries"] / (sub["last"] - pub["start"]),
        "cpu_us_per_publish": 1e6 * pub["cpu"] / events,
        "cpu_us_per_delivery": 1e6 * sub["cpu"] / sub["deliveries"],
        "rss_growth_mib_pub": pub["rss_growth_kib"] / 1024,
        "rss_growth_mib_sub": sub["rss_growth_kib"] / 1024,
    }
    if broker_cpu is not None:
        figures["broker_cpu_us_per_event"] = 1e6 * broker_cpu / events
    for key in ("p50_ms", "p99_ms"):
        if key in sub:
            figures[key] = sub[key]
    return figures


def one_run(args):
    paced_events = int(args.rate * args.seconds)
    run = {}
    wanted = args.scenarios.split(",")
    for side in ("pika", "ion"):
        if "rate" in wanted:
            run[side + "_rate"] = scenario(args, side, args.events)
        if "fanout" in wanted:
            run[side + "_fanout"] = scenario(args, side, args.fanout_events, subs=10)
        if "latency" in wanted:
            run[side + "_latency"] = scenario(args, side, paced_events, paced=True)
    return run


ROWS = [
    ("publish rate (confirms, many in flight) /s", "rate", "publish_rate"),
    ("delivered rate, subscriber defaults /s", "rate", "delivered_rate"),
    ("delivered, 10 subscribers in one process /s", "fanout", "delivered_rate"),
    ("latency p50 at paced rate, ms", "latency", "p50_ms"),
    ("latency p99 at paced rate, ms", "latency", "p99_ms"),
    ("client CPU per publish, us", "rate", "cpu_us_per_publish"),
    ("client CPU per delivery, us", "rate", "cpu_us_per_delivery"),
    ("RabbitMQ CPU per event (local node), us", "rate", "broker_cpu_us_per_event"),
    ("publisher peak RSS growth over N, MiB", "rate", "rss_growth_mib_pub"),
    ("subscriber peak RSS growth over N, MiB", "rate", "rss_growth_mib_sub"),
]


def report(args, runs):
    from ion.core.object import speedups

    print("RabbitMQ %s; %d run(s); N=%d events (fanout: %d x 10 deliveries); paced %d/s for %g s; window %d; "
          "project subscriber prefetch %s; compiled speedups %s"
          % (args.broker, len(runs), args.events, args.fanout_events, args.rate, args.seconds, args.window,
             "default" if args.prefetch is None else args.prefetch, "yes" if speedups.COMPILED else "NO (Python)"))
    print("%-44s %10s %10s %7s   runs (project)" % ("", "pika", "project", "ratio"))
    for label, scenario_name, key in ROWS:
        pika = [r.get("pika_" + scenario_name, {}).get(key) for r in runs]
        ion = [r.get("ion_" + scenario_name, {}).get(key) for r in runs]
        if None in pika + ion:
            continue
        p, i = statistics.median(pika), statistics.median(ion)
        ratio = i / p if p else float("nan")
        print("%-44s %10.1f %10.1f %7.2f   %s" % (label, p, i, ratio, " ".join("%.1f" % v for v in ion)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default=RABBIT)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=20000, help="events in the rate scenario (default 20000)")
    parser.add_argument("--fanout-events", type=int, default=5000, help="events fanned out to 10 (default 5000)")
    parser.add_argument("--rate", type=int, default=1000, help="paced rate of the latency scenario (default 1000/s)")
    parser.add_argument("--seconds", type=float, default=5, help="length of the latency scenario (default 5 s)")
    parser.add_argument("--window", type=int, default=1000, help="publishes in flight (default 1000)")
    parser.add_argument("--prefetch", type=int, help="project subscriber prefetch_count (default: its default)")
    parser.add_argument("--scenarios", default="rate,fanout,latency", help="which to run (default all three)")
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--role", choices=("pika_pub", "pika_sub", "ion_pub", "ion_sub"), help=argparse.SUPPRESS)
    parser.add_argument("--sysname", help=argparse.SUPPRESS)
    parser.add_argument("--exchange", help=argparse.SUPPRESS)
    parser.add_argument("--subs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--paced", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main():
    args = parse_args()
    if args.role in ("pika_pub", "pika_sub"):
        (pika_publisher if args.role == "pika_pub" else pika_consumer)(args)
        return
    if args.role:
        ion_main(args, args.role)
        return
    runs = []
    for n in range(args.runs):
        runs.append(one_run(args))
        print("run %d done" % (n + 1), file=sys.stderr, flush=True)
    report(args, runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
