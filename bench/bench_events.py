"""
Event publishing and delivery rates beside raw txamqp on the same broker, in one run.

    python bench/bench_events.py [--broker URL|memory] [--events N] [--raw N] [--window W] [--json FILE]
    python bench/bench_events.py --profile [--events N] [--profile-top K] [--profiler cprofile|pyinstrument]

On RabbitMQ (amqp://guest:guest@127.0.0.1:5672/%2F by default), one run measures:

  RAW baseline: stock txamqp, nothing of the project's but the spec file:
  txamqp.protocol.AMQClient + txamqp.client.TwistedDelegate +
  txamqp.spec.load(res/amqp/amqp0-9-1.rabbitmq.xml), TCP_NODELAY on, one
  channel, no publisher confirms, 200-byte ASCII bodies (stock txamqp decodes
  bodies as UTF-8 text, so only ASCII survives the round trip), no properties.
    raw publish          --raw messages published back to back (basic.publish
                         has no reply: a publish is done once it is handed to
                         the transport);
    raw delivered p1     from the first publish until a stock-txamqp consumer
                         in another OS process has received and acked them
                         all, prefetch 1, one basic.ack each (what an ION
                         subscriber does);
    raw delivered p100   the same with prefetch 100.

  PROJECT: InfoLoggingEventPublisher.create_and_publish_event (message
  instance, GPB structure, ION headers, msgpack, the project's AMQP
  connection), --events events in each mode:
    (a) serial, confirms on   each call awaited before the next; a call ends
                              when RabbitMQ confirmed the publish (the default);
    (b) serial, confirms off  the broker URL with ?confirms=0: a call ends when
                              the publish is handed to the transport;
    (c) window W, confirms on up to W calls in flight at once;
  and for each mode, events delivered per second to an EventSubscriber in
  another OS process (its default settings): from the first call until that process
  reports it has all of them.

The ratios are project / raw: publish rates against raw publish, delivery
rates against raw delivered p1.  Every "delivered" figure includes the
publishing: it is the rate of the whole pipeline.  Publishers, the broker and
the subscriber share the machine's cores.

With --broker memory everything runs in this OS process on the embedded
broker: no txamqp, no AMQP, no second process.  "Raw" then means the
embedded broker's own connection (publish / consume of 200-byte bodies), and
mode (b) does not apply (the embedded broker has no publisher confirms).

--profile runs --events serial create_and_publish_event calls on the embedded
broker (or --profile-broker URL) under cProfile, or pyinstrument with
--profiler pyinstrument, with a queue bound and nothing consuming it, so only
the publish path is measured.  It prints the publish path's stages timed one
by one without the profiler (microseconds per event), then the costliest
functions with their share of the profiled run.  See bench/README.txt.
"""

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, protocol, task  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure  # noqa: E402
from txamqp import spec as txspec  # noqa: E402
from txamqp.client import TwistedDelegate  # noqa: E402
from txamqp.content import Content  # noqa: E402
from txamqp.protocol import AMQClient  # noqa: E402

from ion.core.cc.container import create_new_container, forget_container  # noqa: E402
from ion.core.messaging.broker import connect  # noqa: E402
from ion.core.messaging.broker.address import BrokerAddress  # noqa: E402
from ion.core.messaging.broker.amqp import SPEC_PATH  # noqa: E402
from ion.core.messaging.broker.interface import BrokerError  # noqa: E402
from ion.core.process.process import Process  # noqa: E402
from ion.core.resources import resource_path  # noqa: E402
from ion.services.dm.distribution.events import (  # noqa: E402
    InfoLoggingEventPublisher,
    InfoLoggingEventSubscriber,
)
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory  # noqa: E402

RABBIT = "amqp://guest:guest@127.0.0.1:5672/%2F"
ORIGIN = "bench"
RAW_SIZE = 200
WAIT = 60  # seconds any single step may take
PREFETCHES = (1, 100)


def start_logging():
    observer = textFileLogObserver(sys.stderr)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])], redirectStandardIO=False)


def with_query(url, query):
    return url + ("&" if "?" in url else "?") + query


@defer.inlineCallbacks
def start_container(broker, sysname):
    container = create_new_container()
    yield container.initialize(BrokerAddress.from_url(broker), {"sysname": sysname})
    yield container.activate()
    return container


