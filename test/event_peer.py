"""
An event publisher or durable subscriber in an OS process of its own, for
tests that restart the broker or kill a peer:

    python -m test.event_peer subscribe BROKER_URL SYSNAME QUEUE ORIGIN [QUEUE_TYPE]
    python -m test.event_peer publish BROKER_URL SYSNAME COUNT ORIGIN [RATE]
    python -m test.event_peer persist BROKER_URL SYSNAME QUEUE STORE_URL

`subscribe` takes InfoLogging events from ORIGIN through the named durable
queue and writes `SUBSCRIBED <queue>`, then `EVENT <name>` once each event's
handler is done (the event is acked right after); QUEUE_TYPE ('quorum',
say) is the queue's x-queue-type.  `publish` sends COUNT
persistent events named 0, 1, ... with up to 100 awaiting their confirm (at
most RATE a second, if given), and
writes `CONFIRMED <name>` as each confirm comes (`REFUSED <name>` for a
basic.nack), then `DONE`.  `persist`
runs an EventPersister of InfoLogging events on QUEUE into STORE_URL and
writes `SUBSCRIBED <queue>`.  Each writes `NODE <host:port>` when it
connects to a (new) node of the broker.  All log to
stderr and stop when stdin closes.  `spawn` starts one from a test and
gives its PeerProcess.
"""

import os
import select
import sys

from twisted.internet import defer, reactor, stdio, task
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import globalLogBeginner, textFileLogObserver

from ion.core.cc.container import create_new_container, stop_container
from ion.core.messaging.broker.address import BrokerAddress
from ion.core.messaging.broker.interface import MessageRefused
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory
from ion.services.dm.inventory.event_persister import EventPersister

WINDOW = 100


class _Control(Protocol):
    """
    stdout carries what happened; stdin closing means stop.

    Lines go straight to the pipe, not through the transport's buffer: an
    `EVENT` line is out before its ack is written, so a SIGKILL can never
    leave an event acked to the broker but unreported to the test (the
    transport may flush the AMQP socket first and die before stdout).
    """

    def __init__(self):
        self.closed = defer.Deferred()

    def write(self, line):
        data, fd = line.encode("utf-8") + b"\n", sys.stdout.fileno()
        while data:
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:  # StandardIO made the pipe non-blocking; wait until it drains
                select.select([], [fd], [])

    def connectionLost(self, reason):
        self.closed.callback(None)


@defer.inlineCallbacks
def subscribe(control, proc, queue, origin, queue_type=None):
    sub = yield SubscriberFactory(process=proc).build(
        subscriber_type=events.InfoLoggingEventSubscriber,
        origin=origin,
        queue_name=queue,
        durable=True,
        auto_delete=False,
        queue_type=queue_type,
        handler=lambda data: control.write("EVENT " + data["content"].name),
    )
    control.write("SUBSCRIBED " + sub.queue)


@defer.inlineCallbacks
def publish(control, proc, count, origin, rate=None):
    pub = events.InfoLoggingEventPublisher(process=proc, origin=origin, persistent=True)
    yield proc.register_life_cycle_object(pub)

    def confirmed(_, name):
        control.write("CONFIRMED " + name)

    def refused(failure, name):
        failure.trap(MessageRefused)  # a queue it routes to is down or full (basic.nack)
        control.write("REFUSED " + name)

    window = []
    started = reactor.seconds()
    for i in range(int(count)):
        sent = pub.create_and_publish_event(name=str(i))
        window.append(sent.addCallbacks(confirmed, refused, (str(i),), None, (str(i),)))
        if len(window) >= WINDOW:
            yield window.pop(0)
        ahead = rate and started + (i + 1) / float(rate) - reactor.seconds()
        if ahead and ahead > 0:
            yield task.deferLater(reactor, ahead, lambda: None)
    yield defer.gatherResults(window)
    control.write("DONE")


@defer.inlineCallbacks
def persist(control, proc, queue, store):
    persister = EventPersister(
        spawnargs={"queue": queue, "store": store, "event_id": events.LOGGING_INFO_EVENT_ID, "batch_size": 50}
    )
    yield persister.spawn()
    control.write("SUBSCRIBED " + persister.queue)


