"""
The client endpoint of a broker address that names several cluster nodes.

ClientService (amqp_link) keeps the connection up: it connects, waits with
backoff after a failure and connects again after a loss.  It connects
through one endpoint; `NodeRotation` is that endpoint, and each `connect`
goes to the next node, so every failed attempt and every lost connection
moves on to another node while ClientService's own retry logic stays as it
is.  With order 'shuffle' each pass over the nodes takes a new random order
(from `random`, injectable for tests), so the clients of a restarted cluster
spread over its nodes instead of all crowding the first.
"""

import random as random_module

from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer


@implementer(IStreamClientEndpoint)
class NodeRotation:
    """
    `nodes` is [(name, endpoint)]; `order` 'in_order' or 'shuffle'.
    `current` is the name of the node of the latest attempt.
    """

    def __init__(self, nodes, order="in_order", random=None):
        if not nodes:
            raise ValueError("a broker address needs at least one node")
        self._nodes = list(nodes)
        self._order = order
        self._random = random if random is not None else random_module.Random()
        self._pass = []  # the nodes still to try in this pass, next first
        self.current = None

    def connect(self, protocolFactory):
        if not self._pass:
            self._pass = list(self._nodes)
            if self._order == "shuffle":
                self._random.shuffle(self._pass)
        self.current, endpoint = self._pass.pop(0)
        return endpoint.connect(protocolFactory)
