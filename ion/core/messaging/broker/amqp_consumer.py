"""
The consuming side of an AMQPConnection: a Consumer on its own channel, and
the Deliveries it hands to its callback (returned messages are Deliveries too).
"""

from twisted.internet import defer
from twisted.logger import Logger
from txamqp.client import TwistedEvent
from zope.interface import implementer

from ion.core.messaging.broker.interface import BrokerError, IConsumer, IDelivery

log = Logger()


@implementer(IDelivery)
class Delivery:
    """One message for a consumer (or a returned one, which cannot be acked)."""

    __slots__ = ("body", "properties", "exchange", "routing_key", "redelivered", "delivery_tag", "consumer_tag",
                 "_consumer", "_channel", "_settled")

    def __init__(self, body, properties, exchange, routing_key, redelivered=False, delivery_tag=None,
                 consumer_tag=None, consumer=None, channel=None):
        self.body = body
        self.properties = properties
        self.exchange = exchange
        self.routing_key = routing_key
        self.redelivered = redelivered
        self.delivery_tag = delivery_tag
        self.consumer_tag = consumer_tag
        self._consumer = consumer
        self._channel = channel  # the one it came on: a tag means nothing on another
        self._settled = False

    def ack(self):
        self._settle(True, False)

    def reject(self, requeue=False):
        self._settle(False, requeue)

    def _settle(self, ack, requeue):
        # A second ack of one tag would make the broker close the channel.
        if self._consumer is None or self._settled:
            return
        self._settled = True
        self._consumer._settle(self._channel, self.delivery_tag, ack, requeue)

    def __repr__(self):
        return "<Delivery %s/%s tag=%s %d bytes>" % (self.exchange, self.routing_key, self.delivery_tag, len(self.body))


@implementer(IConsumer)
class Consumer:
    """
    A basic.consume on its own channel.  It outlives connections: after a
    reconnect it consumes again on a new channel, from the queue's new name if
    the broker named it, under a new tag unless the caller chose one.
    """

    def __init__(self, connection, queue, callback, prefetch_count, no_ack, exclusive, requested_tag):
        self.queue = queue
        self.tag = None
        self._connection = connection
        self._channel = None
        self._callback = callback
        self._prefetch_count = prefetch_count
        self._no_ack = no_ack
        self._exclusive = exclusive
        self._requested_tag = requested_tag
        self._stopping = False
        self._stopped = TwistedEvent()
        self._done = False

    @property
    def active(self):
        """False once cancelled, by us or by the broker (its queue deleted): no more deliveries come."""
        return not self._stopping

    def cancel(self):
        if not self._stopping:
            self._stopping = True
            self._cancel()
        return self._stopped.wait().addCallback(lambda _: None)

    @defer.inlineCallbacks
    def _cancel(self):
        channel = self._channel
        try:
            if channel is not None and not channel.closed:
                if self.tag is not None:
                    yield self._connection._invoke(channel, "basic_cancel", consumer_tag=self.tag)
                yield self._connection._close_channel(channel)
        except BrokerError as e:  # the broker requeues anyway once the channel or connection is gone
            log.debug("cancelling consumer {tag}: {e}", tag=self.tag, e=e)
        finally:
            self._stop()

    def _stop(self):
        """No more deliveries, not even after a reconnect; cancel() waiters fire."""
        self._stopping = True
        self._connection._forget_consumer(self)
        if not self._done:
            self._done = True
            self._stopped.fire()

    def _deliver(self, channel, msg):
        if self._stopping and not self._no_ack:
            return  # unacked: requeued when the channel closes
        content = msg.content
        delivery = Delivery(content.body, content.properties, msg.exchange, msg.routing_key, msg.redelivered,
                            msg.delivery_tag, msg.consumer_tag, self, channel)
        try:
            self._callback(delivery)
        except Exception:
            log.failure("consumer {tag} on {queue}: callback failed", tag=self.tag, queue=self.queue)

    def _settle(self, channel, delivery_tag, ack, requeue):
        if self._no_ack:
            return
        what = "ack" if ack else "reject"
        if channel is not self._channel or channel.closed:
            log.debug("consumer {tag}: {what} of {dtag} from a lost connection ignored; the broker redelivers it",
                      tag=self.tag, what=what, dtag=delivery_tag)
            return
        if self._stopping:
            log.debug("consumer {tag} is cancelled: {what} of {dtag} ignored", tag=self.tag, what=what,
                      dtag=delivery_tag)
            return
        basic = self._connection._basic
        if ack:
            data = channel.client.method_frame(channel.id, basic["ack"], (delivery_tag, False))
        else:
            data = channel.client.method_frame(channel.id, basic["reject"], (delivery_tag, requeue))
        channel.client.write(data)