@defer.inlineCallbacks
def stop_container(container):
    try:
        yield container.terminate()
    finally:
        forget_container(container)


def in_window(count, window, call):
    """
    Run call(0) .. call(count - 1), at most `window` of their Deferreds
    unfired at once; fires when all have fired, fails with the first failure.
    Iterative, so calls whose Deferreds fire at once do not recurse.
    """
    done = defer.Deferred()
    state = {"next": 0, "open": 0, "finished": 0, "pumping": False}

    def finished(result):
        state["open"] -= 1
        state["finished"] += 1
        if isinstance(result, Failure):
            if not done.called:
                done.errback(result)
            return None
        if state["finished"] == count and not done.called:
            done.callback(None)
        else:
            pump()
        return None

    def pump():
        if state["pumping"]:
            return  # the loop below is running further up the stack
        state["pumping"] = True
        try:
            while state["open"] < window and state["next"] < count and not done.called:
                n = state["next"]
                state["next"] += 1
                state["open"] += 1
                call(n).addBoth(finished)
        finally:
            state["pumping"] = False

    if count == 0:
        done.callback(None)
    else:
        pump()
    return done


# -- stock txamqp: the raw baseline -------------------------------------------


@defer.inlineCallbacks
def txamqp_open(reactor, address):
    """A stock txamqp connection with channel 1 open: (client, channel)."""
    if address.tls or address.endpoint_string:
        raise ValueError("the raw txamqp baseline speaks plain amqp:// host:port only, not %s" % address.description)
    spec = txspec.load(resource_path(SPEC_PATH))
    creator = protocol.ClientCreator(reactor, AMQClient, delegate=TwistedDelegate(), vhost=address.vhost, spec=spec)
    client = yield creator.connectTCP(address.host, address.port, timeout=30)
    client.transport.setTcpNoDelay(True)
    yield client.authenticate(address.username, address.password, mechanism="PLAIN")
    channel = yield client.channel(1)
    yield channel.channel_open()
    return client, channel


@defer.inlineCallbacks
def txamqp_close(client, channel):
    try:
        yield channel.channel_close(reply_code=200, reply_text="done", class_id=0, method_id=0)
    finally:
        yield client.close(within=5)


@defer.inlineCallbacks
def txamqp_count(reactor, args, report):
    """Child side: consume --queue with --prefetch, ack each, report 'ready' then 'done N'."""
    client, channel = yield txamqp_open(reactor, BrokerAddress.from_url(args.broker))
    try:
        yield channel.basic_qos(prefetch_size=0, prefetch_count=args.prefetch, global_=False)
        reply = yield channel.basic_consume(queue=args.queue, no_ack=False)
        deliveries = yield client.queue(reply.consumer_tag)
        report("ready")
        for _ in range(args.raw):
            msg = yield deliveries.get()
            channel.basic_ack(delivery_tag=msg.delivery_tag, multiple=False)
        report("done %d" % args.raw)
    finally:
        yield txamqp_close(client, channel)


