"""Opening, using and closing one AMQP channel, with failures as interface exceptions."""

from twisted.internet import defer

from ion.core.messaging.broker.amqp_errors import broker_error
from ion.core.messaging.broker.interface import BrokerError


def invoke(channel, name, **kwargs):
    """One synchronous method on `channel`; fails with a BrokerError."""
    return getattr(channel, name)(**kwargs).addErrback(broker_error)


@defer.inlineCallbacks
def open_channel(state):
    """A new channel on the current TCP connection of a ConnectionState."""
    state.check_open()
    client = state.client
    channel = client.new_channel()
    try:
        yield invoke(channel, "channel_open")
    except BrokerError:
        client.forget_channel(channel)
        raise
    return channel


@defer.inlineCallbacks
def close_channel(channel):
    try:
        yield invoke(channel, "channel_close", reply_code=200, reply_text="done", class_id=0, method_id=0)
    finally:
        channel.client.forget_channel(channel)
