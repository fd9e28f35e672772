"""What an AMQPConnection declared and bound, kept to declare it again after a reconnect."""


class Topology:
    """
    What a connection declared and bound, so that a new connection can declare
    it again: the broker drops exclusive and auto-delete queues with the old
    connection, and everything that is not durable when it restarts.
    Passive declarations are not recorded (they own nothing).
    """

    def __init__(self):
        self.exchanges = {}  # name -> exchange_declare arguments
        self.queues = {}  # name -> (queue_declare arguments, broker-named?)
        self.bindings = {}  # (queue, exchange, routing key) -> None: an ordered set
        self.exchange_bindings = {}  # (destination, source, routing key) -> None: an ordered set
        self._renamed = {}  # earlier names of broker-named queues -> current name

    def current(self, queue):
        """A broker-named queue's name now, given any name it had."""
        return self._renamed.get(queue, queue)

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
