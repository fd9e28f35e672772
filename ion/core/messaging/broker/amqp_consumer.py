"""
The consuming side of an AMQPConnection: a Consumer on its own channel, the
Deliveries it hands to its callback (returned messages are Deliveries too),
and the Consumers registry that starts them, resumes them after a reconnect
and subscribes them again when the broker cancels them (see resubscribe.py).
"""

import struct
from operator import itemgetter

from twisted.internet import defer
from twisted.logger import Logger
from txamqp.client import TwistedEvent
from zope.interface import implementer

from ion.core.messaging.broker.amqp_channel import close_channel, invoke, open_channel
from ion.core.messaging.broker.amqp_codec import FRAME_END, FRAME_METHOD
from ion.core.messaging.broker.amqp_errors import dropped_under
from ion.core.messaging.broker.amqp_protocol import BASIC
from ion.core.messaging.broker.interface import (
    BrokerError,
    ChannelError,
    IConsumer,
    IDelivery,
    NotFound,
    ResourceLocked,
)
from ion.core.messaging.broker.resubscribe import Gone, Resubscriptions

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
    the broker named it, under a new tag unless the caller chose one.  So it
    does after the broker cancelled it (`_channel` is None meanwhile).

    A stream consumer (one with an x-stream-offset argument) starts again
    where it left off, not at its first offset again: from the lowest offset
    it was handed and has not settled, or else the one after the last it was
    handed (the broker keeps no position for it).
    """

    def __init__(self, registry, queue, callback, prefetch_count, no_ack, exclusive, requested_tag, arguments=None):
        self.queue = queue
        self.tag = None
        self._registry = registry
        self._channel = None
        self._callback = callback
        self._prefetch_count = prefetch_count
        self._no_ack = no_ack
        self._exclusive = exclusive
        self._requested_tag = requested_tag
        self._arguments = dict(arguments or {})
        self._stream = "x-stream-offset" in self._arguments
        self._stream_unsettled = {}  # (channel, delivery tag) -> stream offset
        self._stream_next = None  # the offset after the last one delivered
        self._unsettled = {}  # delivery tag -> None: handed out on the current channel, not settled (lowest first)
        self._batch = []  # (delivery tag, ack, requeue) settled during a read: written at its end (_settle_frames)
        self._stopping = False
        self._stopped = TwistedEvent()
        self._done = False
        self._cancelled_by_broker = False

    @property
    def active(self):
        """False once cancelled, and while subscribing again after the broker cancelled it: no deliveries come."""
        return not self._stopping and not self._cancelled_by_broker

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
                    yield invoke(channel, "basic_cancel", consumer_tag=self.tag)
                yield close_channel(channel)
        except BrokerError as e:  # the broker requeues anyway once the channel or connection is gone
            log.debug("cancelling consumer {tag}: {e}", tag=self.tag, e=e)
        finally:
            self._stop()

    def _stop(self):
        """No more deliveries, not even after a reconnect; cancel() waiters fire."""
        self._stopping = True
        self._registry.forget(self)
        if not self._done:
            self._done = True
            self._stopped.fire()

    def _deliver(self, channel, msg):
        if self._stopping and not self._no_ack:
            return  # unacked: requeued when the channel closes
        content = msg.content
        if not self._no_ack:
            self._unsettled[msg.delivery_tag] = None
        if self._stream:
            self._stream_delivered(channel, msg.delivery_tag, content.properties)
        delivery = Delivery(content.body, content.properties, msg.exchange, msg.routing_key, msg.redelivered,
                            msg.delivery_tag, msg.consumer_tag, self, channel)
        try:
            self._callback(delivery)
        except Exception:
            log.failure("consumer {tag} on {queue}: callback failed", tag=self.tag, queue=self.queue)

    def _stream_delivered(self, channel, delivery_tag, properties):
        offset = (properties.get("headers") or {}).get("x-stream-offset")
        if isinstance(offset, int):
            self._stream_unsettled[channel, delivery_tag] = offset
            self._stream_next = max(self._stream_next or 0, offset + 1)

    def arguments_now(self):
        """The basic.consume arguments for (re)starting: a stream consumer's position follows its deliveries."""
        if not self._stream or self._stream_next is None:
            return self._arguments
        position = min(self._stream_unsettled.values(), default=self._stream_next)
        return dict(self._arguments, **{"x-stream-offset": position})

    def _settle(self, channel, delivery_tag, ack, requeue):
        # Handled, even if the ack cannot reach the broker any more: a stream resumes after it.
        if self._stream:
            self._stream_unsettled.pop((channel, delivery_tag), None)
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
        self._unsettled.pop(delivery_tag, None)
        self._batch.append((delivery_tag, ack, requeue))
        if len(self._batch) == 1:  # the first since the last frames were written: they are asked for
            channel.client.write_settles(self._settle_frames)

    def on_channel(self, channel):
        """Consuming (again) on `channel`: the tags of an earlier channel mean nothing on it."""
        self._channel = channel
        self._unsettled, self._batch = {}, []

    def _settle_frames(self):
        """
        The frames of the settles batched since the last call.  Acks only, and every delivery tag below
        the highest of them settled: one basic.ack with `multiple` for them all.  It acks exactly those
        (the broker acks what is outstanding up to the tag, and nothing else up to it is), each after its
        handler finished, as single acks would.  Otherwise one frame per settle, in the order settled.
        """
        batch, self._batch = self._batch, []
        channel = self._channel
        if not batch or channel is None or channel.closed:
            return b""  # the channel is gone: the broker redelivers what it had not been told
        if len(batch) > 1 and all(map(itemgetter(1), batch)):
            highest = max(batch)[0]
            lowest_open = next(iter(self._unsettled), None)
            if lowest_open is None or lowest_open > highest:
                return settle_frame(channel.id, _ACK, highest, True)
        return b"".join(settle_frame(channel.id, _ACK if ack else _REJECT, tag, False if ack else requeue)
                        for tag, ack, requeue in batch)


