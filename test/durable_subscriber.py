"""
A durable event subscriber in an OS process of its own, for the broker
restart tests: `python -m test.durable_subscriber BROKER_URL SYSNAME QUEUE ORIGIN`.

It starts a container, subscribes to InfoLogging events from ORIGIN through
the named durable queue, and writes `SUBSCRIBED <queue>`, then one
`EVENT <name>` line per event handled, to stdout; its log goes to stderr.
It stops (the queue stays) when stdin closes.
"""

import sys

from twisted.internet import defer, reactor, stdio
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogBeginner, textFileLogObserver

from ion.core.cc.container import create_new_container, stop_container
from ion.core.messaging.broker.address import BrokerAddress
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory


class _Control(Protocol):
    """stdout carries what happened; stdin closing means stop."""

    def __init__(self):
        self.closed = defer.Deferred()

    def write(self, line):
        self.transport.write(line.encode("utf-8") + b"\n")

    def connectionLost(self, reason):
        self.closed.callback(None)


@defer.inlineCallbacks
def main(control, url, sysname, queue, origin):
    container = create_new_container()
    yield container.initialize(BrokerAddress.from_url(url), {"sysname": sysname})
    yield container.activate()
    proc = Process(spawnargs={"proc-name": "durable-subscriber"})
    yield proc.spawn()
    sub = yield SubscriberFactory(process=proc).build(
        subscriber_type=events.InfoLoggingEventSubscriber,
        origin=origin,
        queue_name=queue,
        durable=True,
        auto_delete=False,
        handler=lambda data: control.write("EVENT " + data["content"].name),
    )
    control.write("SUBSCRIBED " + sub.queue)
    yield control.closed
    yield stop_container(container)


def run():
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    control = _Control()
    stdio.StandardIO(control)

    def done(result):
        if isinstance(result, defer.Failure):
            control.write("FAILED " + result.getErrorMessage())
        reactor.stop()

    main(control, *sys.argv[1:5]).addBoth(done)
    reactor.run()


if __name__ == "__main__":
    run()
