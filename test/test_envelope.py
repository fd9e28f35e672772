"""The envelope: (sender, recipient, op, content, headers) <-> (AMQP body, properties), R1-exact."""

from types import SimpleNamespace

from twisted.trial import unittest

from ion.core.messaging import envelope, ionmessage, serialization
from ion.core.messaging.message_client import MessageInstance, new_message_instance
from ion.core.messaging.messaging import Message
from ion.core.object.codec import ION_R1_GPB, CodecError, Packed, encode_content
from ion.core.object.object_utils import create_type_identifier

EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2322, version=1)


def event(name="an event"):
    instance = new_message_instance(EVENT_MESSAGE_TYPE)
    instance.name = name
    return instance


class EncodeTest(unittest.TestCase):
    def test_gpb_content(self):
        sealed = envelope.encode("me.1", "3003.origin", None, event(), {"sender-name": "me"})
        message = sealed.message
        self.assertEqual(message["encoding"], ION_R1_GPB)
        self.assertIsInstance(message["content"], bytes)
        self.assertEqual((message["sender"], message["receiver"], message["reply-to"]), ("me.1", "3003.origin", "me.1"))
        self.assertEqual(message["sender-name"], "me")
        self.assertIsNone(message["op"])
        self.assertEqual(sealed.routing_key, "3003.origin")
        self.assertEqual(sealed.body, envelope.pack_body(message))
        self.assertEqual(sealed.properties, envelope.message_properties(1))

    def test_plain_content_keeps_r1_default_encoding(self):
        sealed = envelope.encode("me.1", "you.2", "hello", {"n": 1})
        self.assertEqual(sealed.message["encoding"], "json")
        self.assertEqual(sealed.message["content"], {"n": 1})

    def test_persistent(self):
        self.assertEqual(envelope.encode("a", "b", "op", None, delivery_mode=2).properties["delivery_mode"], 2)

    def test_recipient_is_a_routing_key(self):
        self.assertEqual(envelope.encode("a", 42, "op", None).routing_key, "42")
        self.assertRaises(ValueError, envelope.encode, "a", "k" * 256, "op", None)

    def test_unpackable_content(self):
        self.assertRaises(envelope.WireFormatError, envelope.encode, "a", "b", "op", object())


class TemplateTest(unittest.TestCase):
    """envelope.Template: encode()'s bytes for many messages of one sender to one recipient."""

    def setUp(self):
        self.now = 1306000000.5
        self.patch(envelope.time, "time", lambda: self.now)

    def test_same_body_as_encode(self):
        content = Packed(encode_content(event())[0])
        for headers in ({"sender-name": "me"}, None, {"sender-name": "me", "user-id": 7, "expiry": 30}):
            template = envelope.Template("me.1", "3003.origin", None, headers)
            for n in range(3):
                self.now += n * 0.25
                self.assertEqual(template.body(content),
                                 envelope.encode("me.1", "3003.origin", None, content, headers).body, headers)

    def test_properties_and_delivery_mode(self):
        for mode in (1, 2):
            template = envelope.Template("a.1", "b", delivery_mode=mode)
            self.assertEqual(template.properties, envelope.message_properties(mode))

    def test_content_of_any_size(self):
        template = envelope.Template("a.1", "b", "op", encoding="binary")
        for size in (0, 31, 32, 255, 256, 65535, 65536, 100000):
            content = b"c" * size
            sealed = envelope.encode("a.1", "b", "op", content)
            sealed.message["encoding"] = "binary"
            self.assertEqual(template.body(content), envelope.pack_body(sealed.message), size)

    def test_the_callers_ts_stays(self):
        headers = {"sender-name": "me", "ts": "42"}
        template = envelope.Template("me.1", "you", None, headers)
        content = Packed(encode_content(event())[0])
        self.assertEqual(template.body(content), envelope.encode("me.1", "you", None, content, headers).body)
        self.assertEqual(envelope.decode(template.body(content))["ts"], "42")

    def test_recipient_is_a_routing_key(self):
        self.assertEqual(envelope.Template("a", 42).recipient, "42")
        self.assertRaises(ValueError, envelope.Template, "a", "k" * 256)


