"""
A private three-node RabbitMQ cluster for the cluster tests (test_cluster).

Built from test/rabbit_node.py's private nodes, beside the shared broker
rabbit@localhost, which it never touches: each node has its own name
(ionclu<port>-N@localhost), AMQP and distribution ports, data directory and
copy of the machine's Erlang cookie (the nodes and rabbitmqctl share it).
The nodes start in parallel; the second and third then join the first
(stop_app, join_cluster, start_app).  `start_for` registers the cleanup
that stops every node and removes its directory before anything is
started, so a failed start leaves nothing behind either.
"""

from twisted.internet import defer
from twisted.trial import unittest

from test import rabbit_node

SIZE = 3


@defer.inlineCallbacks
def start_for(testcase, size=SIZE):
    """A running cluster for `testcase` (skipped where none can start), stopped by a cleanup registered now."""
    why = rabbit_node.available()
    if why:
        raise unittest.SkipTest(why)
    cluster = RabbitCluster(size)
    testcase.addCleanup(cluster.stop)
    yield cluster.start()
    return cluster


class RabbitCluster:
    """`nodes` are RabbitNodes; node 0 is the one the others join."""

    def __init__(self, size=SIZE):
        first = rabbit_node.RabbitNode("ionclu%d-1@localhost")
        self.nodes = [first] + [rabbit_node.RabbitNode("ionclu%d-%d@localhost" % (first.port, i + 1))
                                for i in range(1, size)]

    def url(self, *order, query=""):
        """An amqp:// URL listing the nodes with the given indexes (default: all, in order)."""
        nodes = [self.nodes[i] for i in order] if order else self.nodes
        return "amqp://guest:guest@%s/%%2F%s" % (",".join("127.0.0.1:%d" % n.port for n in nodes), query)

    @defer.inlineCallbacks
    def start(self):
        yield defer.gatherResults([node.start() for node in self.nodes], consumeErrors=True)
        for node in self.nodes[1:]:
            yield self.ctl(node, "stop_app")
            yield self.ctl(node, "join_cluster", self.nodes[0].name)
            yield node.start_app()
        code, text = yield self.nodes[0].rabbitmqctl("cluster_status", "--formatter", "json")
        missing = [n.name for n in self.nodes if n.name not in text]
        if code or missing:
            raise AssertionError("the cluster did not form (missing %s): %s" % (missing, text))

    @defer.inlineCallbacks
    def ctl(self, node, *args):
        """`rabbitmqctl -n NODE args...`; AssertionError with its output if it fails."""
        code, text = yield node.rabbitmqctl(*args)
        if code:
            raise AssertionError("rabbitmqctl -n %s %s failed: %s" % (node.name, " ".join(args), text))
        return text

    def stop_app(self, index):
        """Stop RabbitMQ (not the Erlang VM) on node `index`: its clients are disconnected."""
        return self.nodes[index].stop_app()

    def start_app(self, index):
        """Start RabbitMQ again on node `index`; fires once it takes connections."""
        return self.nodes[index].start_app()

    def stop(self):
        """Stop every node, however far it got, and remove their directories."""
        return defer.gatherResults([node.stop() for node in self.nodes], consumeErrors=True)
