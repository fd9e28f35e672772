"""What a broker connection declared and bound, recorded to declare it again (both broker kinds)."""


class Topology:
    """
    What a connection declared and bound, so that it can be declared again:
    on a new connection (the broker drops exclusive and auto-delete queues
    with the old connection, and everything that is not durable when it
    restarts), or when the broker cancelled a consumer because its queue
    went.  Passive declarations are not recorded (they own nothing).
    `deleting` holds the queues this connection is deleting: a consumer the
    broker cancels for that is not subscribed again.
    """

    def __init__(self):
        self.exchanges = {}  # name -> exchange_declare arguments
        self.queues = {}  # name -> (queue_declare arguments, broker-named?)
        self.bindings = {}  # (queue, exchange, routing key) -> None: an ordered set
        self.exchange_bindings = {}  # (destination, source, routing key) -> None: an ordered set
        self._renamed = {}  # earlier names of broker-named queues -> current name
        self.deleting = set()

    def current(self, queue):
        """A broker-named queue's name now, given any name it had."""
        return self._renamed.get(queue, queue)

    def add_exchange(self, name, flags):
        self.exchanges[name] = flags

    def add_queue(self, name, flags):
        # RabbitMQ reserves 'amq.' for the names it makes: such a queue is declared with '' again.
        self.queues[name] = (flags, name.startswith("amq."))

    def bind(self, queue, exchange, routing_key):
        self.bindings[self.current(queue), exchange, routing_key] = None

    def unbind(self, queue, exchange, routing_key):
        self.bindings.pop((self.current(queue), exchange, routing_key), None)

    def bind_exchange(self, destination, source, routing_key):
        self.exchange_bindings[destination, source, routing_key] = None

    def unbind_exchange(self, destination, source, routing_key):
        self.exchange_bindings.pop((destination, source, routing_key), None)

    def remove_exchange(self, name):
        self.exchanges.pop(name, None)
        self.bindings = {b: None for b in self.bindings if b[1] != name}
        self.exchange_bindings = {b: None for b in self.exchange_bindings if name not in b[:2]}

    def remove_queue(self, name):
        self.queues.pop(name, None)
        self.bindings = {b: None for b in self.bindings if b[0] != name}
        self._renamed = {old: new for old, new in self._renamed.items() if new != name}

    def rename(self, old, new):
        self.queues[new] = self.queues.pop(old)
        self.bindings = {(new if q == old else q, x, k): None for q, x, k in self.bindings}
        self._renamed = {earlier: new if now == old else now for earlier, now in self._renamed.items()}
        self._renamed[old] = new

    def route_to(self, queue):
        """
        The recorded exchanges and exchange bindings a message takes to reach
        `queue` through its bindings ([(name, flags)], [(destination,
        source, key)]), in an order they can be declared in.
        """
        wanted = [x for q, x, _ in self.bindings if q == queue]
        routes, seen = [], set(wanted)
        for destination in wanted:  # grows as sources feeding it are found
            for binding in self.exchange_bindings:
                if binding[0] == destination:
                    routes.append(binding)
                    if binding[1] not in seen:
                        seen.add(binding[1])
                        wanted.append(binding[1])
        return [(x, self.exchanges[x]) for x in wanted if x in self.exchanges], routes
