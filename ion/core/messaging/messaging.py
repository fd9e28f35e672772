"""
A received AMQP message and the R1 queue configurations (§5.4, §5.6).
"""

from ion.core.exception import IonError
from ion.core.messaging.broker.interface import PROPERTY_SET
from ion.core.messaging import envelope

DEFAULT_EXCHANGE_SPACE = "magnet.topic"

# The exchange every process, service and RPC message travels on (R1 §5.3).
PROCESS_EXCHANGE = {
    "exchange": DEFAULT_EXCHANGE_SPACE,
    "exchange_type": "topic",
    "exchange_durable": False,
    "exchange_auto_delete": True,
}


class MessageStateError(IonError):
    """A message was acked, rejected or requeued a second time."""


class Message:
    """
    One delivery as handlers see it (R1's `ion.core.messaging.messaging.Message`).

    It must be settled exactly once with `ack()`, `reject()` or `requeue()`;
    a second settlement raises MessageStateError.  `payload` is the header
    map with its content decoded (envelope.decode), made on first access and
    kept: every reader of one delivery sees the same dict.  A `raw` message's
    GPB content stays bytes.
    """

    RECEIVED, ACK, REJECTED, REQUEUED = "RECEIVED", "ACK", "REJECTED", "REQUEUED"

    def __init__(self, delivery, raw=False):
        self.delivery = delivery
        self.raw = raw
        self._state = self.RECEIVED
        self._payload = None

    def __getattr__(self, name):
        # AMQP properties (content_type, reply_to, ...) read through to the delivery.
        if name in PROPERTY_SET:
            return self.delivery.properties.get(name)
        raise AttributeError(name)

    @property
    def body(self):
        return self.delivery.body

    @property
    def delivery_tag(self):
        return self.delivery.delivery_tag

    @property
    def routing_key(self):
        return self.delivery.routing_key

    @property
    def state(self):
        return self._state

    @property
    def payload(self):
        if self._payload is None:
            self._payload = envelope.decode(self.delivery.body, raw=self.raw)
        return self._payload

    def _settle(self, state):
        if self._state != self.RECEIVED:
            raise MessageStateError("message %s already %s, cannot %s it" % (self.delivery_tag, self._state, state))
        self._state = state

    def ack(self):
        self._settle(self.ACK)
        self.delivery.ack()

    def reject(self):
        self._settle(self.REJECTED)
        self.delivery.reject(requeue=False)

    def requeue(self):
        self._settle(self.REQUEUED)
        self.delivery.reject(requeue=True)


def _queue_config(name, queue, exclusive):
    config = dict(PROCESS_EXCHANGE)
    config.update(
        queue=queue,
        exclusive=exclusive,
        durable=False,
        auto_delete=True,
        no_ack=False,
        routing_key=name,
        binding_key=name,
        prefetch_count=1,
    )
    return config


def process(name):
    """A process's own queue: exclusive, named and bound by its id."""
    return _queue_config(name, name, exclusive=True)


direct = process


def worker(name):
    """A shared worker queue: several consumers take turns."""
    return _queue_config(name, name, exclusive=False)


def fanout(name):
    """An anonymous exclusive queue bound with `name`: every receiver gets a copy."""
    return _queue_config(name, "", exclusive=True)
