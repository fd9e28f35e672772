"""
Events on the wire, checked by an independent client (RabbitMQ only).

pika stands in for an R1 peer.  It reads an event the project published and
decodes it without the project's code: msgpack for the header map, and a
protobuf wire decoder written here for the Structure (R1 §1.8, §4.6, §5.1,
§6.4).  Then it hand-builds an R1 event with the same small encoder and
publishes it to a project subscriber.

pika's BlockingConnection is only ever used inside deferToThread, one call at
a time, so the reactor never blocks.
"""

import hashlib
import struct
import time
import uuid

import msgpack
import pika
from pika.exceptions import ChannelClosedByBroker
from twisted.internet import defer, reactor, task, threads

from ion.core.process.process import Process
from ion.services.dm.distribution.events import (
    InfoLoggingEventPublisher,
    ResourceLifecycleEventSubscriber,
    get_events_exchange_point,
)
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory
from ion.test.iontest import IonTestCase
from test.brokers import RABBIT_URL, BrokerTestMixin

ION_MSG, EVENT_MESSAGE, RESOURCE_LIFECYCLE_EVENT, LOGGING_EVENT = 11, 2322, 2323, 2326


# -- a protobuf wire codec, just enough for the R1 core messages ----------------


def varint(value):
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def encode(*fields):
    """Protobuf bytes of (field number, value) pairs in order; None values are left out."""
    out = bytearray()
    for number, value in fields:
        if value is None:
            continue
        if isinstance(value, (bool, int)):
            out += varint(number << 3 | 0) + varint(int(value))
        elif isinstance(value, float):
            out += varint(number << 3 | 1) + struct.pack("<d", value)
        else:
            data = value.encode("utf-8") if isinstance(value, str) else value
            out += varint(number << 3 | 2) + varint(len(data)) + data
    return bytes(out)


def read_varint(data, pos):
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def decode(data):
    """{field number: [values]}: ints for varints, floats for 64-bit (all doubles here), bytes otherwise."""
    fields, pos = {}, 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = read_varint(data, pos)
        elif wire_type == 1:
            (value,), pos = struct.unpack_from("<d", data, pos), pos + 8
        elif wire_type == 2:
            size, pos = read_varint(data, pos)
            value, pos = bytes(data[pos : pos + size]), pos + size
        else:
            raise ValueError("wire type %d not used by these messages" % wire_type)
        fields.setdefault(number, []).append(value)
    return fields


def one(fields, number, default=None):
    """The single value of a non-repeated field."""
    values = fields.get(number, [])
    assert len(values) <= 1, "field %d repeated" % number
    return values[0] if values else default


# GPBType: object_id=1, version=2.  CASRef: key=1, type=2, isleaf=3.
# StructureElement: key=1, type=2, isleaf=3, value=4.  Structure: head=1, items=2.


def gpb_type(object_id):
    return encode((1, object_id), (2, 1))


def element_key(value, type_bytes):
    return hashlib.sha1(hashlib.sha1(value).digest() + type_bytes).digest()


def element(object_id, value, isleaf):
    """(key, StructureElement bytes) for an object's serialized value."""
    key = element_key(value, gpb_type(object_id))
    return key, encode((1, key), (2, gpb_type(object_id)), (3, isleaf), (4, value))


def casref(key, object_id, isleaf):
    return encode((1, key), (2, gpb_type(object_id)), (3, isleaf))


def read_type(type_bytes):
    fields = decode(type_bytes)
    return one(fields, 1), one(fields, 2)


# -- the independent client ---------------------------------------------------------


class PikaPeer:
    """A pika BlockingConnection, driven from worker threads one call at a time."""

    def __init__(self, url=RABBIT_URL):
        self.url = url
        self.connection = self.channel = None

    def _in_thread(self, work, *args, **kwargs):
        return threads.deferToThread(work, *args, **kwargs)

    def connect(self):
        def connect():
            self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
            self.channel = self.connection.channel()

        return self._in_thread(connect)

    def close(self):
        def close():
            if self.connection is not None and self.connection.is_open:
                self.connection.close()

        return self._in_thread(close)

    def bind_own_queue(self, exchange, binding_key):
        """An exclusive queue of our own, bound to `exchange` (which must exist, as R1 declared it)."""

        def bind():
            self.channel.exchange_declare(exchange, passive=True)
            # Declaring again with R1's exact flags fails (406) unless they match.
            self.channel.exchange_declare(exchange, exchange_type="topic", durable=False, auto_delete=True)
            queue = self.channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            self.channel.queue_bind(queue, exchange, routing_key=binding_key)
            return queue

        return self._in_thread(bind)

    def delete_queue(self, queue):
        return self._in_thread(self.channel.queue_delete, queue)

    def receive(self, queue, timeout=10):
        """(method, properties, body) of the next message on `queue`."""

        def receive():
            for method, properties, body in self.channel.consume(queue, auto_ack=True, inactivity_timeout=timeout):
                break
            self.channel.cancel()
            if method is None:
                raise AssertionError("no message on %s within %ss" % (queue, timeout))
            return method, properties, body

        return self._in_thread(receive)

    def publish(self, exchange, routing_key, body, properties):
        return self._in_thread(self.channel.basic_publish, exchange, routing_key, body, properties, mandatory=True)

    def exists(self, kind, name):
        """Whether exchange or queue `name` is on the broker (a passive declare, on a channel of its own)."""

        def exists():
            channel = self.connection.channel()
            declare = channel.exchange_declare if kind == "exchange" else channel.queue_declare
            try:
                declare(name, passive=True)
            except ChannelClosedByBroker as e:
                if e.reply_code == 404:
                    return False
                raise
            channel.close()
            return True

        return self._in_thread(exists)


