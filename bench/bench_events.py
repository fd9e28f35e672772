"""
Event throughput, compared with bare AMQP on the same broker and connection code.

    python bench/bench_events.py [--broker URL|memory] [--events N] [--raw N]

In one run, on RabbitMQ (amqp://guest:guest@127.0.0.1:5672/%2F by default):

  (a) events published per second: InfoLoggingEventPublisher.create_and_publish_event
      (message instance, GPB Structure, ION headers, msgpack) until the publish
      calls have returned;
  (b) events delivered per second to an EventSubscriber in another OS process
      (this script started with --child events): from the first publish until
      the child reports it has all N;
  (c) raw 200-byte messages published per second (no ION headers, no GPB), and
  (d) raw messages delivered per second to a consumer in another OS process
      (--child raw), acking each with prefetch 1 like a subscriber.

Then the ratios (a)/(c) and (b)/(d).  The raw side uses the project's AMQP
connection (ion.core.messaging.broker.amqp, txamqp with the project's
0-9-1 spec), so the ratios show what the event layer costs on top of it.
With --broker memory the "other process" runs in this one (the embedded
broker cannot be shared), so (b) and (d) then compete with the publisher.
"""

import argparse
import os
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

from ion.core.cc.container import create_new_container  # noqa: E402
from ion.core.messaging.broker import connect  # noqa: E402
from ion.core.messaging.broker.address import BrokerAddress  # noqa: E402
from ion.core.messaging.broker.interface import BrokerError  # noqa: E402
from ion.core.process.process import Process  # noqa: E402
from ion.services.dm.distribution.events import (  # noqa: E402
    InfoLoggingEventPublisher,
    InfoLoggingEventSubscriber,
)
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory  # noqa: E402

RABBIT = "amqp://guest:guest@127.0.0.1:5672/%2F"
ORIGIN = "bench"
WAIT = 60  # seconds any single step may take


def start_logging():
    observer = textFileLogObserver(sys.stderr)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])], redirectStandardIO=False)


@defer.inlineCallbacks
def start_container(broker, sysname):
    container = create_new_container()
    yield container.initialize(BrokerAddress.from_url(broker), {"sysname": sysname})
    yield container.activate()
    return container


# -- the counting side (a child process, or this process on the embedded broker) -----


@defer.inlineCallbacks
def count_events(count, report):
    """An EventSubscriber for 3003.bench in the running container; reports 'ready', then 'done' at `count`."""
    proc = Process(spawnargs={"proc-name": "bench-subscriber"})
    yield proc.spawn()
    done, received = defer.Deferred(), [0]

    def ondata(data):
        received[0] += 1
        if received[0] == count:
            done.callback(None)

    yield SubscriberFactory(process=proc).build(
        subscriber_type=InfoLoggingEventSubscriber, origin=ORIGIN, handler=ondata
    )
    report("ready")
    yield done
    report("done %d" % received[0])
    yield proc.terminate()


@defer.inlineCallbacks
def count_raw(connection, queue, count, report):
    """Consume `queue` with prefetch 1, acking each message; reports 'ready', then 'done' at `count`."""
    done, received = defer.Deferred(), [0]

    def on_message(delivery):
        delivery.ack()
        received[0] += 1
        if received[0] == count:
            done.callback(None)

    consumer = yield connection.consume(queue, on_message, prefetch_count=1)
    report("ready")
    yield done
    report("done %d" % received[0])
    yield consumer.cancel()


@defer.inlineCallbacks
def child_main(reactor, args):
    """--child events|raw: count in this process and tell the parent on stdout."""

    def report(line):
        print(line, flush=True)

    if args.child == "raw":
        connection = yield connect(BrokerAddress.from_url(args.broker))
        try:
            yield count_raw(connection, args.queue, args.raw, report)
        finally:
            yield connection.close()
        return
    container = yield start_container(args.broker, args.sysname)
    try:
        yield count_events(args.events, report)
    finally:
        yield container.terminate()


# -- the publishing side ------------------------------------------------------------


class ChildProtocol(protocol.ProcessProtocol):
    """A child started with --child; `expect(word)` fires when it prints a line starting with word."""

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
            for entry in [w for w in self.waiting if w[0] == word]:
                self.waiting.remove(entry)
                entry[1].callback(now)

    def errReceived(self, data):
        sys.stderr.write(data.decode(errors="replace"))

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
    """Where the counting side runs: a child OS process, or (embedded broker) this process."""

    def __init__(self, reactor, args, mode, connection=None, queue=None):
        self.reactor, self.args, self.mode = reactor, args, mode
        self.connection, self.queue = connection, queue
        self.child = self.running = None

    def start(self):
        """Fires once the counter is consuming; then `done` fires (perf_counter time) when it has all."""
        if self.args.broker == "memory":
            return self._start_here()
        self.child = ChildProtocol()
        ready, self.done = self.child.expect("ready"), self.child.expect("done")
        argv = [sys.executable, os.path.abspath(__file__), "--child", self.mode, "--broker", self.args.broker]
        argv += ["--sysname", self.args.sysname, "--events", str(self.args.events), "--raw", str(self.args.raw)]
        argv += ["--queue", self.queue or ""]
        self.reactor.spawnProcess(self.child, sys.executable, argv, env=os.environ)
        return ready

    def _start_here(self):
        marks = {"ready": defer.Deferred(), "done": defer.Deferred()}

        def report(line):
            marks[line.split()[0]].callback(time.perf_counter())

        def failed(failure):
            for d in marks.values():
                if not d.called:
                    d.errback(failure)

        if self.mode == "events":
            self.running = count_events(self.args.events, report)
        else:
            self.running = count_raw(self.connection, self.queue, self.args.raw, report)
        self.running.addErrback(failed)
        self.done = marks["done"]
        return marks["ready"]

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


