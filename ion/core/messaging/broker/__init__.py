"""The broker layer: `connect(address)` gives an IBrokerConnection (see interface.py)."""


def connect(address, reactor=None, clock=None):
    """
    Connect to the broker `address` (a BrokerAddress); fires with an
    IBrokerConnection.  A RabbitMQ connection waits (reconnects, timeouts,
    heartbeats) on `clock`, the reactor unless given.
    """
    if address.kind == "memory":
        from ion.core.messaging.broker import memory

        return memory.connect(address.memory_name)
    from ion.core.messaging.broker import amqp

    return amqp.connect(address, reactor, clock)
