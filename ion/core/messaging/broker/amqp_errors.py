"""
How txamqp and Twisted report a failure, translated for callers of the
broker interface: which exception a broker refusal maps to, and whether a
call failed because the connection went away (so it may be made again).
"""

from twisted.internet import error
from twisted.python.failure import Failure
from txamqp.client import ChannelClosed, Closed, ConnectionClosed
from txamqp.message import Message
from txamqp.queue import Closed as QueueClosed

from ion.core.messaging.broker.interface import (
    BrokerError,
    ChannelError,
    ConnectionLost,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)

_ERRORS = {404: NotFound, 405: ResourceLocked, 406: PreconditionFailed}


def channel_error(close):
    """The interface exception for a channel.close from the broker."""
    return _ERRORS.get(close.reply_code, ChannelError)(close.reply_text, close.reply_code)


def culprit(close):
    """The spec method a channel.close/connection.close blames, or None."""
    try:
        return close.method.klass.spec.classes.byid[close.class_id].methods.byid[close.method_id]
    except KeyError:
        return None


def reason_text(reason):
    """Readable text for whatever txamqp hands over as a close reason."""
    if isinstance(reason, Closed) and reason.args:
        reason = reason.args[0]
    if isinstance(reason, Message):
        return "%s %s" % (reason.reply_code, reason.reply_text)
    if isinstance(reason, Failure):
        reason = reason.value
    if type(reason).__module__.startswith(("OpenSSL", "service_identity")):
        return "TLS failure: %s" % (reason,)
    return str(reason) or type(reason).__name__


def broker_error(failure):
    """Errback: txamqp/Twisted failures -> interface exceptions."""
    exc = failure.value
    if isinstance(exc, BrokerError):
        return failure
    if isinstance(exc, ChannelClosed):
        raise channel_error(exc.args[0])
    if isinstance(exc, ConnectionClosed):
        raise ConnectionLost("broker closed the connection: %s" % reason_text(exc))
    if isinstance(exc, (Closed, QueueClosed, error.ConnectionDone, error.ConnectionLost)):
        raise ConnectionLost("connection to the broker lost: %s" % reason_text(exc))
    return failure


def dropped_under(exc):
    """
    True when `exc` says the connection went away under a call rather than
    the broker refusing it: such a call can be made again once reconnected.
    A connection.close that blames a method (a hard error) is a refusal.
    """
    if isinstance(exc, ChannelClosed):
        return False
    if isinstance(exc, ConnectionClosed):
        return culprit(exc.args[0]) is None
    return isinstance(exc, (Closed, QueueClosed, ConnectionLost, error.ConnectionDone, error.ConnectionLost))