ROLES = {"subscribe": subscribe, "publish": publish, "persist": persist}


@defer.inlineCallbacks
def main(control, role, url, sysname, *args):
    container = create_new_container()
    yield container.initialize(BrokerAddress.from_url(url), {"sysname": sysname})
    yield container.activate()
    watch = task.LoopingCall(_report_node, control, container.exchange_manager.connection, [None])
    watch.start(0.05)
    proc = Process(spawnargs={"proc-name": "event-peer-" + role})
    yield proc.spawn()
    yield ROLES[role](control, proc, *args)
    yield control.closed
    watch.stop()
    yield stop_container(container)


def _report_node(control, connection, last):
    """`NODE host:port` whenever the connection is on another node than last time."""
    node = getattr(connection, "node", None) if connection.connected else None
    if node is not None and node != last[0]:
        last[0] = node
        control.write("NODE " + node)


# -- the test's side


class PeerProcess(ProcessProtocol):
    """A running event peer as the test sees it: what it reported, in order."""

    def __init__(self):
        self.names = []  # EVENT lines
        self.distinct = set()
        self.confirmed = set()  # CONFIRMED lines
        self.refused = set()  # REFUSED lines
        self.queue = None
        self.nodes = []  # (seconds on the reactor, node) of each NODE line
        self.events_at = []  # reactor seconds of each EVENT line
        self.ready = defer.Deferred()  # SUBSCRIBED (fires with the queue) or the first CONFIRMED
        self.done = defer.Deferred()
        self.ended = defer.Deferred()
        self._buffer = b""
        self._stderr = []

    def outReceived(self, data):
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            kind, _, rest = line.decode("utf-8").partition(" ")
            if kind == "EVENT":
                self.names.append(rest)
                self.distinct.add(rest)
                self.events_at.append(reactor.seconds())
            elif kind == "NODE":
                self.nodes.append((reactor.seconds(), rest))
            elif kind == "CONFIRMED":
                self.confirmed.add(rest)
                if not self.ready.called:
                    self.ready.callback(None)
            elif kind == "REFUSED":
                self.refused.add(rest)
            elif kind == "SUBSCRIBED":
                self.queue = rest
                self.ready.callback(rest)
            elif kind == "DONE":
                self.done.callback(None)
            elif kind == "FAILED" and not self.ready.called:
                self.ready.errback(AssertionError("the event peer failed: %s\n%s" % (rest, self.log())))

    def errReceived(self, data):
        self._stderr.append(data)

    def log(self):
        return b"".join(self._stderr).decode("utf-8", "replace")[-4000:]

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(AssertionError("the event peer exited early:\n" + self.log()))
        self.ended.callback(None)

    def kill(self):
        """SIGKILL: no goodbye to the broker, nothing acked or confirmed after this."""
        if not self.ended.called:
            self.transport.signalProcess("KILL")
        return self.ended

    @defer.inlineCallbacks
    def stop(self):
        if self.ended.called:
            return
        self.transport.closeStdin()
        timer = reactor.callLater(20, self.kill)
        yield self.ended
        if timer.active():
            timer.cancel()


@defer.inlineCallbacks
def spawn(testcase, role, url, sysname, *args):
    """Start `python -m test.event_peer role url sysname args...`; fires with its PeerProcess once ready."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    peer = PeerProcess()
    paths = [repo] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    command = [sys.executable, "-m", "test.event_peer", role, url, sysname] + [str(a) for a in args]
    reactor.spawnProcess(peer, sys.executable, command, env=env, path=repo)
    testcase.addCleanup(peer.stop)
    yield peer.ready
    return peer


def run():
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    control = _Control()
    stdio.StandardIO(control)

    def done(result):
        if isinstance(result, defer.Failure):
            control.write("FAILED " + result.getErrorMessage())
        reactor.stop()

    main(control, *sys.argv[1:]).addBoth(done)
    reactor.run()


if __name__ == "__main__":
    run()