# -- the tests ----------------------------------------------------------------------


class R1InteropTest(BrokerTestMixin, IonTestCase):
    broker_url = RABBIT_URL

    @defer.inlineCallbacks
    def setUp(self):
        self.leftovers = []  # (kind, name) that must be gone from the broker after the test
        self.peer = PikaPeer()
        yield self.peer.connect()
        # Cleanups run last-in first-out: the container stops, then the peer, then the check.
        self.addCleanup(self._check_nothing_left)
        self.addCleanup(self.peer.close)
        sysname = self.unique_name("interop")
        yield self._start_container(sysname=sysname)
        self.addCleanup(self._stop_container)  # the check needs the container gone
        self.exchange = get_events_exchange_point()
        self.assertEqual(self.exchange, sysname + ".events.topic")
        self.leftovers.append(("exchange", self.exchange))
        self.proc = Process(spawnargs={"proc-name": "interop-tester"})
        yield self.proc.spawn()

    @defer.inlineCallbacks
    def _check_nothing_left(self):
        """Every exchange and queue the test made is gone (auto-delete takes a moment after a close)."""
        checker = PikaPeer()
        yield checker.connect()
        try:
            for kind, name in self.leftovers:
                deadline = time.monotonic() + 5
                while (yield checker.exists(kind, name)):
                    if time.monotonic() > deadline:
                        self.fail("%s %s is still on the broker" % (kind, name))
                    yield task.deferLater(reactor, 0.05, lambda: None)
        finally:
            yield checker.close()

    @defer.inlineCallbacks
    def test_r1_peer_reads_project_event(self):
        publisher = InfoLoggingEventPublisher(process=self.proc, origin="X")
        yield self.proc.register_life_cycle_object(publisher)  # declares the events exchange
        queue = yield self.peer.bind_own_queue(self.exchange, "3003.#")
        self.leftovers.append(("queue", queue))
        before = time.time()
        yield publisher.create_and_publish_event(name="TestEvent", description="d")
        method, properties, body = yield self.peer.receive(queue)
        yield self.peer.delete_queue(queue)

        self.assertEqual((method.exchange, method.routing_key), (self.exchange, "3003.X"))
        self.assertEqual(properties.content_type, "application/msgpack")
        self.assertEqual(properties.content_encoding, "binary")
        self.assertEqual(properties.delivery_mode, 1)
        self.assertFalse(properties.headers)

        headers = msgpack.unpackb(body, raw=True)
        # R1 (msgpack on Python 2) wrote every string as a msgpack raw: packing the
        # decoded map the same way must give the same bytes, so no bin or str8 types.
        self.assertEqual(msgpack.packb(headers, use_bin_type=False), body)
        content = headers.pop(b"content")
        ts = headers.pop(b"ts")
        self.assertTrue(ts.isdigit() and abs(int(ts) / 1000 - time.time()) < 60, ts)
        sender = self.proc.id.full.encode()
        expected = {
            b"sender": sender,
            b"reply-to": sender,
            b"receiver": b"3003.X",
            b"encoding": b"ION R1 GPB",
            b"language": b"ion1",
            b"format": b"raw",
            b"ontology": b"",
            b"user-id": b"ANONYMOUS",
            b"expiry": b"0",
            b"conv-id": b"",
            b"conv-seq": 1,
            b"protocol": b"",
            b"status": b"OK",
            b"performative": b"",
            b"op": None,
            b"sender-name": b"interop-tester",
        }
        self.assertEqual(headers, expected)

        # The Structure: head = IonMsg, items = EventMessage and LoggingEventMessage.
        structure = decode(content)
        elements = [decode(raw) for raw in structure[1] + structure.get(2, [])]
        self.assertEqual(len(structure[1]), 1)
        self.assertEqual(len(structure[2]), 2)
        by_key = {}
        for fields in elements:
            key, type_bytes, value = one(fields, 1), one(fields, 2), one(fields, 4, b"")
            self.assertEqual(read_type(type_bytes)[1], 1)
            self.assertEqual(key, element_key(value, type_bytes), "element key is not sha1(sha1(value) + type)")
            by_key[key] = fields
        head = elements[0]
        self.assertEqual(read_type(one(head, 2)), (ION_MSG, 1))
        self.assertEqual(one(head, 3), 0)

        ion_msg = decode(one(head, 4))
        identity = one(ion_msg, 2).decode()
        self.assertEqual(str(uuid.UUID(identity)).upper(), identity)
        self.assertNotIn(5, ion_msg)  # no response_code on a publish
        link = decode(one(ion_msg, 4))
        self.assertEqual(read_type(one(link, 2)), (EVENT_MESSAGE, 1))
        self.assertEqual(one(link, 3), 0)
        event_element = by_key[one(link, 1)]
        self.assertEqual(read_type(one(event_element, 2)), (EVENT_MESSAGE, 1))
        self.assertEqual(one(event_element, 3), 0)

        event = decode(one(event_element, 4))
        self.assertEqual(one(event, 2), b"TestEvent")
        self.assertEqual(one(event, 4), b"d")
        self.assertTrue(before <= one(event, 5) <= time.time())
        self.assertNotIn(6, event)  # the constructor's origin only routes; it is not a field
        payload_link = decode(one(event, 9))
        self.assertEqual(read_type(one(payload_link, 2)), (LOGGING_EVENT, 1))
        self.assertEqual(one(payload_link, 3), 1)
        payload_element = by_key[one(payload_link, 1)]
        self.assertEqual(read_type(one(payload_element, 2)), (LOGGING_EVENT, 1))
        self.assertEqual(one(payload_element, 3), 1)
        self.assertEqual(one(payload_element, 4, b""), b"")  # LoggingEventMessage has no fields

    @defer.inlineCallbacks
    def test_project_subscriber_reads_r1_event(self):
        received = defer.Deferred()

        def handler(data):
            # Read everything inside the handler, as R1 subscribers had to.
            content = data["content"]
            payload = content.additional_data
            received.callback(
                {
                    "headers": {k: v for k, v in data.items() if k != "content"},
                    "type": content.MessageType.object_id,
                    "identity": content.MessageIdentity,
                    "name": content.name,
                    "description": content.description,
                    "datetime": content.datetime,
                    "origin": content.origin,
                    "payload_type": payload._MessageTypeIdentifier._ID,
                    "state": payload.state,
                    "state_name": payload.State.lookup[payload.state],
                }
            )

        subscriber = yield SubscriberFactory(process=self.proc).build(
            handler=handler, subscriber_type=ResourceLifecycleEventSubscriber, origin="r1-origin"
        )
        self.leftovers.append(("queue", subscriber.queue))

        # An R1 event built by hand: IonMsg -> EventMessage -> ResourceLifecycleEventMessage.
        when = 1323456789.25
        identity = str(uuid.uuid4()).upper()
        payload_key, payload_element = element(RESOURCE_LIFECYCLE_EVENT, encode((1, 3)), isleaf=True)  # ACTIVE
        event_value = encode(
            (2, "resource activated"),
            (4, "from an R1 peer"),
            (5, when),
            (6, "r1-origin"),
            (9, casref(payload_key, RESOURCE_LIFECYCLE_EVENT, True)),
        )
        event_key, event_element = element(EVENT_MESSAGE, event_value, isleaf=False)
        ion_msg_value = encode((2, identity), (4, casref(event_key, EVENT_MESSAGE, False)))
        _, head = element(ION_MSG, ion_msg_value, isleaf=False)
        structure = encode((1, head), (2, event_element), (2, payload_element))

        r1_sender = "r1host_4242.7"
        message = {
            "sender": r1_sender,
            "receiver": "1001.r1-origin",
            "reply-to": r1_sender,
            "encoding": "ION R1 GPB",
            "language": "ion1",
            "format": "raw",
            "ontology": "",
            "user-id": "ANONYMOUS",
            "expiry": "0",
            "conv-id": "",
            "conv-seq": 1,
            "protocol": "",
            "status": "OK",
            "ts": str(int(time.time() * 1000)),
            "sender-name": "r1-resource-agent",
            "performative": "",
            "op": None,
            "content": structure,
        }
        body = msgpack.packb(message, use_bin_type=False)  # raws only, like msgpack on Python 2
        properties = pika.BasicProperties(
            content_type="application/msgpack", content_encoding="binary", headers={}, delivery_mode=1, priority=0
        )
        yield self.peer.publish(self.exchange, "1001.r1-origin", body, properties)

        got = yield received
        self.assertEqual(got["type"], EVENT_MESSAGE)
        self.assertEqual(got["identity"], identity)
        self.assertEqual(got["name"], "resource activated")
        self.assertEqual(got["description"], "from an R1 peer")
        self.assertEqual(got["datetime"], when)
        self.assertEqual(got["origin"], "r1-origin")
        self.assertEqual(got["payload_type"], RESOURCE_LIFECYCLE_EVENT)
        self.assertEqual((got["state"], got["state_name"]), (3, "ACTIVE"))
        headers = got["headers"]
        self.assertEqual(headers["sender"], r1_sender)
        self.assertEqual(headers["receiver"], "1001.r1-origin")
        self.assertEqual(headers["sender-name"], "r1-resource-agent")
        self.assertEqual(headers["encoding"], "ION R1 GPB")
        self.assertEqual(headers["conv-seq"], 1)
        self.assertIsNone(headers["op"])
