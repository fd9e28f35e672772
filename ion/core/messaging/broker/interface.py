"""
The contract every broker meets: the embedded in-memory broker and RabbitMQ
through txamqp.

A connection is channel-less on purpose.  Callers declare, bind, publish and
consume on the connection; an implementation decides how to map that onto
AMQP channels (one for declarations and publishing, one per consumer).  Keeping
channels out of the interface is what lets an implementation re-declare its
topology and resume consumers after a reconnect without the callers noticing
(the RabbitMQ one does: a broker-named queue then gets a new name, which
IConsumer.queue follows, and a call made while disconnected waits for the
reconnect up to the address's reconnect_timeout).

Every method that talks to the broker returns a Deferred.  Failures are
instances of `BrokerError` (or a subclass), so callers never see txamqp or
embedded-broker internals.
"""

import re

from zope.interface import Attribute, Interface

from ion.core.exception import IonError


class BrokerError(IonError):
    """Any failure reported by a broker."""


class ChannelError(BrokerError):
    """
    The broker refused an operation (AMQP channel exception).

    `code` is the AMQP reply code (404, 405, 406, ...), `text` the broker's
    reply text.
    """

    code = None

    def __init__(self, text, code=None):
        if code is not None:
            self.code = code
        self.text = text
        super().__init__("%s %s" % (self.code, text))


class NotFound(ChannelError):
    """A passive declare, bind or consume named a queue/exchange that does not exist."""

    code = 404


class ResourceLocked(ChannelError):
    """An exclusive queue is owned by another connection."""

    code = 405


class PreconditionFailed(ChannelError):
    """A re-declaration whose flags differ from the existing object's."""

    code = 406


class MessageRefused(BrokerError):
    """
    The broker would not take a published message (basic.nack): a queue it
    routes to is full and set to x-overflow reject-publish(-dlx).  Queues with
    room still got it.  Only seen with publisher confirms on.
    """


class ConnectionLost(BrokerError):
    """The connection to the broker is gone (closed, or not back in time); the operation did not complete."""


EXCHANGE_TYPES = ("topic", "direct", "fanout")

# x-queue-type values, and the text forms of a stream consumer's x-stream-offset: a named position or a
# relative time, a whole number of years, months, days, hours, minutes or seconds ('10m', '1h').
QUEUE_TYPES = ("classic", "quorum", "stream")
STREAM_OFFSET_NAMES = ("first", "last", "next")
STREAM_OFFSET_INTERVAL = re.compile(r"^([0-9]+)([YMDhms])$")

# AMQP basic properties a Delivery carries (None when unset).
PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)
PROPERTY_SET = frozenset(PROPERTY_NAMES)


def unknown_properties(properties):
    """The names in a properties dict that are not AMQP basic properties, sorted; empty if there are none."""
    if PROPERTY_SET.issuperset(properties):  # the usual case, without building a set
        return []
    return sorted(properties.keys() - PROPERTY_SET)


class IDelivery(Interface):
    """One message handed to a consumer callback."""

    body = Attribute("The message body, always `bytes`.")
    properties = Attribute(
        "dict of AMQP basic properties; keys from PROPERTY_NAMES, only those set.  The queue may add headers:"
        " x-delivery-count (a quorum queue's count of earlier returns of the message) and x-stream-offset"
        " (a stream message's offset)."
    )
    exchange = Attribute("Exchange the message was published to ('' for the default exchange).")
    routing_key = Attribute("Routing key it was published with.")
    redelivered = Attribute("True when the broker delivered it before without an ack.")
    delivery_tag = Attribute("Broker-assigned tag, unique per consumer.")
    consumer_tag = Attribute("Tag of the consumer it was delivered to.")

    def ack():
        """Acknowledge. Returns None; a no-op if the consumer is already cancelled."""

    def reject(requeue=False):
        """Reject; with requeue=True the broker redelivers it (redelivered=True)."""


class IConsumer(Interface):
    """A running basic.consume."""

    queue = Attribute("Name of the queue consumed from (the broker's name for an anonymous queue).")
    tag = Attribute("Consumer tag.")
    active = Attribute("False once cancelled, and while subscribing again after the broker cancelled it.")

    def cancel():
        """
        Stop deliveries.  Messages delivered but not yet acked are returned to
        the queue and redelivered to other consumers with redelivered=True.
        Returns a Deferred that fires once the broker has confirmed.
        Cancelling twice is harmless.
        """