@defer.inlineCallbacks
def bench_events(reactor, args):
    """(a) publish rate and (b) delivery rate to the subscriber elsewhere; fires with both."""
    proc = Process(spawnargs={"proc-name": "bench-publisher"})
    yield proc.spawn()
    publisher = InfoLoggingEventPublisher(process=proc, origin=ORIGIN)
    yield proc.register_life_cycle_object(publisher)
    counter = Counter(reactor, args, "events")
    try:
        yield counter.start().addTimeout(WAIT, reactor)
        start = time.perf_counter()
        for n in range(args.events):
            yield publisher.create_and_publish_event(name="bench event", description="event %d" % n)
        published = time.perf_counter()
        delivered = yield counter.done.addTimeout(WAIT, reactor)
    finally:
        yield counter.stop()
        yield proc.terminate()
    return args.events / (published - start), args.events / (delivered - start)


@defer.inlineCallbacks
def bench_raw(reactor, args, connection):
    """(c) raw publish rate and (d) raw delivery rate, same connection code, no ION layer."""
    exchange = queue = "%s.bench.raw" % (args.sysname,)
    yield connection.exchange_declare(exchange, type="topic", durable=False, auto_delete=True)
    yield connection.queue_declare(queue, auto_delete=True)
    yield connection.queue_bind(queue, exchange, "#")
    counter = Counter(reactor, args, "raw", connection, queue)
    body = os.urandom(100).hex().encode()  # 200 bytes
    properties = {"content_type": "application/octet-stream", "delivery_mode": 1}
    try:
        yield counter.start().addTimeout(WAIT, reactor)
        start = time.perf_counter()
        for _ in range(args.raw):
            yield connection.publish(exchange, "raw.bench", body, properties)
        published = time.perf_counter()
        delivered = yield counter.done.addTimeout(WAIT, reactor)
    finally:
        yield counter.stop()
        for delete, name in ((connection.queue_delete, queue), (connection.exchange_delete, exchange)):
            try:
                yield delete(name)
            except BrokerError:
                pass  # already gone with its last consumer or binding
    return args.raw / (published - start), args.raw / (delivered - start)


@defer.inlineCallbacks
def remove_leftovers(args):
    """
    The run's exchanges, if nothing uses them: RabbitMQ auto-deletes an exchange
    only when its last binding goes, not one that was declared and never bound.
    """
    connection = yield connect(BrokerAddress.from_url(args.broker))
    try:
        for name in ("%s.events.topic" % args.sysname, "%s.bench.raw" % args.sysname):
            try:
                yield connection.exchange_delete(name, if_unused=True)
            except BrokerError:
                pass  # gone already (or in use, then not ours to delete)
    finally:
        yield connection.close()


@defer.inlineCallbacks
def main(reactor, args):
    start_logging()
    args.sysname = "bench-%s" % uuid.uuid4().hex[:8]
    began = time.perf_counter()
    container = yield start_container(args.broker, args.sysname)
    broker = container.exchange_manager.description
    try:
        event_pub, event_e2e = yield bench_events(reactor, args)
        raw_pub, raw_e2e = yield bench_raw(reactor, args, container.exchange_manager.connection)
    finally:
        yield container.terminate()
        yield remove_leftovers(args)
    where = "in this process" if args.broker == "memory" else "in another OS process"
    print("broker: %s" % (broker,))
    print("(a) events published:     %8.0f /s  (%d events)" % (event_pub, args.events))
    print("(b) events delivered:     %8.0f /s  (subscriber %s)" % (event_e2e, where))
    print("(c) raw 200 B published:  %8.0f /s  (%d messages)" % (raw_pub, args.raw))
    print("(d) raw 200 B delivered:  %8.0f /s  (consumer %s, prefetch 1, ack each)" % (raw_e2e, where))
    print("publish  ratio (a)/(c): %.3f" % (event_pub / raw_pub))
    print("delivery ratio (b)/(d): %.3f" % (event_e2e / raw_e2e))
    print("total run time: %.1f s" % (time.perf_counter() - began))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default=RABBIT, help="amqp:// URL, or memory (default: local RabbitMQ)")
    parser.add_argument("--events", type=int, default=5000, help="events to publish (default 5000)")
    parser.add_argument("--raw", type=int, default=20000, help="raw messages to publish (default 20000)")
    parser.add_argument("--child", choices=("events", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--sysname", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child:
        start_logging()
        task.react(child_main, [arguments])
    else:
        task.react(main, [arguments])
