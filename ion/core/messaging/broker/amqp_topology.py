"""What an AMQPConnection declared and bound, declared again after a reconnect."""

from twisted.internet import defer
from twisted.logger import Logger

from ion.core.messaging.broker import topology
from ion.core.messaging.broker.amqp_channel import invoke
from ion.core.messaging.broker.interface import ChannelError, ResourceLocked

log = Logger()


class Topology(topology.Topology):
    """The record (broker/topology.py), declared again on each new connection by `replay`."""

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