class DecodeTest(unittest.TestCase):
    def test_round_trip_of_gpb_content(self):
        sealed = envelope.encode("me.1", "you.2", "keep", event("round trip"))
        data = envelope.decode(sealed.body)
        self.assertIsInstance(data["content"], MessageInstance)
        self.assertEqual(data["content"].name, "round trip")
        self.assertEqual({k: v for k, v in data.items() if k != "content"},
                         {k: v for k, v in sealed.message.items() if k != "content"})

    def test_raw_leaves_gpb_content_as_bytes(self):
        sealed = envelope.encode("me.1", "you.2", "keep", event())
        self.assertEqual(envelope.decode(sealed.body, raw=True)["content"], sealed.message["content"])

    def test_broken_gpb_content(self):
        body = envelope.encode("x", "y", "op", b"\x0a\x05forged", {"encoding": ION_R1_GPB}).body
        self.assertRaises(CodecError, envelope.decode, body)
        self.assertEqual(envelope.decode(body, raw=True)["content"], b"\x0a\x05forged")

    def test_not_msgpack(self):
        self.assertRaises(envelope.WireFormatError, envelope.decode, b"\xc1")

    def test_text_and_bytes_as_r1_sent_them(self):
        """Raws that are UTF-8 become str (also in lists and maps), other raws stay their bytes; bin too."""
        import msgpack

        raw = {
            b"sender": "s\u00e9".encode(), b"junk": b"\xff\xfeok", b"list": [b"a", b"\xc3"],
            b"map": {b"k\xff": b"v"}, b"seq": 3, b"content": b"\xff\x00text",
        }
        data = envelope.unpack_body(msgpack.packb(raw, use_bin_type=False))
        self.assertEqual(data, {"sender": "s\u00e9", "junk": b"\xff\xfeok", "list": ["a", b"\xc3"],
                                "map": {b"k\xff": "v"}, "seq": 3, "content": b"\xff\x00text"})
        binary = msgpack.packb({"encoding": ION_R1_GPB, "b": b"utf8", "content": b"\xff\x00"}, use_bin_type=True)
        self.assertEqual(envelope.unpack_body(binary), {"encoding": ION_R1_GPB, "b": "utf8", "content": b"\xff\x00"})
        # GPB content that happens to be valid UTF-8 stays bytes.
        gpb = msgpack.packb({b"encoding": ION_R1_GPB.encode(), b"content": b"plain"}, use_bin_type=False)
        self.assertEqual(envelope.unpack_body(gpb)["content"], b"plain")
        self.assertRaises(envelope.WireFormatError, envelope.unpack_body,
                          msgpack.packb({b"\xff": 1}, use_bin_type=False))


class MessageTest(unittest.TestCase):
    def delivery(self, body):
        return SimpleNamespace(body=body, properties={}, delivery_tag=1, routing_key="k")

    def test_payload_is_decoded_once(self):
        msg = Message(self.delivery(envelope.encode("a", "b", "op", event("once")).body))
        self.assertIs(msg.payload, msg.payload)
        self.assertEqual(msg.payload["content"].name, "once")

    def test_raw_payload(self):
        sealed = envelope.encode("a", "b", "op", event())
        self.assertEqual(Message(self.delivery(sealed.body), raw=True).payload["content"], sealed.message["content"])


class R1NamesTest(unittest.TestCase):
    def test_r1_modules_give_the_envelope_functions(self):
        for name in ("pack_body", "unpack_body", "message_properties", "WireFormatError", "CONTENT_TYPE"):
            self.assertIs(getattr(serialization, name), getattr(envelope, name))
        self.assertIs(ionmessage.build_message, envelope.build_message)
