"""
Failover on a three-node RabbitMQ cluster (issue 15): a durable quorum-queue
subscription loses no confirmed persistent event while the node its
subscriber (or its publisher) is connected to is stopped and started again.

A classic queue lives on one node: when that node stops, RabbitMQ cancels
its consumers on the other nodes (basic.cancel), and the subscriber
subscribes again, on the same connection, once the node is back.

The cluster is private (test/rabbit_cluster.py), started per test and always
removed.  Publisher and subscriber are OS processes of their own
(test/event_peer.py) using the real API (EventPublisher, EventSubscriber
with queue_type='quorum') with a broker URL listing the three nodes: the
subscriber's starts with node 0, the publisher's with node 1, so each test
knows whose node it stops.  The publisher is paced so that publishing spans
the failover.  The tests print FIGURES lines for the closing note.
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ion.core.messaging.broker import connect
from ion.core.messaging.broker.address import BrokerAddress
from test import event_peer, rabbit_cluster
from test.brokers import wait_for
from test.test_reconnect import figures, unique

EVENTS = 10000
RATE = 800  # events a second: publishing lasts about 12 s, the stop comes after about 3
STOP_AFTER = 2500  # confirmed events before the node is stopped
CONSUME_AGAIN_LIMIT = 10.0  # seconds from the stop until events flow again through another node


class ClusterFailoverTest(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        started = reactor.seconds()
        self.cluster = yield rabbit_cluster.start_for(self)
        self.cluster_start_s = reactor.seconds() - started

    @defer.inlineCallbacks
    def failover(self, stopped_side):
        """10,000 confirmed persistent events; the node of `stopped_side` ('subscriber' or 'publisher') stops."""
        began = reactor.seconds()
        cluster = self.cluster
        sysname, origin, queue = unique("sys"), unique("failover"), unique("quorum")
        sub = yield event_peer.spawn(self, "subscribe", cluster.url(0, 1, 2), sysname, queue, origin, "quorum")
        pub = yield event_peer.spawn(self, "publish", cluster.url(1, 2, 0), sysname, EVENTS, origin, RATE)
        peer, index = (sub, 0) if stopped_side == "subscriber" else (pub, 1)
        node = "127.0.0.1:%d" % cluster.nodes[index].port
        self.assertEqual(peer.nodes[-1][1], node)
        types = yield cluster.ctl(cluster.nodes[2], "list_queues", "-q", "--no-table-headers", "name", "type")
        self.assertIn((sub.queue, "quorum"), [tuple(line.split()) for line in types.splitlines()])

        yield wait_for(lambda: len(pub.confirmed) >= STOP_AFTER and sub.names, timeout=60)
        stopped_at = reactor.seconds()
        yield cluster.stop_app(index)
        stop_s = reactor.seconds() - stopped_at
        yield wait_for(lambda: peer.nodes[-1][1] != node, timeout=30)
        moved_at, moved_to = peer.nodes[-1]
        # Events flowing again on the other node: the subscriber's first event, the publisher's next confirm.
        yield wait_for(lambda: any(t > moved_at for t in sub.events_at), timeout=30)
        consuming_again = min(t for t in sub.events_at if t > moved_at) - stopped_at
        yield cluster.start_app(index)
        back_s = reactor.seconds() - stopped_at

        yield wait_for(lambda: pub.done.called, timeout=120)
        yield wait_for(lambda: pub.confirmed <= sub.distinct, timeout=60)
        self.assertEqual(len(pub.confirmed), EVENTS)
        lost = len(pub.confirmed - sub.distinct)
        duplicates = len(sub.names) - len(sub.distinct)
        figures(
            "cluster failover, %s's node stopped" % stopped_side,
            events_confirmed=len(pub.confirmed),
            received=len(sub.names),
            lost=lost,
            duplicates=duplicates,
            moved_to=moved_to,
            stop_app_s="%.1f" % stop_s,
            consuming_again_s="%.1f" % consuming_again,
            node_back_s="%.1f" % back_s,
            cluster_start_s="%.1f" % self.cluster_start_s,
            test_s="%.1f" % (reactor.seconds() - began),
        )
        self.assertEqual(lost, 0)
        self.assertLess(consuming_again, CONSUME_AGAIN_LIMIT)

    def test_subscribers_node_stopped(self):
        return self.failover("subscriber")

    def test_publishers_node_stopped(self):
        return self.failover("publisher")

    @defer.inlineCallbacks
    def test_classic_queue_node_stopped_cancels_and_subscribes_again(self):
        cluster = self.cluster
        began = reactor.seconds()
        sysname, origin, queue = unique("sys"), unique("cancel"), unique("classic")
        home = yield connect(BrokerAddress.from_url(cluster.url(0)))
        yield home.queue_declare("%s.%s" % (sysname, queue), durable=True, auto_delete=False,
                                 arguments={"x-queue-type": "classic"})  # lives on node 0
        yield home.close()
        sub = yield event_peer.spawn(self, "subscribe", cluster.url(1, 2), sysname, queue, origin)
        pub = yield event_peer.spawn(self, "publish", cluster.url(2, 1), sysname, 100000, origin, 200)
        yield wait_for(lambda: len(sub.names) >= 200, timeout=60)
        subscriber_nodes = list(sub.nodes)

        yield cluster.stop_app(0)
        stopped_at = reactor.seconds()
        yield wait_for(lambda: b"cancelled consumer" in b"".join(sub._stderr), timeout=30)
        # Three tries refused (404: the queue's home node is down), the next in 2 s.
        yield wait_for(lambda: b"next try in 2.0 s" in b"".join(sub._stderr), timeout=30)
        received_while_down = len([t for t in sub.events_at if t > stopped_at])
        back_at = reactor.seconds()  # start_app issued: the node takes connections about 2 s later
        yield cluster.start_app(0)
        yield wait_for(lambda: any(t > back_at for t in sub.events_at), timeout=30)
        consuming_again = min(t for t in sub.events_at if t > back_at) - back_at
        self.assertEqual(sub.nodes, subscriber_nodes, "the subscriber's connection stayed up")
        figures(
            "cluster, classic queue's node stopped (basic.cancel)",
            node_down_s="%.1f" % (back_at - stopped_at),
            consuming_again_after_start_app_s="%.1f" % consuming_again,
            received=len(sub.names),
            received_while_down=received_while_down,
            refused_while_down=len(pub.refused),  # basic.nack: the queue was down (a nack is no proof of loss)
            test_s="%.1f" % (reactor.seconds() - began),
        )
        self.assertLess(consuming_again, CONSUME_AGAIN_LIMIT)
