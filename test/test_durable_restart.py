"""
Durable subscriptions across a broker restart (issue 8): no confirmed
persistent event is lost, whichever side reconnects first, and events
published while the subscriber is away (across the restart) wait for it.

The broker is a private RabbitMQ node (test/rabbit_node.py), so restarting
it disturbs nobody.  The subscriber runs in an OS process of its own
(test/event_peer.py) and each side reaches the node through a TCP
proxy, which the test uses to hold one side back while the other reconnects.
The tests print FIGURES lines for the closing note.
"""

from twisted.internet import defer, reactor, task

from ion.core.messaging.broker.address import BrokerAddress
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory
from ion.test.iontest import IonTestCase
from test import event_peer, rabbit_node
from test.brokers import wait_for
from test.proxy import TcpProxy
from test.test_reconnect import Collector, figures, unique

EVENTS = 10000
WINDOW = 200  # publishes awaiting their confirm at once
AWAY_EVENTS = 1000


class DurableRestartTest(IonTestCase):
    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        self.node = yield rabbit_node.start_for(self)
        self.node_address = BrokerAddress.from_url(self.node.url)

    def proxy(self):
        proxy = TcpProxy(self.node_address)
        self.addCleanup(proxy.stop)
        return proxy

    @defer.inlineCallbacks
    def start_container(self, url, sysname):
        self.broker_url = url
        yield self._start_container(sysname=sysname)
        self.addCleanup(self._stop_container)  # before the node goes
        proc = Process(spawnargs={"proc-name": "durable-restart-tester"})
        yield proc.spawn()
        return proc

    @defer.inlineCallbacks
    def persistent_publisher(self, proc, origin):
        pub = events.InfoLoggingEventPublisher(process=proc, origin=origin, persistent=True)
        yield proc.register_life_cycle_object(pub)
        return pub

    @defer.inlineCallbacks
    def restart_while_publishing(self, first):
        """10,000 confirmed persistent events; the broker restarts; `first` ('publisher' or 'subscriber') is back first."""
        pub_proxy, sub_proxy = self.proxy(), self.proxy()
        sysname, origin, queue = unique("sys"), unique("restart"), unique("durable")
        proc = yield self.start_container(pub_proxy.url(), sysname)
        pub = yield self.persistent_publisher(proc, origin)
        child = yield event_peer.spawn(self, "subscribe", sub_proxy.url(), sysname, queue, origin)
        held_back = sub_proxy if first == "publisher" else pub_proxy
        published = defer.Deferred()
        times = {}

        @defer.inlineCallbacks
        def restart():
            held_back.refusing = True
            times["stopping"] = reactor.seconds()
            yield self.node.stop_app()
            yield self.node.start_app()
            times["back"] = reactor.seconds()
            if first == "publisher":
                yield published  # every event confirmed before the subscriber may reconnect at all
                self.assertEqual(len(sub_proxy.clients()), 0, "the subscriber was held back")
            else:
                deadline = reactor.seconds() + 60
                while not (yield self.node.consumers(child.queue)):  # the subscriber consumes again
                    self.assertLess(reactor.seconds(), deadline, "the subscriber did not come back")
                    yield task.deferLater(reactor, 0.2, lambda: None)
            times["released"] = reactor.seconds()
            held_back.refusing = False

        restarting = None
        window = []
        for i in range(EVENTS):
            window.append(pub.create_and_publish_event(name=str(i)))
            if len(window) >= WINDOW:
                yield window.pop(0)
            if i == EVENTS // 4:
                yield wait_for(lambda: child.names, timeout=30)  # the subscription is busy when the broker goes
                restarting = restart()
        yield defer.gatherResults(window, consumeErrors=True)
        times["confirmed"] = reactor.seconds()
        published.callback(None)
        yield restarting

        yield wait_for(lambda: len(child.distinct) == EVENTS, timeout=60)
        self.assertEqual(child.distinct, {str(i) for i in range(EVENTS)})
        figures(
            "broker restart, %s reconnects first" % first,
            events_confirmed=EVENTS,
            received=len(child.names),
            distinct=len(child.distinct),
            lost=EVENTS - len(child.distinct),
            duplicates=len(child.names) - len(child.distinct),
            restart_s="%.1f" % (times["back"] - times["stopping"]),
            other_side_held_back_s="%.1f" % (times["released"] - times["back"]),
        )

    def test_publisher_reconnects_first(self):
        return self.restart_while_publishing("publisher")

    def test_subscriber_reconnects_first(self):
        return self.restart_while_publishing("subscriber")

    def test_subscriber_away_across_restart(self):
        """The limit case: bound, gone, broker restarted, events published; all there when it is back."""
        return self.away_across_restart("classic")

    def test_quorum_subscriber_away_across_restart(self):
        """The same on a quorum queue (issue 15): its events and its binding survive the restart too."""
        return self.away_across_restart("quorum")

    @defer.inlineCallbacks
    def away_across_restart(self, queue_type):
        sysname, origin, queue = unique("sys"), unique("away"), unique("durable")
        flags = dict(subscriber_type=events.InfoLoggingEventSubscriber, origin=origin, queue_name=queue,
                     durable=True, auto_delete=False, queue_type=queue_type)
        proc = yield self.start_container(self.node.url, sysname)
        yield SubscriberFactory(process=proc).build(handler=lambda data: None, **flags)
        yield self._stop_container()

        yield self.node.stop_app()
        yield self.node.start_app()

        proc = yield self.start_container(self.node.url, sysname)
        pub = yield self.persistent_publisher(proc, origin)
        yield defer.gatherResults([pub.create_and_publish_event(name=str(i)) for i in range(AWAY_EVENTS)])
        collector = Collector()
        yield SubscriberFactory(process=proc).build(handler=collector, **flags)
        yield wait_for(lambda: len(collector.distinct) == AWAY_EVENTS, timeout=30)
        self.assertEqual(collector.distinct, {str(i) for i in range(AWAY_EVENTS)})
        figures("durable %s subscriber away across a restart" % queue_type, published=AWAY_EVENTS,
                delivered=len(collector.arrivals))