class RawTxamqp:
    """The parent's stock-txamqp publisher, one per run; a fresh exchange and queue per consumer."""

    def __init__(self, reactor, args):
        self.reactor, self.args = reactor, args
        self.client = self.channel = None
        self.names = []
        self.body = os.urandom(RAW_SIZE // 2).hex()  # ASCII, RAW_SIZE bytes

    @defer.inlineCallbacks
    def open(self):
        self.client, self.channel = yield txamqp_open(self.reactor, BrokerAddress.from_url(self.args.broker))

    @defer.inlineCallbacks
    def prepare(self, tag):
        """An exchange and a queue bound to it with '#'; fires with their (shared) name."""
        name = "%s.bench.raw.%s" % (self.args.sysname, tag)
        self.names.append(name)
        yield self.channel.exchange_declare(exchange=name, type="topic", durable=False, auto_delete=True)
        yield self.channel.queue_declare(queue=name, durable=False, exclusive=False, auto_delete=True)
        yield self.channel.queue_bind(queue=name, exchange=name, routing_key="#")
        return name

    def publish(self, name, count):
        body = self.body

        def one(_n):
            return self.channel.basic_publish(exchange=name, routing_key="raw.bench", content=Content(body))

        return in_window(count, 1, one)

    @defer.inlineCallbacks
    def close(self):
        if self.client is None:
            return
        try:
            for name in self.names:  # normally auto-deleted already; delete is idempotent on RabbitMQ
                yield self.channel.queue_delete(queue=name)
                yield self.channel.exchange_delete(exchange=name)
        finally:
            yield txamqp_close(self.client, self.channel)


class RawMemory:
    """With --broker memory: the embedded broker's connection stands in for txamqp (same interface as RawTxamqp)."""

    def __init__(self, reactor, args, connection):
        self.reactor, self.args, self.connection = reactor, args, connection
        self.names = []
        self.body = os.urandom(RAW_SIZE // 2).hex().encode()

    def open(self):
        return defer.succeed(None)

    @defer.inlineCallbacks
    def prepare(self, tag):
        name = "%s.bench.raw.%s" % (self.args.sysname, tag)
        self.names.append(name)
        yield self.connection.exchange_declare(name, type="topic", durable=False, auto_delete=True)
        yield self.connection.queue_declare(name, auto_delete=True)
        yield self.connection.queue_bind(name, name, "#")
        return name

    def publish(self, name, count):
        body, properties = self.body, {"delivery_mode": 1}
        return in_window(count, 1, lambda _n: self.connection.publish(name, "raw.bench", body, properties))

    @defer.inlineCallbacks
    def close(self):
        for name in self.names:
            for delete in (self.connection.queue_delete, self.connection.exchange_delete):
                try:
                    yield delete(name)
                except BrokerError:
                    pass  # gone with its last consumer or binding


@defer.inlineCallbacks
def memory_count(connection, queue, count, prefetch, report):
    """Consume `queue` in this process (embedded broker), acking each; reports 'ready', then 'done N'."""
    done, received = defer.Deferred(), [0]

    def on_message(delivery):
        delivery.ack()
        received[0] += 1
        if received[0] == count:
            done.callback(None)

    consumer = yield connection.consume(queue, on_message, prefetch_count=prefetch)
    report("ready")
    yield done
    report("done %d" % received[0])
    yield consumer.cancel()


# -- the event subscriber (a child process, or this process on the embedded broker) ---


@defer.inlineCallbacks
def count_events(count, batches, report):
    """An EventSubscriber for 3003.bench; reports 'ready', then 'done K' at each multiple K of `count`."""
    proc = Process(spawnargs={"proc-name": "bench-subscriber"})
    yield proc.spawn()
    done, received = defer.Deferred(), [0]

    def ondata(data):
        received[0] += 1
        if received[0] % count == 0:
            report("done %d" % received[0])
            if received[0] == count * batches:
                done.callback(None)

    yield SubscriberFactory(process=proc).build(
        subscriber_type=InfoLoggingEventSubscriber, origin=ORIGIN, handler=ondata
    )
    report("ready")
    yield done
    yield proc.terminate()


@defer.inlineCallbacks
def child_main(reactor, args):
    """--child events|raw: count in this process and tell the parent on stdout."""

    def report(line):
        print(line, flush=True)

    if args.child == "raw":
        yield txamqp_count(reactor, args, report)
        return
    container = yield start_container(args.broker, args.sysname)
    try:
        yield count_events(args.events, args.batches, report)
    finally:
        yield stop_container(container)


class ChildProtocol(protocol.ProcessProtocol):
    """A child started with --child; `expect(word)` fires (perf_counter time) when it prints a line starting with word."""

    def __init__(self):
        self.buffer = b""
        self.waiting = []  # (word, Deferred)
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        now = time.perf_counter()
        for line in lines:
            word = line.decode().split(" ", 1)[0]
            for entry in [w for w in self.waiting if w[0] == word][:1]:
                self.waiting.remove(entry)
                entry[1].callback(now)

    def errReceived(self, data):
        sys.stderr.write("[child %s] %s" % (self.transport.pid, data.decode(errors="replace")))

    def processEnded(self, reason):
        for _word, d in self.waiting:
            d.errback(RuntimeError("the child process ended early: %s" % (reason.value,)))
        self.waiting = []
        self.ended.callback(None)

    def expect(self, word):
        d = defer.Deferred()
        self.waiting.append((word, d))
        return d


class Counter:
    """
    The receiving side: a child OS process (RabbitMQ) or this process (embedded
    broker).  start() fires once it consumes; expect_done() before each batch
    gives a Deferred firing (perf_counter time) when that batch is all in.
    """

    def __init__(self, reactor, args, mode, queue=None, prefetch=1, batches=1, connection=None):
        self.reactor, self.args, self.mode = reactor, args, mode
        self.queue, self.prefetch, self.batches, self.connection = queue, prefetch, batches, connection
        self.child = self.running = None
        self.marks = []

    def start(self):
        if self.args.broker == "memory":
            return self._start_here()
        self.child = ChildProtocol()
        ready = self.child.expect("ready")
        argv = [sys.executable, os.path.abspath(__file__), "--child", self.mode, "--broker", self.args.broker,
                "--sysname", self.args.sysname, "--events", str(self.args.events), "--raw", str(self.args.raw),
                "--batches", str(self.batches), "--prefetch", str(self.prefetch), "--queue", self.queue or ""]
        self.reactor.spawnProcess(self.child, sys.executable, argv, env=os.environ)
        return ready.addTimeout(WAIT, self.reactor)

    def expect_done(self):
        if self.child is not None:
            return self.child.expect("done").addTimeout(WAIT, self.reactor)
        d = defer.Deferred()
        self.marks.append(d)
        return d.addTimeout(WAIT, self.reactor)

    def _start_here(self):
        ready = defer.Deferred()

        def report(line):
            if line == "ready":
                ready.callback(time.perf_counter())
            elif self.marks:
                self.marks.pop(0).callback(time.perf_counter())

        def failed(failure):
            for d in [ready] + self.marks:
                if not d.called:
                    d.errback(failure)

        if self.mode == "events":
            self.running = count_events(self.args.events, self.batches, report)
        else:
            self.running = memory_count(self.connection, self.queue, self.args.raw, self.prefetch, report)
        self.running.addErrback(failed)
        return ready

    @defer.inlineCallbacks
    def stop(self):
        if self.running is not None:
            try:
                yield self.running.addTimeout(WAIT, self.reactor)
            except defer.TimeoutError:
                pass  # it failed already, and said so
        if self.child is not None and self.child.transport.pid is not None:
            try:
                yield self.child.ended.addTimeout(WAIT, self.reactor)
            except defer.TimeoutError:
                self.child.transport.signalProcess("TERM")
                yield self.child.ended


# -- the measurements ------------------------------------------------------------


@defer.inlineCallbacks
def bench_raw(reactor, args, results, connection=None):
    """Raw publish rate, and delivery rate to a consumer elsewhere, once per prefetch."""
    raw = RawMemory(reactor, args, connection) if args.broker == "memory" else RawTxamqp(reactor, args)
    yield raw.open()
    try:
        for prefetch in PREFETCHES:
            name = yield raw.prepare("p%d" % prefetch)
            counter = Counter(reactor, args, "raw", queue=name, prefetch=prefetch, connection=connection)
            try:
                yield counter.start()
                done = counter.expect_done()
                start = time.perf_counter()
                yield raw.publish(name, args.raw)
                published = time.perf_counter()
                delivered = yield done
            finally:
                yield counter.stop()
            if prefetch == PREFETCHES[0]:
                results["raw_publish"] = args.raw / (published - start)
            results["raw_delivered_p%d" % prefetch] = args.raw / (delivered - start)
    finally:
        yield raw.close()


@defer.inlineCallbacks
def publisher_in(container):
    """A process with an InfoLoggingEventPublisher; (process, publisher, event body size in bytes)."""
    proc = Process(spawnargs={"proc-name": "bench-publisher"})
    yield proc.spawn()
    publisher = InfoLoggingEventPublisher(process=proc, origin=ORIGIN)
    yield proc.register_life_cycle_object(publisher)
    # One warm-up event (nothing consumes yet: it is dropped), noting the size of its AMQP body.
    connection, sizes = container.exchange_manager.connection, []

    def noting(exchange, routing_key, body, *rest, **kwargs):
        sizes.append(len(body))
        return type(connection).publish(connection, exchange, routing_key, body, *rest, **kwargs)

    connection.publish = noting
    try:
        yield publisher.create_and_publish_event(name="bench event", description="warm-up")
    finally:
        del connection.publish
    return proc, publisher, sizes[0] if sizes else None


@defer.inlineCallbacks
def run_events(reactor, args, publisher, counter, window):
    """--events calls with `window` in flight: (publish rate, delivery rate)."""
    done = counter.expect_done()
    start = time.perf_counter()
    yield in_window(
        args.events, window,
        lambda n: publisher.create_and_publish_event(name="bench event", description="event %d" % n),
    )
    published = time.perf_counter()
    delivered = yield done
    return args.events / (published - start), args.events / (delivered - start)


@defer.inlineCallbacks
def bench_events(reactor, args, results):
    """
    Mode (b) in a container whose connection has confirms off, then (a) and (c)
    in a new one with confirms on (on the embedded broker: (a) and (c) only);
    one subscriber counts all.  Fires with the container left running.
    """
    on_rabbit = args.broker != "memory"
    plan = [(with_query(args.broker, "confirms=0"), [("b", 1)])] if on_rabbit else []
    plan.append((args.broker, [("a", 1), ("c", args.window)]))
    counter = Counter(reactor, args, "events", batches=sum(len(modes) for _url, modes in plan))
    container = proc = None
    try:
        for url, modes in plan:
            if container is not None:
                yield stop_container(container)
                container = None
            container = yield start_container(url, args.sysname)
            proc, publisher, results["event_body_bytes"] = yield publisher_in(container)
            if counter.running is None and counter.child is None:
                yield counter.start()
            for mode, window in modes:
                results["events_publish_" + mode], results["events_delivered_" + mode] = yield run_events(
                    reactor, args, publisher, counter, window)
            yield proc.terminate()
            proc = None
    except BaseException:
        if container is not None:
            if proc is not None:
                yield proc.terminate()
            yield stop_container(container)
        raise
    finally:
        yield counter.stop()
    return container


@defer.inlineCallbacks
def remove_leftovers(url, sysname, queues=()):
    """
    `queues`, then the events exchange if nothing uses it: RabbitMQ keeps an
    auto-delete exchange that was never bound.
    """
    connection = yield connect(BrokerAddress.from_url(url))
    try:
        for delete, name in [(connection.queue_delete, q) for q in queues] + [
                (lambda e: connection.exchange_delete(e, if_unused=True), "%s.events.topic" % sysname)]:
            try:
                yield delete(name)
            except BrokerError:
                pass  # gone already (or in use, then not ours to delete)
    finally:
        yield connection.close()


# -- output ------------------------------------------------------------------------


def report(args, results, broker, seconds):
    memory = args.broker == "memory"
    r = results
    lines = ["broker: %s" % broker]
    if memory:
        lines += [
            "EVERYTHING IN THIS OS PROCESS on the embedded broker: no txamqp, no AMQP, no second process;",
            "'raw' is the embedded broker's own connection, and subscribers compete with the publisher.",
            "",
            "RAW embedded-broker connection, 200-byte bodies (%d messages)" % args.raw,
        ]
    else:
        lines += [
            "publishers in this process; each consumer/subscriber in another OS process",
            "",
            "RAW stock txamqp (AMQClient + TwistedDelegate, project spec file, TCP_NODELAY, 1 channel, no confirms,",
            "    200-byte ASCII bodies, no properties; %d messages)" % args.raw,
        ]
    lines += [
        "  raw publish                       %9.0f /s" % r["raw_publish"],
        "  raw delivered, prefetch 1         %9.0f /s  (ack each)" % r["raw_delivered_p1"],
        "  raw delivered, prefetch 100       %9.0f /s  (ack each)" % r["raw_delivered_p100"],
        "",
        "PROJECT InfoLoggingEventPublisher.create_and_publish_event (%d events per mode, AMQP body %s bytes;"
        % (args.events, r.get("event_body_bytes")),
        "    delivered = EventSubscriber%s, default settings)" % (" in this process" if memory else " in another OS process"),
        "                                     published   /raw pub     delivered  /raw p1",
    ]
    confirms = "" if memory else ", confirms on"
    modes = [("a", "(a) serial" + confirms), ("b", "(b) serial, confirms off"),
             ("c", "(c) window %d%s" % (args.window, confirms))]
    for key, label in modes:
        if "events_publish_" + key not in r:
            lines.append("  %-32s %s" % (label, "n/a (the embedded broker has no publisher confirms)"))
            continue
        pub, dlv = r["events_publish_" + key], r["events_delivered_" + key]
        lines.append("  %-32s %8.0f /s  %7.3f   %8.0f /s  %7.3f"
                     % (label, pub, pub / r["raw_publish"], dlv, dlv / r["raw_delivered_p1"]))
    lines += ["", "total run time: %.1f s" % seconds]
    print("\n".join(lines))


@defer.inlineCallbacks
def main(reactor, args):
    start_logging()
    if "confirms=" in args.broker:
        raise SystemExit("--broker: leave confirms out of the URL; the run sets it per mode")
    args.sysname = "bench-%s" % uuid.uuid4().hex[:8]
    began = time.perf_counter()
    results = {}
    container = yield bench_events(reactor, args, results)
    broker = container.exchange_manager.description
    try:
        yield bench_raw(reactor, args, results, container.exchange_manager.connection)
    finally:
        yield stop_container(container)
        if args.broker != "memory":
            yield remove_leftovers(args.broker, args.sysname)
    seconds = time.perf_counter() - began
    report(args, results, broker, seconds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results, broker=broker, events=args.events, raw=args.raw, window=args.window,
                           seconds=seconds), f, indent=1)


# -- profile -----------------------------------------------------------------------


class Profiler:
    """cProfile, or pyinstrument (a sampling profiler, far less overhead on small calls) when asked."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "pyinstrument":
            import pyinstrument  # pip install pyinstrument

            self.profiler = pyinstrument.Profiler(interval=0.0005, async_mode="disabled")
        else:
            self.profiler = cProfile.Profile()

    def start(self):
        if self.kind == "pyinstrument":
            self.profiler.start()
        else:
            self.profiler.enable()

    def stop(self):
        if self.kind == "pyinstrument":
            self.profiler.stop()
        else:
            self.profiler.disable()

    def show(self, args):
        if self.kind == "pyinstrument":
            print(self.profiler.output_text(unicode=False, color=False, flat=True)[:6000])
            tree = self.profiler.output_text(unicode=False, color=False).splitlines()
            print("\n".join(tree[:args.profile_top * 3]))
            if args.profile_out:
                with open(args.profile_out, "w") as f:
                    f.write(self.profiler.output_html())
            return
        print_profile(pstats.Stats(self.profiler), args.profile_top)
        if args.profile_out:
            self.profiler.dump_stats(args.profile_out)


@defer.inlineCallbacks
def profile_main(reactor, args):
    """
    --profile: serial create_and_publish_event calls under a profiler, on the
    embedded broker by default, with a queue bound and nothing consuming it.
    """
    start_logging()
    args.sysname = "bench-%s" % uuid.uuid4().hex[:8]
    queue = "%s.bench.profile" % args.sysname
    container = yield start_container(args.profile_broker, args.sysname)
    broker = container.exchange_manager.description
    try:
        proc, publisher, size = yield publisher_in(container)
        connection = container.exchange_manager.connection
        yield connection.queue_declare(queue, auto_delete=True)
        yield connection.queue_bind(queue, "%s.events.topic" % args.sysname, "#")
        profiler = Profiler(args.profiler)
        start = time.perf_counter()
        profiler.start()
        yield in_window(
            args.events, 1,
            lambda n: publisher.create_and_publish_event(name="bench event", description="event %d" % n),
        )
        profiler.stop()
        seconds = time.perf_counter() - start
        stages = yield stage_timings(args, publisher, connection)
        yield proc.terminate()
    finally:
        yield stop_container(container)
        if args.profile_broker != "memory":
            yield remove_leftovers(args.profile_broker, args.sysname, [queue])
    print("%d serial create_and_publish_event calls on %s under %s: %.2f s (%.0f /s); AMQP body %s bytes"
          % (args.events, broker, args.profiler, seconds, args.events / seconds, size))
    print("\nstages, timed apart without the profiler (microseconds per event):")
    whole = stages[0][1]
    for label, micros in stages:
        print("  %7.1f us  %5.1f%%  %s" % (micros, 100 * micros / whole, label))
    print("  %7.1f us  %5.1f%%  %s" % (whole - sum(m for _l, m in stages[1:]),
                                      100 - 100 * sum(m for _l, m in stages[1:]) / whole,
                                      "the rest: Deferreds/inlineCallbacks between the stages, checks, declare cache"))
    profiler.show(args)


@defer.inlineCallbacks
def stage_timings(args, publisher, connection):
    """
    The publish path's stages, each run --events times on its own without a
    profiler: [(label, microseconds per event)], the whole call first.
    """
    from ion.core.messaging import envelope

    count, stages = args.events, []
    exchange, key = "%s.events.topic" % args.sysname, "3003.%s" % ORIGIN
    clock = [0.0]

    def start():
        clock[0] = time.perf_counter()

    def lap(label):
        stages.append((label, 1e6 * (time.perf_counter() - clock[0]) / count))

    start()
    yield in_window(count, 1, lambda n: publisher.create_and_publish_event(name="bench event", description="e %d" % n))
    lap("create_and_publish_event, the whole call")

    # Each stage's results are dropped as it goes: thousands kept alive would time the garbage collector.
    start()
    for n in range(count):
        packed = publisher._new_packed_event({"name": "bench event", "description": "e %d" % n})[1]
    lap("the event's plan: EventMessage + payload objects, fields, the packed Structure (event_plan.py)")

    template = envelope.Template("sender", key, None, {"sender-name": "p"})
    start()
    for _n in range(count):
        body = template.body(packed)
    lap("the envelope of the packed content: its route's envelope.Template (ION headers, msgpack)")

    start()
    yield in_window(count, 1, lambda n: connection.publish(exchange, key, body, template.properties, mandatory=True))
    lap("connection.publish of the %d-byte body (the broker connection's own cost)" % len(body))
    return stages


def print_profile(stats, top):
    total = stats.total_tt
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

    def name(func):
        filename, line, function = func
        for prefix in (root, os.path.dirname(os.__file__) + os.sep):
            if filename.startswith(prefix):
                filename = filename[len(prefix):]
        if "site-packages" + os.sep in filename:
            filename = filename.split("site-packages" + os.sep, 1)[1]
        return "%s:%d(%s)" % (filename, line, function)

    rows = [(func, cc, nc, tt, ct) for func, (cc, nc, tt, ct, _callers) in stats.stats.items()]
    for title, key in (("cumulative", lambda row: row[4]), ("own time", lambda row: row[3])):
        print("\ntop %d by %s (of %.2f s profiled)" % (top, title, total))
        print("  %6s %6s %9s  %s" % ("cum%", "own%", "calls", "function"))
        for func, _cc, nc, tt, ct in sorted(rows, key=key, reverse=True)[:top]:
            print("  %5.1f%% %5.1f%% %9d  %s" % (100 * ct / total, 100 * tt / total, nc, name(func)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default=RABBIT, help="amqp:// URL, or memory (default: local RabbitMQ)")
    parser.add_argument("--events", type=int, default=5000, help="events per mode (default 5000)")
    parser.add_argument("--raw", type=int, default=20000, help="raw messages per consumer (default 20000)")
    parser.add_argument("--window", type=int, default=100, help="events in flight in mode (c) (default 100)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--profile", action="store_true", help="profile --events calls on the embedded broker")
    parser.add_argument("--profile-top", type=int, default=25, help="functions to list (default 25)")
    parser.add_argument("--profile-out", help="also write the profile to this file (cProfile stats, or pyinstrument HTML)")
    parser.add_argument("--profiler", choices=("cprofile", "pyinstrument"), default="cprofile",
                        help="profiler for --profile (default cprofile)")
    parser.add_argument("--profile-broker", default="memory",
                        help="broker for --profile (default memory; an amqp URL with ?confirms=0 shows the AMQP codec)")
    parser.add_argument("--child", choices=("events", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--sysname", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--prefetch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child:
        start_logging()
        task.react(child_main, [arguments])
    elif arguments.profile:
        task.react(profile_main, [arguments])
    else:
        task.react(main, [arguments])