_ACK, _REJECT = BASIC["ack"], BASIC["reject"]


# basic.ack and basic.reject are (delivery tag: longlong, one bit): every settled delivery writes one, so
# it is packed in one go rather than through the generic method-frame encoder (test_amqp_broker compares them).
_SETTLE_FRAME = struct.Struct("!BHIHHQBB")  # frame type, channel, payload size, class, method, tag, bit, end


def settle_frame(channel_id, method, delivery_tag, bit):
    """The whole method frame of a basic.ack (bit: multiple) or basic.reject (bit: requeue)."""
    return _SETTLE_FRAME.pack(FRAME_METHOD, channel_id, 13, method.klass.id, method.id, delivery_tag,
                              1 if bit else 0, FRAME_END)


class Consumers:
    """
    Every running Consumer of an AMQPConnection, and which channel of the
    current TCP connection each is on; each is started again (`resume`) on a
    new connection.
    """

    def __init__(self, state, address, topology, redeclare, clock):
        self.description = address.description
        self._state = state
        self._address = address
        self._topology = topology
        self._redeclare = redeclare  # queue -> Deferred firing with its name, declared again as recorded
        self._resubscriptions = Resubscriptions(clock)
        self._running = []  # every running Consumer, resumed after a reconnect
        self._channels = {}  # channel id -> Consumer, on the current connection

    @defer.inlineCallbacks
    def consume(self, queue, callback, prefetch_count, no_ack, exclusive, consumer_tag, arguments=None):
        """A new running Consumer; waits for READY, and starts again if the connection dropped under it."""
        consumer = Consumer(self, self._topology.current(queue), callback, prefetch_count, no_ack, exclusive,
                            consumer_tag, arguments)
        while True:
            yield self._state.when_ready(self._address.reconnect_timeout)
            try:
                yield self._start(consumer)
                break
            except Exception as e:
                if self._state.closing or not dropped_under(e):
                    raise
        if not consumer._stopping:
            self._running.append(consumer)
        return consumer

    @defer.inlineCallbacks
    def _start(self, consumer):
        """basic.consume on a new channel of the current connection."""
        channel = yield open_channel(self._state)
        consumer.queue = self._topology.current(consumer.queue)
        consumer.on_channel(channel)
        self._channels[channel.id] = consumer
        try:
            yield invoke(channel, "basic_qos", prefetch_size=0, prefetch_count=consumer._prefetch_count, global_=False)
            reply = yield invoke(channel, "basic_consume", queue=consumer.queue,
                                 consumer_tag=consumer._requested_tag or "", no_ack=consumer._no_ack,
                                 exclusive=consumer._exclusive, arguments=consumer.arguments_now())
        except BaseException:
            if self._channels.get(channel.id) is consumer:
                del self._channels[channel.id]
            if not channel.closed:
                yield close_channel(channel).addErrback(lambda _: None)
            raise
        consumer.tag = reply.consumer_tag
        consumer._cancelled_by_broker = False
        if consumer._stopping:  # cancelled meanwhile
            yield consumer._cancel()

    @defer.inlineCallbacks
    def resume(self):
        """Start every running consumer on the new connection; fires with how many were."""
        resumed = 0
        for consumer in list(self._running):
            if consumer._stopping:
                continue
            try:
                yield self._start(consumer)
                resumed += 1
            except ChannelError as e:
                if isinstance(e, ResourceLocked):
                    raise  # an exclusive consumer of the old connection, not yet noticed gone
                log.error("{conn}: cannot resume consumer {tag} on {queue}: {e}; it is stopped", conn=self.description,
                          tag=consumer.tag, queue=consumer.queue, e=e)
                consumer._stop()
        return resumed

    def forget(self, consumer):
        """`consumer` stopped: not resumed again, and its auto-delete queue not declared again."""
        if consumer in self._running:
            self._running.remove(consumer)
        channel = consumer._channel
        if channel is not None and self._channels.get(channel.id) is consumer:
            del self._channels[channel.id]
        # The broker deletes an auto-delete queue with its last consumer: do not declare it again.
        flags, _ = self._topology.queues.get(consumer.queue, ({}, False))
        if flags.get("auto_delete") and not any(c.queue == consumer.queue for c in self._running):
            self._topology.remove_queue(consumer.queue)

    def cancel_all(self):
        return defer.DeferredList([c.cancel() for c in list(self._running)])

    def stop_all(self):
        self._resubscriptions.stop()
        for consumer in list(self._running):
            consumer._stop()

    def lost(self):
        """The TCP connection is gone, and with it every consumer's channel."""
        self._channels = {}

    # -- from the broker

    def deliver(self, channel, msg):
        consumer = self._channels.get(channel.id)
        if consumer is None or consumer._channel is not channel:
            log.debug("delivery for a cancelled consumer on channel {id} dropped", id=channel.id)
            return
        consumer._deliver(channel, msg)

    def cancelled_by_broker(self, channel):
        """
        The broker stopped `channel`'s consumer: its queue was deleted, its
        node went down or its leader moved.  Unless this connection is
        deleting the queue itself, the consumer subscribes again on a new
        channel (the old one closes, so its unacked messages go back).
        """
        consumer = self._channels.pop(channel.id, None)
        if consumer is None or consumer._stopping or consumer._channel is not channel:
            return
        consumer._channel = None
        consumer._cancelled_by_broker = True
        close_channel(channel).addErrback(lambda _: None)
        queue = self._topology.current(consumer.queue)
        if queue in self._topology.deleting:
            consumer._stop()
            return
        recorded = queue in self._topology.queues
        log.warn("{conn}: the broker cancelled consumer {tag} on {queue} (queue deleted, its node down or its"
                 " leader moved); subscribing again{how}", conn=self.description, tag=consumer.tag, queue=queue,
                 how=" (declaring the queue again)" if recorded else "")
        what = "%s: consumer on %r" % (self.description, queue)

        def wanted():
            return consumer._channel is None and not consumer._stopping and not self._state.closing

        self._resubscriptions.start(lambda: self._subscribe_again(consumer, recorded), wanted, what).addCallback(
            lambda done: done or consumer._channel is not None or consumer._stop())

    @defer.inlineCallbacks
    def _subscribe_again(self, consumer, recorded):
        """One try: declare the queue again if we declared it, then consume; Gone if it is gone for good."""
        self._state.check_open()
        if not self._state.ready:  # logging in again: resume() starts it
            raise self._state.not_connected()
        queue = self._topology.current(consumer.queue)
        if recorded and queue in self._topology.queues:
            consumer.queue = yield self._redeclare(queue)
        try:
            yield self._start(consumer)
        except NotFound:
            if not recorded:
                log.warn("{conn}: queue {queue} is gone; consumer {tag} is stopped", conn=self.description,
                         queue=queue, tag=consumer.tag)
                raise Gone() from None
            raise

    def channel_closed(self, channel):
        """The broker closed `channel`: its consumer (returned, or None) stops."""
        consumer = self._channels.get(channel.id)
        if consumer is not None:
            consumer._stop()
        return consumer
