"""
The embedded broker's queue types: RabbitMQ's rules for declaring classic,
quorum and stream queues and for consuming from them.

Written from what RabbitMQ 3.10 answered (the replies are its own):

* x-queue-type names one of the three types; a queue declared without it is
  classic, and 'classic' given or not is the same on a re-declaration.
* Quorum queues and streams are never server-named, auto-delete, exclusive
  or non-durable (checked in that order).
* Each type refuses some arguments: classic queues x-delivery-limit; streams
  x-max-length, x-overflow, x-delivery-limit and x-dead-letter-exchange.
* Consuming: x-stream-offset only on a stream; a stream consumer needs a
  prefetch (basic.qos) and manual acks, and a stream refuses basic.reject
  and queue.purge.  Consuming without acks, rejecting and purging are
  connection exceptions: RabbitMQ closes the connection.

A stream's retention (x-max-length-bytes, x-max-age) is not implemented
here: declaring it fails rather than keep everything silently.
"""

from ion.core.messaging.broker.interface import (
    QUEUE_TYPES,
    STREAM_OFFSET_INTERVAL,
    STREAM_OFFSET_NAMES,
    ChannelError,
    PreconditionFailed,
)

__all__ = ["check_consume", "check_declaration", "queue_type_of", "stream_offset_spec"]

# x-queue-type -> RabbitMQ's module name, which its replies use.
MODULES = {queue_type: "rabbit_%s_queue" % queue_type for queue_type in QUEUE_TYPES}

# Arguments each type refuses at declaration.
_REFUSED_ARGUMENTS = {
    "classic": ("x-delivery-limit",),
    "quorum": (),
    "stream": ("x-max-length", "x-overflow", "x-delivery-limit", "x-dead-letter-exchange"),
}

# A stream's retention, which RabbitMQ applies by whole segments; the embedded broker has none.
_RETENTION_ARGUMENTS = ("x-max-length-bytes", "x-max-age", "x-stream-max-segment-size-bytes")

# RabbitMQ's AMQP field type names, for its unacceptable_type replies.
_FIELD_TYPES = {bool: "bool", int: "signedint", float: "double", bytes: "longstr", dict: "table", list: "array"}

_UNIT_SECONDS = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}


def _vhost(name):
    return "queue %r in vhost '/'" % (name,)


def queue_type_of(arguments):
    """The queue type x-arguments declare ('classic' when they name none)."""
    return arguments.get("x-queue-type", "classic")


def check_declaration(name, durable, exclusive, auto_delete, arguments):
    """Refuse a new queue's declaration as RabbitMQ does; return its type."""
    queue_type = queue_type_of(arguments)
    if not isinstance(queue_type, str):
        kind = _FIELD_TYPES.get(type(queue_type), type(queue_type).__name__)
        raise PreconditionFailed(
            "PRECONDITION_FAILED - invalid arg 'x-queue-type' for %s: {unacceptable_type,%s}" % (_vhost(name), kind)
        )
    if queue_type not in QUEUE_TYPES:
        raise PreconditionFailed(
            "PRECONDITION_FAILED - invalid arg 'x-queue-type' for %s: \"unsupported queue type '%s'\""
            % (_vhost(name), queue_type)
        )
    if queue_type != "classic":
        if not name:
            raise PreconditionFailed(
                "PRECONDITION_FAILED - Cannot declare a server-named queue for type %s" % MODULES[queue_type]
            )
        for refused, prop in ((auto_delete, "auto-delete"), (exclusive, "exclusive-owner"), (not durable, "non-durable")):
            if refused:
                raise PreconditionFailed("PRECONDITION_FAILED - invalid property '%s' for %s" % (prop, _vhost(name)))
    for arg in _REFUSED_ARGUMENTS[queue_type]:
        if arg in arguments:
            raise PreconditionFailed(
                "PRECONDITION_FAILED - invalid arg %r for %s of queue type %s" % (arg, _vhost(name), MODULES[queue_type])
            )
    if queue_type == "stream":
        for arg in _RETENTION_ARGUMENTS:
            if arg in arguments:
                # RabbitMQ takes it; this broker would keep everything instead, so it says so.
                raise ChannelError("NOT_IMPLEMENTED - stream retention (%s) is not implemented by the embedded "
                                   "broker" % arg, 540)
    return queue_type


def connection_exception(text):
    """A reply RabbitMQ sends as a connection exception (it closes the connection)."""
    return ChannelError("NOT_IMPLEMENTED - " + text, 540)


def check_consume(queue, prefetch_count, no_ack, arguments):
    """
    Refuse a basic.consume as RabbitMQ does: a ChannelError, or a 540
    connection exception (the caller closes the connection).
    """
    if queue.type != "stream":
        if "x-stream-offset" in arguments:
            raise PreconditionFailed(
                "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for %s of queue type %s"
                % (_vhost(queue.name), MODULES[queue.type])
            )
        return
    if no_ack:
        raise connection_exception("automatic acknowledgement not supported by stream queues %s" % _vhost(queue.name))
    if not prefetch_count:
        raise PreconditionFailed(
            "PRECONDITION_FAILED - consumer prefetch count is not set for '%s'" % _vhost(queue.name)
        )
    stream_offset_spec(arguments.get("x-stream-offset", "next"))


def stream_offset_spec(value):
    """
    ('first'|'last'|'next', None), ('offset', n), ('timestamp', seconds) or
    ('interval', seconds) for an x-stream-offset value.  RabbitMQ's channel
    crashes on anything else; here it is a ChannelError (541).
    """
    if isinstance(value, str):
        if value in STREAM_OFFSET_NAMES:
            return value, None
        match = STREAM_OFFSET_INTERVAL.match(value)
        if match:
            return "interval", int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    elif isinstance(value, int) and not isinstance(value, bool):
        return "offset", value
    elif hasattr(value, "timestamp"):
        return "timestamp", int(value.timestamp())  # an AMQP timestamp: whole seconds
    raise ChannelError("INTERNAL_ERROR - invalid x-stream-offset %r" % (value,), 541)
