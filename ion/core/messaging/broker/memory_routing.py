"""
The embedded broker's exchanges: how each exchange type picks the queues a
routing key reaches, as RabbitMQ does.

Each exchange keeps its bindings as (destination, routing_key) pairs plus an
index suited to its type, so routing a message costs a lookup rather than a
scan of every binding.  A destination is a queue or, for an
exchange-to-exchange binding, another exchange; `queues_reached` follows
those to the set of queues a message lands in.  The default exchange has no
bindings of its own: every queue is reachable through it by name.
"""

from ion.core.messaging.broker.interface import EXCHANGE_TYPES
from ion.core.messaging.broker.topic import TopicTrie

__all__ = ["EXCHANGE_CLASSES", "DefaultExchange", "queues_reached"]


class _Exchange:
    """An exchange's bindings, and how a routing key selects queues from them."""

    def __init__(self, name, durable, auto_delete):
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.bindings = set()  # of (destination, routing_key): where this exchange routes to
        self.incoming = set()  # of (source exchange, routing_key): exchanges routing to this one
        self.exchange_destinations = 0  # how many of `bindings` lead to an exchange

    def bind(self, destination, routing_key):
        if (destination, routing_key) not in self.bindings:
            self.bindings.add((destination, routing_key))
            self._indexed(destination, routing_key)
            self.exchange_destinations += isinstance(destination, _Exchange)

    def unbind(self, destination, routing_key):
        if (destination, routing_key) in self.bindings:
            self.bindings.discard((destination, routing_key))
            self._unindexed(destination, routing_key)
            self.exchange_destinations -= isinstance(destination, _Exchange)


class _DirectExchange(_Exchange):
    type = "direct"

    def __init__(self, name, durable, auto_delete):
        super().__init__(name, durable, auto_delete)
        self._by_key = {}

    def _indexed(self, queue, routing_key):
        self._by_key.setdefault(routing_key, set()).add(queue)

    def _unindexed(self, queue, routing_key):
        queues = self._by_key.get(routing_key, set())
        queues.discard(queue)
        if not queues:
            self._by_key.pop(routing_key, None)

    def route(self, routing_key):
        return self._by_key.get(routing_key, ())


class _FanoutExchange(_Exchange):
    type = "fanout"

    def __init__(self, name, durable, auto_delete):
        super().__init__(name, durable, auto_delete)
        self._queues = frozenset()

    def _indexed(self, queue, routing_key):
        self._queues = frozenset(q for q, _ in self.bindings)

    _unindexed = _indexed

    def route(self, routing_key):
        return self._queues


class _TopicExchange(_Exchange):
    type = "topic"

    # Distinct routing keys remembered before the route cache starts over.
    _CACHE_SIZE = 10000

    def __init__(self, name, durable, auto_delete):
        super().__init__(name, durable, auto_delete)
        self._trie = TopicTrie()
        self._cache = {}

    def _indexed(self, queue, routing_key):
        self._trie.add(routing_key, queue)
        self._cache.clear()

    def _unindexed(self, queue, routing_key):
        self._trie.remove(routing_key, queue)
        self._cache.clear()

    def route(self, routing_key):
        queues = self._cache.get(routing_key)
        if queues is None:
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.clear()
            queues = self._cache[routing_key] = tuple(self._trie.match(routing_key))
        return queues


class DefaultExchange:
    """The nameless direct exchange every queue is implicitly bound to by name."""

    name = ""
    type = "direct"
    exchange_destinations = 0

    def __init__(self, queues):
        self._queues = queues

    def route(self, routing_key):
        queue = self._queues.get(routing_key)
        return () if queue is None else (queue,)


def queues_reached(exchange, routing_key):
    """
    The queues a message published to `exchange` lands in, following
    exchange-to-exchange bindings; each queue once however many paths reach
    it, and a cycle of exchanges is walked once, as RabbitMQ does.
    """
    destinations = exchange.route(routing_key)
    if not exchange.exchange_destinations:
        return destinations  # the common case: only queues
    queues, seen, todo = {}, {exchange}, [destinations]
    while todo:
        for destination in todo.pop():
            if not isinstance(destination, _Exchange):
                queues[destination] = None
            elif destination not in seen:
                seen.add(destination)
                todo.append(destination.route(routing_key))
    return tuple(queues)


# Exchange type -> class; each is built as cls(name, durable, auto_delete).
EXCHANGE_CLASSES = {cls.type: cls for cls in (_DirectExchange, _FanoutExchange, _TopicExchange)}
assert set(EXCHANGE_CLASSES) == set(EXCHANGE_TYPES)
