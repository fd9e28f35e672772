"""
One test class body, two brokers.

Write the tests once in a plain mixin, then make one TestCase per broker:

    class QueueTests(BrokerTestMixin):
        @inlineCallbacks
        def test_declare(self):
            conn = yield self.connect_broker()
            ...

    QueueMemoryTest, QueueRabbitTest = for_each_broker(QueueTests, globals())

The RabbitMQ URL comes from ION_TEST_RABBITMQ_URL (default: the local broker
with guest/guest).  Connections opened with `connect_broker` are closed in
cleanup, so nothing is left on the broker.
"""

import os
import uuid

from twisted.internet import defer
from twisted.trial import unittest

RABBIT_URL = os.environ.get("ION_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BROKER_URLS = (("Memory", "memory"), ("Rabbit", RABBIT_URL))


class BrokerTestMixin:
    """Helpers shared by every broker-facing test; `broker_url` is set per generated class."""

    broker_url = None

    @property
    def on_rabbit(self):
        return self.broker_url != "memory"

    def unique_name(self, prefix="t"):
        """A name no other test (or earlier run) uses."""
        return "%s-%s" % (prefix, uuid.uuid4().hex[:12])

    @defer.inlineCallbacks
    def connect_broker(self):
        from ion.core.messaging.broker import connect
        from ion.core.messaging.broker.address import BrokerAddress

        conn = yield connect(BrokerAddress.from_url(self.broker_url))
        self.addCleanup(conn.close)
        return conn


def for_each(mixin, namespace, attribute, variants, base=unittest.TestCase):
    """
    For each (suffix, value) of `variants`, create `<Mixin><suffix>Test`
    (a subclass of mixin and `base`, with `attribute` set to value) in
    `namespace`; return them.
    """
    stem = mixin.__name__.removesuffix("Tests").removesuffix("Test")
    made = []
    for suffix, value in variants:
        name = "%s%sTest" % (stem, suffix)
        cls = type(name, (mixin, base), {attribute: value, "__module__": namespace["__name__"]})
        namespace[name] = cls
        made.append(cls)
    return tuple(made)


def for_each_broker(mixin, namespace, base=unittest.TestCase):
    """
    Create `<Mixin>MemoryTest` and `<Mixin>RabbitTest` (subclasses of mixin
    and `base`, e.g. IonTestCase) in `namespace`; return them.
    """
    return for_each(mixin, namespace, "broker_url", BROKER_URLS, base)


class AckingInbox:
    """A raw-connection consumer callback that keeps each delivery's body and acks it."""

    def __init__(self):
        self.bodies = []

    def __call__(self, delivery):
        self.bodies.append(delivery.body)
        delivery.ack()


def wait_for(predicate, timeout=10.0, interval=0.01, clock=None):
    """A Deferred that fires once predicate() is true; fails after `timeout` seconds."""
    from twisted.internet import reactor, task

    clock = clock or reactor
    deadline = clock.seconds() + timeout

    @defer.inlineCallbacks
    def poll():
        while not predicate():
            if clock.seconds() > deadline:
                raise AssertionError("condition not met within %ss: %r" % (timeout, predicate))
            yield task.deferLater(clock, interval, lambda: None)

    return poll()