class IBrokerConnection(Interface):
    """One connection from a container to a broker."""

    description = Attribute("Human-readable, credential-free description, e.g. 'amqp://127.0.0.1:5672/' or 'embedded broker'.")
    connected = Attribute("True while calls go through at once; False while closed or waiting to reconnect.")
    in_flight = Attribute("Publishes handed to the broker and not yet confirmed by it; at most a bound per connection.")
    waiting = Attribute("Publishes and calls made but not yet sent (past the in-flight bound, or while disconnected).")

    def exchange_declare(exchange, type="topic", durable=False, auto_delete=True, passive=False):
        """
        Declare an exchange.  Re-declaring with other type/durable/auto_delete
        fails with PreconditionFailed; passive on a missing one with NotFound.
        An auto-delete exchange is deleted when its last binding is removed.
        """

    def exchange_delete(exchange, if_unused=False):
        """Delete an exchange (no error if it does not exist)."""

    def queue_declare(queue="", durable=False, exclusive=False, auto_delete=True, passive=False, arguments=None):
        """
        Declare a queue; queue='' asks the broker for a fresh name.
        Fires with the queue's name.  An exclusive queue belongs to this
        connection (ResourceLocked for others) and goes with it.  An
        auto-delete queue is deleted when its last consumer is cancelled.
        `arguments` is the AMQP x-arguments table (e.g. x-dead-letter-exchange;
        x-max-length, x-max-length-bytes and x-overflow bound it; x-queue-type
        is 'classic', the default, 'quorum' or 'stream', which must be named,
        durable, not exclusive and not auto-delete, else PreconditionFailed).
        """

    def queue_delete(queue, if_unused=False, if_empty=False):
        """Delete a queue; fires with the number of messages it held."""

    def queue_purge(queue):
        """Remove all ready messages; fires with their number."""

    def queue_depth(queue):
        """
        Fires with the number of ready messages in the queue (those not handed
        to a consumer), as a passive declare's message_count; NotFound if the
        queue does not exist.
        """

    def queue_bind(queue, exchange, routing_key):
        """Bind a queue to an exchange (NotFound when either is missing)."""

    def queue_unbind(queue, exchange, routing_key):
        """Remove a binding (unbinding a missing binding is not an error)."""

    def exchange_bind(destination, source, routing_key):
        """
        Bind exchange `destination` to exchange `source` (RabbitMQ's
        exchange-to-exchange binding): what `source` routes with a matching
        key also goes through `destination`.  A queue reached by several
        paths gets one copy.  NotFound when either exchange is missing.
        """

    def exchange_unbind(destination, source, routing_key):
        """Remove an exchange-to-exchange binding (a missing one is not an error)."""

    def publish(exchange, routing_key, body, properties=None, mandatory=False):
        """
        Publish `body` (bytes).  `properties` is a dict with keys from
        PROPERTY_NAMES.  Fires once the message has been handed to the broker
        (and confirmed, where the broker confirms).  Past the connection's
        in-flight bound the publish waits its turn, in call order.
        A mandatory message that no queue takes is handed to every return
        listener; that is not a failure of the Deferred.  With confirms, fails
        with MessageRefused when a full reject-publish queue refused it.
        """

    def consume(queue, callback, prefetch_count=1, no_ack=False, exclusive=False, consumer_tag=None, arguments=None):
        """
        Start consuming.  `callback(delivery)` is called with an IDelivery for
        each message, at most `prefetch_count` unacked at a time (0 means
        unlimited); its return value is ignored.  Fires with an IConsumer.
        If the broker cancels it (its queue deleted by another connection, a
        queue's node down, a quorum queue's leader moved), the connection
        declares the queue again as this connection declared it (with its
        bindings and the exchanges routing to it) and consumes again, trying
        again with backoff; a queue this connection deletes stops it.
        `arguments` is basic.consume's x-arguments table (x-stream-offset:
        where a stream consumer starts; a stream also needs a prefetch_count
        and no_ack False).
        """

    def add_return_listener(listener):
        """listener(delivery, reply_code, reply_text) for each returned mandatory message."""

    def remove_return_listener(listener):
        """Undo add_return_listener."""

    def close():
        """
        Close the connection cleanly; every consumer stops, exclusive queues
        go away.  Fires when done.  Closing twice is harmless.
        """
