"""
The RabbitMQ (txamqp) broker connection.

Broker-generic checks (bodies stay bytes, returns, channel errors, cancel)
run against both brokers through `for_each_broker`; the rest is about
txamqp and RabbitMQ: the spec file, channel reuse, heartbeats, login and TLS.
"""

import importlib.util
import os
import struct

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from ion.core.messaging.broker import amqp, connect
from ion.core.messaging.broker.address import BrokerAddress
from ion.core.messaging.broker.interface import (
    PROPERTY_NAMES,
    BrokerError,
    ConnectionLost,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from ion.core.resources import resource_path
from test.brokers import RABBIT_URL, BrokerTestMixin, for_each_broker
from test.proxy import TcpProxy
from test.test_broker_address import make_certificates

TIMEOUT = 20  # seconds to wait for an expected message before failing


class Collector:
    """A consumer callback that records deliveries and fires `wait(n)` once n have arrived."""

    def __init__(self, ack=True):
        self.deliveries = []
        self._ack = ack
        self._waiting = []

    def __call__(self, delivery):
        self.deliveries.append(delivery)
        if self._ack:
            delivery.ack()
        for count, d in list(self._waiting):
            if len(self.deliveries) >= count:
                self._waiting.remove((count, d))
                d.callback(self.deliveries[:count])

    def wait(self, count):
        if len(self.deliveries) >= count:
            return defer.succeed(self.deliveries[:count])
        d = defer.Deferred()
        self._waiting.append((count, d))
        return d.addTimeout(TIMEOUT, reactor)

    @property
    def bodies(self):
        return [d.body for d in self.deliveries]


class BodyTests(BrokerTestMixin):
    """Published bytes come back as exactly the same bytes (txamqp used to decode UTF-8 bodies)."""

    @defer.inlineCallbacks
    def assertRoundTrip(self, *bodies):
        conn = yield self.connect_broker()
        queue = yield conn.queue_declare(self.unique_name(), exclusive=True)
        collector = Collector()
        yield conn.consume(queue, collector, prefetch_count=0)
        for body in bodies + (b"after",):
            yield conn.publish("", queue, body)
        yield collector.wait(len(bodies) + 1)
        for sent, got in zip(bodies + (b"after",), collector.bodies):
            self.assertIsInstance(got, bytes)
            self.assertEqual(len(got), len(sent))
            self.assertTrue(got == sent, "body of %d bytes changed in transit" % len(sent))

    def test_ascii(self):
        return self.assertRoundTrip(b"plain ascii")

    def test_multibyte_utf8(self):
        return self.assertRoundTrip("h\u00e9 \u20ac \U0001F600".encode("utf-8"))

    def test_invalid_utf8(self):
        return self.assertRoundTrip(b"\xff\xfe\x80 not \xc3 utf-8")

    def test_empty(self):
        return self.assertRoundTrip(b"")

    def test_large_random(self):
        return self.assertRoundTrip(os.urandom(1 << 20))

    def test_large_multibyte(self):
        """Body frames split the 3-byte characters at arbitrary points."""
        return self.assertRoundTrip(("\u20ac" * ((1 << 20) // 3 + 1)).encode("utf-8"))

    def test_all_in_a_row(self):
        return self.assertRoundTrip(b"a", "\u20ac".encode(), b"\xff", b"", os.urandom(300000), ("\u00e9" * 200000).encode())

    @defer.inlineCallbacks
    def test_properties_round_trip(self):
        conn = yield self.connect_broker()
        queue = yield conn.queue_declare(self.unique_name(), exclusive=True)
        headers = {"str": "\u20ac", "int": -7, "big": 2**40, "float": 1.5, "bool": True, "none": None,
                   "bytes": b"\xff\x00", "list": [1, "two", [3]], "table": {"nested": "yes"}}
        properties = {"content_type": "application/octet-stream", "content_encoding": "binary", "headers": headers,
                      "delivery_mode": 1, "priority": 3, "correlation_id": "corr", "reply_to": "back",
                      "expiration": "60000", "message_id": "m-1", "timestamp": 1700000000, "type": "event",
                      "user_id": BrokerAddress.from_url(self.broker_url).username, "app_id": "ion"}
        collector = Collector()
        yield conn.consume(queue, collector)
        yield conn.publish("", queue, b"body", properties)
        yield conn.publish("", queue, b"bare")
        first, second = yield collector.wait(2)
        self.assertEqual(first.properties, properties)
        self.assertEqual(second.properties, {})
        self.assertTrue(set(first.properties) <= set(PROPERTY_NAMES))
        self.assertEqual((first.exchange, first.routing_key, first.redelivered), ("", queue, False))

    @defer.inlineCallbacks
    def test_order_kept(self):
        conn = yield self.connect_broker()
        queue = yield conn.queue_declare(self.unique_name(), exclusive=True)
        collector = Collector()
        yield conn.consume(queue, collector, prefetch_count=50)
        expected = [b"%d" % i for i in range(2000)]
        for body in expected:
            conn.publish("", queue, body)
        yield collector.wait(len(expected))
        self.assertEqual(collector.bodies, expected)


class ReturnTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def test_unroutable_mandatory_goes_to_return_listeners(self):
        conn = yield self.connect_broker()
        first = defer.Deferred()
        calls = []

        def listener(delivery, code, text):
            calls.append((delivery, code, text))
            first.callback(None)

        conn.add_return_listener(listener)
        nowhere = self.unique_name()
        result = yield conn.publish("", nowhere, "\u20ac".encode(), {"message_id": "lost"}, mandatory=True)
        self.assertIsNone(result)  # not a failure of the publish
        yield first.addTimeout(TIMEOUT, reactor)
        delivery, code, text = calls[0]
        self.assertEqual((delivery.body, delivery.exchange, delivery.routing_key), ("\u20ac".encode(), "", nowhere))
        self.assertEqual(delivery.properties["message_id"], "lost")
        self.assertEqual(code, 312)
        self.assertIn("NO_ROUTE", text)

        conn.remove_return_listener(listener)
        second = defer.Deferred()
        conn.add_return_listener(lambda delivery, code, text: second.callback(delivery))
        yield conn.publish("", nowhere, b"again", mandatory=True)
        again = yield second.addTimeout(TIMEOUT, reactor)
        self.assertEqual(again.body, b"again")
        self.assertEqual(len(calls), 1)


class ChannelErrorTests(BrokerTestMixin):
    """A refused operation fails its own Deferred and the connection carries on."""

    @defer.inlineCallbacks
    def assertStillWorks(self, conn):
        queue = yield conn.queue_declare(self.unique_name(), exclusive=True)
        collector = Collector()
        yield conn.consume(queue, collector)
        yield conn.publish("", queue, b"still here")
        yield collector.wait(1)

    @defer.inlineCallbacks
    def declare_exchange(self, conn, **kwargs):
        name = self.unique_name("x")
        yield conn.exchange_declare(name, **kwargs)
        self.addCleanup(conn.exchange_delete, name)
        return name

    @defer.inlineCallbacks
    def test_conflicting_redeclare(self):
        conn = yield self.connect_broker()
        name = yield self.declare_exchange(conn, type="topic", auto_delete=False)
        error = yield self.assertFailure(conn.exchange_declare(name, type="fanout", auto_delete=False), PreconditionFailed)
        self.assertEqual(error.code, 406)
        yield self.assertStillWorks(conn)

    @defer.inlineCallbacks
    def test_passive_declare_of_missing_queue(self):
        conn = yield self.connect_broker()
        error = yield self.assertFailure(conn.queue_declare(self.unique_name(), passive=True), NotFound)
        self.assertEqual(error.code, 404)
        yield self.assertStillWorks(conn)

    @defer.inlineCallbacks
    def test_exclusive_queue_of_another_connection(self):
        owner = yield self.connect_broker()
        other = yield self.connect_broker()
        queue = yield owner.queue_declare(self.unique_name(), exclusive=True)
        error = yield self.assertFailure(other.queue_declare(queue, exclusive=True), ResourceLocked)
        self.assertEqual(error.code, 405)
        yield self.assertStillWorks(other)

    @defer.inlineCallbacks
    def test_consume_from_missing_queue(self):
        conn = yield self.connect_broker()
        yield self.assertFailure(conn.consume(self.unique_name(), Collector()), NotFound)
        yield self.assertStillWorks(conn)

    @defer.inlineCallbacks
    def test_error_belongs_to_its_call(self):
        """Calls issued together: only the bad one fails."""
        conn = yield self.connect_broker()
        name = yield self.declare_exchange(conn, type="topic", auto_delete=False)
        queue = self.unique_name()
        bad = conn.exchange_declare(name, type="direct", auto_delete=False)
        good = conn.queue_declare(queue, exclusive=True)
        yield self.assertFailure(bad, PreconditionFailed)
        self.assertEqual((yield good), queue)


class CancelTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def test_cancel_requeues_unacked(self):
        conn = yield self.connect_broker()
        queue = yield conn.queue_declare(self.unique_name(), exclusive=True, auto_delete=False)
        first = Collector(ack=False)
        consumer = yield conn.consume(queue, first, prefetch_count=2)
        for body in (b"one", b"two"):
            yield conn.publish("", queue, body)
        received = yield first.wait(2)
        yield consumer.cancel()
        yield consumer.cancel()  # harmless
        received[0].ack()  # after cancel: a no-op, the message is requeued
        second = Collector()
        yield conn.consume(queue, second)
        redelivered = yield second.wait(2)
        self.assertEqual(sorted(d.body for d in redelivered), [b"one", b"two"])
        self.assertTrue(all(d.redelivered for d in redelivered))

    @defer.inlineCallbacks
    def test_close_twice_then_calls_fail(self):
        conn = yield self.connect_broker()
        yield conn.queue_declare(self.unique_name(), exclusive=True)
        yield defer.gatherResults([conn.close(), conn.close()])
        yield conn.close()
        yield self.assertFailure(conn.queue_declare(self.unique_name(), exclusive=True), ConnectionLost)


BodyMemoryTest, BodyRabbitTest = for_each_broker(BodyTests, globals())
ReturnMemoryTest, ReturnRabbitTest = for_each_broker(ReturnTests, globals())
ChannelErrorMemoryTest, ChannelErrorRabbitTest = for_each_broker(ChannelErrorTests, globals())
CancelMemoryTest, CancelRabbitTest = for_each_broker(CancelTests, globals())


class _FrameSink:
    """Stands in for the AMQPConnection behind a protocol Client fed bytes by hand: records what it is handed."""

    def __init__(self):
        self.delivered, self.lost = [], []

    def _deliver(self, channel, msg):
        self.delivered.append((channel.id, msg))

    def _connection_lost(self, client, reason):
        self.lost.append(reason)

    def _confirmed(self, channel, delivery_tag, multiple, ack):
        self.delivered.append(("confirm", channel.id, delivery_tag, multiple, ack))

    def _returned(self, msg):
        self.delivered.append(("return", msg.content.body))


class DeliveryAssemblyTest(unittest.TestCase):
    """The protocol puts basic.deliver frames together itself (no txamqp queue): bytes in, whole messages out."""

    def setUp(self):
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from ion.core.messaging.broker.amqp_protocol import BASIC
        from ion.core.messaging.broker.amqp_protocol import Client, Delegate, load_spec

        self.sink = _FrameSink()
        self.client = Client(Delegate(self.sink), "/", load_spec(), 0, Clock())
        self.client.makeConnection(StringTransport())
        self.client.frame_max = 1000  # bodies past 992 bytes take several frames
        self.deliver = BASIC["deliver"]

    def frames(self, channel, tag, body, properties=None, redelivered=False):
        args = ("ctag-%d" % channel, tag, redelivered, "ex", "rk.%d" % tag)
        return self.client.content_frames(channel, self.deliver, args, body, properties or {})

    def feed(self, data, step):
        for i in range(0, len(data), step):
            self.client.dataReceived(data[i:i + step])

    def test_interleaved_channels_multi_frame_bodies_any_split(self):
        for channel in (1, 2):
            self.client.channel_now(channel)
        bodies = [b"", b"\xff\xfe" * 3000, os.urandom(992), os.urandom(993), "\u20ac".encode() * 700]
        headers = {"headers": {"k": "\u20ac"}, "delivery_mode": 2}
        data = b"".join(self.frames(1 + i % 2, i + 1, body, headers, i == 3) for i, body in enumerate(bodies))
        for step in (len(data), 1, 7, 1001):
            self.sink.delivered = []
            self.feed(data, step)
            self.assertEqual([(ch, m.delivery_tag) for ch, m in self.sink.delivered], [(1, 1), (2, 2), (1, 3), (2, 4), (1, 5)])
            for (ch, msg), body in zip(self.sink.delivered, bodies):
                self.assertIs(type(msg.content.body), bytes)
                self.assertTrue(msg.content.body == body)
                self.assertEqual(msg.content.properties, headers)
                self.assertEqual((msg.consumer_tag, msg.exchange, msg.routing_key), ("ctag-%d" % ch, "ex", "rk.%d" % msg.delivery_tag))
            self.assertEqual([m.redelivered for _, m in self.sink.delivered], [False, False, False, True, False])
            self.assertEqual(self.client._partial, {})

    def test_repeated_properties_decoded_once_each_message_its_own(self):
        from ion.core.messaging.envelope import message_properties

        self.client.channel_now(1)
        sent = [message_properties(2), message_properties(2), {"headers": {"a": 1}}, {"headers": {"a": 1}},
                message_properties(1), {}, {}]
        self.feed(b"".join(self.frames(1, i + 1, b"b", props) for i, props in enumerate(sent)), 5)
        got = [msg.content.properties for _, msg in self.sink.delivered]
        self.assertEqual(got, sent)
        self.assertIsNot(got[0], got[1])
        self.assertIsNot(got[0]["headers"], got[1]["headers"])
        got[0]["headers"]["changed"] = 1
        self.feed(self.frames(1, 9, b"b", message_properties(2)), 1000)
        self.assertEqual(self.sink.delivered[-1][1].content.properties, message_properties(2))
        self.assertEqual(len(self.client._header_cache), 3)  # not the non-empty table

    def test_confirms_go_straight_to_the_connection_in_order(self):
        from ion.core.messaging.broker.amqp_protocol import BASIC

        self.client.channel_now(1)
        returned = self.client.content_frames(1, BASIC["return"], (312, "NO_ROUTE", "ex", "rk"), b"r" * 2500, {})
        data = b"".join([self.client.method_frame(1, BASIC["ack"], (1, False)), returned,
                         self.client.method_frame(1, BASIC["ack"], (3, True)),
                         self.client.method_frame(1, BASIC["nack"], (2**40, False, True))])
        self.feed(data, 9)
        self.assertEqual(self.sink.delivered, [("confirm", 1, 1, False, True), ("return", b"r" * 2500),
                                               ("confirm", 1, 3, True, True), ("confirm", 1, 2**40, False, False)])

    def test_partial_message_dropped_at_connection_loss(self):
        from twisted.internet.error import ConnectionLost as TcpConnectionLost
        from twisted.python.failure import Failure

        self.client.channel_now(1)
        self.client.dataReceived(self.frames(1, 1, os.urandom(5000))[:2500])
        self.assertIn(1, self.client._partial)
        self.client.connectionLost(Failure(TcpConnectionLost()))
        self.assertEqual(len(self.sink.lost), 1)
        self.assertEqual(self.client._partial, {})
        self.assertEqual(self.sink.delivered, [])

    def test_partial_message_dropped_with_its_channel(self):
        """Its remaining frames are read and dropped; the channel id, used again, starts clean."""
        channel = self.client.channel_now(3)
        data = self.frames(3, 1, os.urandom(3000))
        self.client.dataReceived(data[:1500])
        self.client.forget_channel(channel)
        self.client.channel_now(3)
        self.client.dataReceived(data[1500:] + self.frames(3, 2, b"next"))
        self.assertEqual([(ch, m.delivery_tag, m.content.body) for ch, m in self.sink.delivered], [(3, 2, b"next")])
        self.assertEqual(self.client._partial, {})


class _CountingTransport:
    """A StringTransport that records each write on its own."""

    def __init__(self):
        from twisted.internet.testing import StringTransport

        self.inner = StringTransport()
        self.writes = []

    def write(self, data):
        self.writes.append(data)
        self.inner.write(data)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _settles(data):
    """The basic.ack / basic.reject frames in written bytes, as (name, tag, bit)."""
    found = []
    while data:
        kind, channel, size = struct.unpack_from("!BHI", data)
        payload, data = data[7:7 + size], data[8 + size:]
        if kind == 1:
            class_id, method_id, tag, bit = struct.unpack("!HHQB", payload)
            found.append(({(60, 80): "ack", (60, 90): "reject"}[class_id, method_id], tag, bit))
    return found


class WriteBatchTest(unittest.TestCase):
    """
    What a read (or a resumed write buffer) makes the client write goes to the transport in one write;
    the acks a consumer's handlers give during a read go as one basic.ack with `multiple` when that acks
    exactly them.
    """

    def setUp(self):
        from twisted.internet.task import Clock

        from ion.core.messaging.broker.amqp_consumer import Consumer
        from ion.core.messaging.broker.amqp_protocol import BASIC, Client, Delegate, load_spec

        self.sink = _FrameSink()
        self.sink._deliver = lambda channel, msg: self.consumer._deliver(channel, msg)
        self.client = Client(Delegate(self.sink), "/", load_spec(), 0, Clock())
        self.transport = _CountingTransport()
        self.client.makeConnection(self.transport)
        self.transport.writes = []
        self.deliveries, self.hold = [], set()

        def handler(delivery):
            self.deliveries.append(delivery)
            if delivery.delivery_tag not in self.hold:
                delivery.ack()

        self.consumer = Consumer(None, "q", handler, 100, False, False, None)
        self.consumer.on_channel(self.client.channel_now(1))
        self.deliver = BASIC["deliver"]

    def frames(self, *tags):
        return b"".join(self.client.content_frames(1, self.deliver, ("ctag", tag, False, "ex", "rk"), b"body", {})
                        for tag in tags)

    def test_acks_of_one_read_are_one_multiple_ack(self):
        self.client.dataReceived(self.frames(1, 2, 3, 4, 5))
        self.assertEqual(len(self.transport.writes), 1)
        self.assertEqual(_settles(self.transport.writes[0]), [("ack", 5, 1)])
        self.client.dataReceived(self.frames(6))  # one alone: a plain ack
        self.assertEqual(_settles(self.transport.writes[1]), [("ack", 6, 0)])

    def test_an_unsettled_delivery_below_keeps_acks_single(self):
        self.hold.add(2)
        self.client.dataReceived(self.frames(1, 2, 3, 4))
        self.assertEqual(_settles(b"".join(self.transport.writes)), [("ack", 1, 0), ("ack", 3, 0), ("ack", 4, 0)])
        self.deliveries[1].ack()  # outside a read: written at once
        self.assertEqual(_settles(self.transport.writes[-1]), [("ack", 2, 0)])
        self.client.dataReceived(self.frames(5, 6))  # nothing below is open again
        self.assertEqual(_settles(self.transport.writes[-1]), [("ack", 6, 1)])

    def test_a_reject_keeps_every_settle_its_own_frame_in_order(self):
        def reject_second(delivery):
            self.deliveries.append(delivery)
            if delivery.delivery_tag == 2:
                delivery.reject(requeue=True)
            else:
                delivery.ack()

        self.consumer._callback = reject_second
        self.client.dataReceived(self.frames(1, 2, 3))
        self.assertEqual(_settles(b"".join(self.transport.writes)), [("ack", 1, 0), ("reject", 2, 1), ("ack", 3, 0)])

    def test_settles_of_a_lost_channel_are_not_written(self):
        self.hold.update((1, 2))
        self.client.dataReceived(self.frames(1, 2))
        self.consumer.on_channel(self.client.channel_now(2))  # consuming again elsewhere: the old tags mean nothing
        self.deliveries[0].ack()
        self.deliveries[1].ack()
        self.assertEqual(_settles(b"".join(self.transport.writes)), [])

    def test_writes_during_a_read_are_one_transport_write_in_order(self):
        from ion.core.messaging.broker.amqp_protocol import WRITE_BATCH_BYTES

        published = []

        def publish_too(delivery):
            self.deliveries.append(delivery)
            delivery.ack()
            frame = self.client.publish_frames(1, "ex", "rk.%d" % delivery.delivery_tag, False, b"x", {})
            published.append(frame)
            self.client.write(frame)

        self.consumer._callback = publish_too
        self.client.dataReceived(self.frames(1, 2))
        self.assertEqual(len(self.transport.writes), 1)
        ack_1, ack_2 = (self.client.method_frame(1, self.client._methods[60, 80], (tag, False)) for tag in (1, 2))
        self.assertEqual(self.transport.writes[0], ack_1 + published[0] + ack_2 + published[1])

        # Past WRITE_BATCH_BYTES it goes at once, so that a full write buffer pauses publishing in time.
        big = b"x" * (WRITE_BATCH_BYTES // 2 + 1)
        seen = []

        def publish_big(delivery):
            self.client.write(big)
            seen.append(len(self.transport.writes))

        self.consumer._callback = publish_big
        self.client.dataReceived(self.frames(3, 4, 5))
        self.assertEqual(seen, [1, 2, 2])
        self.assertEqual(self.transport.writes[1:], [big * 2, big])

    def test_what_a_resumed_buffer_lets_go_is_one_transport_write(self):
        self.sink._writing_paused = lambda client, paused: [client.write(b"p%d" % n) for n in range(3)]
        self.client.resumeProducing()
        self.assertEqual(self.transport.writes, [b"p0p1p2"])


class SpecTest(unittest.TestCase):
    """res/amqp/amqp0-9-1.rabbitmq.xml: complete for our needs, and what the generator makes today."""

    USED = {
        "connection": ["start", "start-ok", "tune", "tune-ok", "open", "open-ok", "close", "close-ok", "blocked", "unblocked"],
        "channel": ["open", "open-ok", "close", "close-ok", "flow", "flow-ok"],
        "exchange": ["declare", "declare-ok", "delete", "delete-ok", "bind", "bind-ok", "unbind", "unbind-ok"],
        "queue": ["declare", "declare-ok", "bind", "bind-ok", "unbind", "unbind-ok", "delete", "delete-ok", "purge", "purge-ok"],
        "basic": ["qos", "qos-ok", "consume", "consume-ok", "cancel", "cancel-ok", "publish", "deliver", "ack", "reject",
                  "return", "nack"],
        "confirm": ["select", "select-ok"],
    }

    def test_every_method_we_use_loads(self):
        spec = amqp.load_spec()
        for klass, methods in self.USED.items():
            for name in methods:
                method = spec.parse_method("%s.%s" % (klass, name))
                self.assertEqual(method.content, (klass, name) in {("basic", "publish"), ("basic", "deliver"), ("basic", "return")})
                if not name.endswith("-ok") and method.synchronous:
                    self.assertIn(spec.parse_method("%s.%s-ok" % (klass, name)), method.responses)

    def test_wire_ids_and_fields(self):
        spec = amqp.load_spec()
        ids = {"connection.start": (10, 10), "channel.close": (20, 40), "basic.publish": (60, 40),
               "basic.deliver": (60, 60), "basic.nack": (60, 120), "confirm.select": (85, 10)}
        for name, (class_id, method_id) in ids.items():
            method = spec.parse_method(name)
            self.assertEqual((method.klass.id, method.id), (class_id, method_id), name)
        fields = [(f.name, f.type) for f in spec.parse_method("basic.deliver").fields]
        self.assertEqual(fields, [("consumer-tag", "shortstr"), ("delivery-tag", "longlong"), ("redelivered", "bit"),
                                  ("exchange", "shortstr"), ("routing-key", "shortstr")])
        self.assertEqual([f.name for f in spec.classes.byname["basic"].fields],
                         [name.replace("_", "-") for name in PROPERTY_NAMES])
        self.assertEqual(spec.constants.byname["frame-end"].id, 206)

    def test_settle_frames_are_the_generic_encoders(self):
        """amqp_consumer packs basic.ack/basic.reject itself: byte for byte what the method-frame encoder writes."""
        from ion.core.messaging.broker.amqp_protocol import BASIC
        from ion.core.messaging.broker.amqp_consumer import settle_frame
        from ion.core.messaging.broker.amqp_protocol import Client

        for name in ("ack", "reject"):
            for channel, tag, bit in ((1, 1, False), (7, 12345, True), (65535, 2**64 - 1, False), (3, 2**40, True)):
                self.assertEqual(settle_frame(channel, BASIC[name], tag, bit),
                                 Client.method_frame(None, channel, BASIC[name], (tag, bit)), (name, channel, tag, bit))

    def test_publish_frames_are_the_generic_encoders(self):
        """basic.publish packed directly, its properties encoded once and cached: the generic encoders' bytes."""
        from twisted.internet.task import Clock

        from ion.core.messaging.broker.amqp_protocol import BASIC
        from ion.core.messaging.broker.amqp_codec import frame_bytes, put_properties
        from ion.core.messaging.broker.amqp_protocol import Client, Delegate, load_spec
        from ion.core.messaging.envelope import message_properties

        client = Client(Delegate(None), "/", load_spec(), 0, Clock())
        client.frame_max = 1000
        types = client._properties[60]

        def generic(channel, exchange, routing_key, mandatory, body, properties):
            header = bytearray(struct.pack("!HHQ", 60, 0, len(body)))
            put_properties(header, types, properties)
            step = client.frame_max - 8
            return b"".join([Client.method_frame(None, channel, BASIC["publish"], (0, exchange, routing_key, mandatory, False)),
                             frame_bytes(2, channel, bytes(header))]
                            + [frame_bytes(3, channel, body[i:i + step]) for i in range(0, len(body), step)])

        varied = [message_properties(1), message_properties(2), {}, {"headers": {"a": 1}, "priority": 3},
                  {"message_id": "m-1", "delivery_mode": 2, "headers": {}}, {"priority": True}, {"timestamp": 1700000000}]
        for properties in varied * 2:  # the second time from the cache
            for channel, exchange, routing_key, mandatory, body in ((1, "", "q", False, b""), (9, "ex.\u20ac", "r.k", True, b"x" * 992),
                                                                   (65535, "e" * 255, "", False, os.urandom(2500))):
                args = (channel, exchange, routing_key, mandatory, body, properties)
                self.assertEqual(client.publish_frames(*args), generic(*args), args[:4] + (len(body), properties))
                self.assertEqual(client.content_frames(channel, BASIC["publish"], (0, exchange, routing_key, mandatory, False), body,
                                                       properties), generic(*args))
        self.assertEqual(len(client._property_cache), 5)  # not the non-empty table, not the bool
        self.assertRaises(ValueError, client.publish_frames, 1, "e" * 256, "", False, b"", {})
        # One dict changed in place between publishes: the shortcut for the last properties encoded keeps a copy.
        properties = message_properties(1)
        for change in ({}, {"delivery_mode": 2}, {"headers": {"x": 1}}, {"headers": {}}, {"priority": 0}):
            properties.update(change)
            args = (3, "ex", "rk", True, b"b", properties)
            self.assertEqual(client.publish_frames(*args), generic(*args), change)
        properties["headers"]["y"] = 2  # its table changed in place
        self.assertEqual(client.publish_frames(*args), generic(*args))

    def test_regenerating_gives_the_same_file(self):
        if importlib.util.find_spec("pamqp") is None:
            raise unittest.SkipTest("pamqp is not installed; it is only needed to regenerate the spec")
        tool_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "make_amqp_spec.py")
        loader = importlib.util.spec_from_file_location("make_amqp_spec", tool_path)
        tool = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(tool)
        with open(resource_path(amqp.SPEC_PATH), "rb") as f:
            committed = f.read()
        self.assertTrue(tool.render().encode("utf-8") == committed,
                        "res/amqp/amqp0-9-1.rabbitmq.xml is stale: run tools/make_amqp_spec.py")


class RabbitConnectionTest(unittest.TestCase):
    """What only the txamqp implementation has: channels, TCP, heartbeats, login, TLS."""

    def setUp(self):
        self.address = BrokerAddress.from_url(RABBIT_URL)

    @defer.inlineCallbacks
    def open(self, address=None):
        conn = yield connect(address or self.address)
        self.addCleanup(conn.close)
        return conn

    def unique_name(self, prefix="t"):
        return BrokerTestMixin.unique_name(self, prefix)

    def proxy(self, *tls_files):
        proxy = TcpProxy(None, *tls_files)
        self.addCleanup(proxy.stop)
        return proxy

    def url(self, scheme, port, query=""):
        a = self.address
        return "%s://%s:%s@127.0.0.1:%d/%s%s" % (scheme, a.username, a.password, port, a.vhost.replace("/", "%2F"), query)

    @defer.inlineCallbacks
    def test_publisher_confirms(self):
        conn = yield self.open()
        queue = yield conn.queue_declare(self.unique_name(), exclusive=True)
        confirms = [conn.publish("", queue, b"%d" % i) for i in range(500)]
        self.assertFalse(all(d.called for d in confirms))  # they wait for the broker's acks
        yield defer.gatherResults(confirms)
        self.assertEqual(conn._pipeline.pending.waiting, {})
        self.assertEqual((yield conn.queue_purge(queue)), 500)

    @defer.inlineCallbacks
    def test_confirms_off(self):
        conn = yield self.open(BrokerAddress.from_url(self.url("amqp", 5672, "?confirms=0")))
        queue = yield conn.queue_declare(self.unique_name(), exclusive=True)
        yield conn.publish("", queue, b"first")  # opens the channel
        published = conn.publish("", queue, b"second")
        self.assertTrue(published.called)
        self.assertIsNone(conn._pipeline.pending)
        yield published

    @defer.inlineCallbacks
    def test_tcp_nodelay_and_heartbeat(self):
        conn = yield self.open()
        self.assertTrue(conn._state.client.transport.getTcpNoDelay())
        self.assertEqual(conn._state.client.heartbeat, 30)
        self.assertNotIn(self.address.password, conn.description)

    @defer.inlineCallbacks
    def test_channels_are_reused(self):
        conn = yield self.open()
        queue = yield conn.queue_declare(self.unique_name(), exclusive=True)
        for i in range(20):
            yield conn.queue_bind(queue, "amq.topic", "k%d" % i)
            yield conn.publish("amq.topic", "k%d" % i, b"x")
        self.assertEqual(sorted(conn._state.client.channels), [0, 1])
        consumers = yield defer.gatherResults([conn.consume(queue, Collector()) for _ in range(3)])
        self.assertEqual(len(conn._state.client.channels), 5)
        yield defer.gatherResults([c.cancel() for c in consumers])
        self.assertEqual(sorted(conn._state.client.channels), [0, 1])

    @defer.inlineCallbacks
    def test_publish_to_missing_exchange_does_not_break_later_calls(self):
        conn = yield self.open()
        queue = yield conn.queue_declare(self.unique_name(), exclusive=True)
        # With publisher confirms (the default) the publish itself reports the refusal.
        yield self.assertFailure(conn.publish(self.unique_name("nonexistent"), "k", b"lost"), NotFound)
        self.assertEqual((yield conn.queue_declare(queue, passive=True)), queue)
        yield conn.queue_purge(queue)
        collector = Collector()
        yield conn.consume(queue, collector)
        yield conn.publish("", queue, b"delivered")
        yield collector.wait(1)

    @defer.inlineCallbacks
    def test_connection_loss_fails_pending_calls(self):
        # reconnect_timeout=0: calls do not wait for the reconnect (test_reconnect covers waiting).
        conn = yield self.open(BrokerAddress.from_url(self.url("amqp", self.address.port, "?reconnect_timeout=0")))
        pending = conn.queue_declare(self.unique_name(), exclusive=True)
        conn._state.client.transport.abortConnection()
        yield self.assertFailure(pending, ConnectionLost)
        yield self.assertFailure(conn.publish("", "q", b"x"), ConnectionLost)
        yield conn.close()

    @defer.inlineCallbacks
    def test_dead_peer_noticed_by_heartbeat(self):
        proxy = self.proxy()
        conn = yield self.open(BrokerAddress.from_url(self.url("amqp", proxy.port, "?heartbeat=1&reconnect_timeout=0")))
        started = reactor.seconds()
        proxy.silent = True
        pending = conn.queue_declare(self.unique_name(), exclusive=True)
        yield self.assertFailure(pending, ConnectionLost)
        self.assertLess(reactor.seconds() - started, 5)

    @defer.inlineCallbacks
    def test_login_refused(self):
        secret = "wrong-%s" % self.unique_name()
        bad = BrokerAddress.from_url(self.url("amqp", self.address.port).replace(":%s@" % self.address.password, ":%s@" % secret))
        error = yield self.assertFailure(connect(bad), BrokerError)
        self.assertIn("403", str(error))
        self.assertNotIn(secret, str(error))

    @defer.inlineCallbacks
    def test_unknown_vhost(self):
        address = BrokerAddress.from_url(self.url("amqp", self.address.port).rsplit("/", 1)[0] + "/" + self.unique_name())
        error = yield self.assertFailure(connect(address), BrokerError)
        self.assertIn("530", str(error))

    @defer.inlineCallbacks
    def test_nothing_listening(self):
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        error = yield self.assertFailure(connect(BrokerAddress.from_url("amqp://127.0.0.1:%d/" % number)), ConnectionLost)
        self.assertIn("127.0.0.1:%d" % number, str(error))

    def certificates(self):
        directory = self.mktemp()
        os.mkdir(directory)
        return make_certificates(directory)

    @defer.inlineCallbacks
    def test_tls_with_verification(self):
        paths = self.certificates()
        proxy = self.proxy(paths["server_cert"], paths["server_key"])
        address = BrokerAddress.from_url(self.url("amqps", proxy.port, "?cafile=%s&server_name=localhost" % paths["ca"]))
        conn = yield self.open(address)
        self.assertTrue(conn._state.client.transport.getTcpNoDelay())
        queue = yield conn.queue_declare(self.unique_name(), exclusive=True)
        collector = Collector()
        yield conn.consume(queue, collector)
        body = os.urandom(200000)
        yield conn.publish("", queue, body)
        (delivery,) = yield collector.wait(1)
        self.assertTrue(delivery.body == body)
        yield conn.close()

    @defer.inlineCallbacks
    def test_tls_untrusted_server(self):
        paths = self.certificates()
        other_ca = self.certificates()["ca"]
        proxy = self.proxy(paths["server_cert"], paths["server_key"])
        address = BrokerAddress.from_url(self.url("amqps", proxy.port, "?cafile=%s&server_name=localhost" % other_ca))
        error = yield self.assertFailure(connect(address), ConnectionLost)
        self.assertIn("certificate verify failed", str(error))

    @defer.inlineCallbacks
    def test_tls_wrong_hostname(self):
        paths = self.certificates()
        proxy = self.proxy(paths["server_cert"], paths["server_key"])
        address = BrokerAddress.from_url(self.url("amqps", proxy.port, "?cafile=%s&server_name=elsewhere" % paths["ca"]))
        error = yield self.assertFailure(connect(address), ConnectionLost)
        self.assertIn("TLS", str(error))
