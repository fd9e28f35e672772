"""What an AMQPConnection declared and bound, kept to declare it again after a reconnect."""

from twisted.internet import defer
from twisted.logger import Logger

from ion.core.messaging.broker.amqp_channel import invoke
from ion.core.messaging.broker.interface import ChannelError, ResourceLocked

log = Logger()


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

    @defer.inlineCallbacks
    def replay(self, ops_channel, description):
        """
        Declare again on a new connection, on the channel `ops_channel()`
        gives: exchanges, exchange bindings, queues, queue bindings, as
        recorded.  What the broker refuses for good is logged and forgotten;
        ResourceLocked (the broker has not yet noticed the old connection is
        gone) fails the replay, to be tried again on the next connection.
        """

        @defer.inlineCallbacks
        def redo(what, name, **kwargs):
            channel = yield ops_channel()
            try:
                return (yield invoke(channel, name, **kwargs))
            except ChannelError as e:
                if isinstance(e, ResourceLocked):
                    raise
                log.error("{conn}: cannot declare {what} again: {e}; forgetting it", conn=description, what=what, e=e)
                return None

        for name, flags in list(self.exchanges.items()):
            if (yield redo("exchange %r" % name, "exchange_declare", exchange=name, **flags)) is None:
                self.remove_exchange(name)
        for destination, source, key in list(self.exchange_bindings):
            what = "binding of exchange %r to %r with %r" % (destination, source, key)
            if (yield redo(what, "exchange_bind", destination=destination, source=source, routing_key=key)) is None:
                self.exchange_bindings.pop((destination, source, key), None)
        for name, (flags, broker_named) in list(self.queues.items()):
            reply = yield redo("queue %r" % name, "queue_declare", queue="" if broker_named else name, **flags)
            if reply is None:
                self.remove_queue(name)
            elif reply.queue != name:
                self.rename(name, reply.queue)  # consumers follow when they start again
        for queue, exchange, key in list(self.bindings):
            what = "binding of %r to %r with %r" % (queue, exchange, key)
            if (yield redo(what, "queue_bind", queue=queue, exchange=exchange, routing_key=key)) is None:
                self.bindings.pop((queue, exchange, key), None)
