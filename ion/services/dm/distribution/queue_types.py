"""
A subscriber's queue type: classic, quorum or stream, and what each allows.

Every subscriber queue names its type (x-queue-type, 'classic' too): RabbitMQ
takes a queue declared without one for classic, so an older queue is
re-declared fine, and one declared as another type is refused
(PreconditionFailed, "inequivalent arg 'x-queue-type'") whatever a
subscriber left out.

RabbitMQ refuses quorum queues and streams that are broker-named,
auto-delete, exclusive or non-durable, a stream's length limits and
overflow, and it closes the whole connection when a stream is consumed
without acks or a stream delivery is rejected.  `check` says so before
anything is sent, naming the subscriber's parameter to change.
"""

import math
import numbers
from datetime import datetime

from ion.core.exception import UsageError
from ion.core.messaging.broker.interface import QUEUE_TYPES, STREAM_OFFSET_INTERVAL, STREAM_OFFSET_NAMES

# What the container may make the default for named durable subscriptions (--default_queue_type).
DEFAULT_QUEUE_TYPES = ("classic", "quorum")

# A quorum queue's x-delivery-limit, unless its subscriber retries more: RabbitMQ 4's own default,
# but explicit, and with a dead-letter exchange, so a message past it is kept, not dropped.
DEFAULT_DELIVERY_LIMIT = 20


def delivery_limit(retries):
    """
    The x-delivery-limit of a quorum queue whose subscriber makes `retries`.
    It is a backstop, never below the retries: the subscriber itself
    dead-letters a failed event after its last retry (with the reason).  The
    broker's limit catches deliveries that never get a verdict, which it
    counts too (a subscriber dying on the message, or a stopping one handing
    back events it held unhandled): a limit of just `retries` would
    dead-letter good events after a few restarts.
    """
    return max(retries or 0, DEFAULT_DELIVERY_LIMIT)



def check_default(value, origin):
    """A default queue type (the container option or ion.config); UsageError naming `origin` if bad."""
    if value not in DEFAULT_QUEUE_TYPES:
        raise UsageError("%s: the default queue type must be one of %s, not %r"
                         % (origin, ", ".join(DEFAULT_QUEUE_TYPES), value))
    return value


def resolve(queue_type, queue_name, durable, auto_delete, default):
    """The queue type a subscriber declares: its own, else `default` for a named durable queue, else classic."""
    if queue_type is not None:
        return queue_type
    if queue_name and durable and not auto_delete:
        return default
    return "classic"


def check(who, queue_type, queue_name, durable, auto_delete, retries, limits, offset):
    """
    UsageError for a subscriber RabbitMQ would refuse: `limits` names the
    length-limit parameters given (max_length, max_length_bytes, overflow).
    """
    if queue_type not in QUEUE_TYPES:
        raise UsageError("%s: queue_type must be None or one of %s, not %r" % (who, ", ".join(QUEUE_TYPES), queue_type))
    if offset is not None and queue_type != "stream":
        raise UsageError("%s: offset=%r needs queue_type='stream' (this one is %r)" % (who, offset, queue_type))
    if queue_type == "classic":
        return
    what = "a %s queue" % queue_type if queue_type == "quorum" else "a stream"
    if not queue_name:
        raise UsageError("%s: %s cannot be broker-named: give it a queue_name" % (who, what))
    if not durable:
        raise UsageError("%s: %s is always durable: pass durable=True" % (who, what))
    if auto_delete:
        raise UsageError("%s: %s is never auto-delete: pass auto_delete=False" % (who, what))
    if queue_type == "stream":
        if limits:
            raise UsageError(
                "%s: a stream takes no %s (RabbitMQ refuses x-max-length and x-overflow on streams, and its "
                "x-max-length-bytes is retention, not a bound on waiting events)" % (who, ", ".join(limits))
            )
        if retries is not None:
            raise UsageError(
                "%s: a stream cannot retry (retries=%r): nothing goes back to a stream, and RabbitMQ closes the "
                "connection on basic.reject; use a quorum or classic queue" % (who, retries)
            )


def stream_offset(who, offset):
    """
    The x-stream-offset consumer argument for `offset`: 'first', 'last',
    'next' (the default), a timezone-aware datetime (from that time), a
    number of seconds ago (rounded up to whole seconds) or RabbitMQ's
    interval text ('10m', '1h', '2D'; units Y M D h m s).
    """
    if offset is None:
        return "next"
    if isinstance(offset, str) and (offset in STREAM_OFFSET_NAMES or STREAM_OFFSET_INTERVAL.match(offset)):
        return offset
    if isinstance(offset, datetime):
        if offset.tzinfo is None:
            raise UsageError("%s: offset %r has no time zone: give an aware datetime (e.g. UTC)" % (who, offset))
        return offset
    if isinstance(offset, numbers.Real) and not isinstance(offset, bool) and math.isfinite(offset) and offset >= 0:
        return "%ds" % math.ceil(offset)
    raise UsageError(
        "%s: offset must be 'first', 'last', 'next', an aware datetime, seconds ago (a number >= 0) or an interval "
        "like '10m' or '1h' (units Y M D h m s), not %r" % (who, offset)
    )
