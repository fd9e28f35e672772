"""The R1 wire format: msgpack header map without bin/str8 types, raw strings read back."""

import msgpack
from twisted.trial import unittest

from ion.core.messaging.ionmessage import build_message
from ion.core.messaging.serialization import (
    WireFormatError,
    message_properties,
    pack_body,
    unpack_body,
)


class PackTest(unittest.TestCase):
    def test_no_bin_or_str8_types(self):
        # 40 bytes of text: str8 (0xd9) in modern msgpack, raw16 (0xda) in R1's.
        body = pack_body({"k": "x" * 40, "content": b"\x00" * 40})
        self.assertNotIn(b"\xd9", body)
        self.assertNotIn(b"\xc4", body)  # bin8
        self.assertIn(b"\xda\x00\x28" + b"x" * 40, body)

    def test_round_trip(self):
        message = build_message("me.1", "you.2", "hello", {"name": "ion", "n": [1, 2.5, None, True]})
        back = unpack_body(pack_body(message))
        self.assertEqual(back, message)

    def test_gpb_content_stays_bytes(self):
        content = "€".encode()  # valid UTF-8, still bytes for GPB content
        back = unpack_body(pack_body({"encoding": "ION R1 GPB", "content": content}))
        self.assertEqual(back["content"], content)
        self.assertIsInstance(back["content"], bytes)

    def test_non_utf8_content_stays_bytes(self):
        back = unpack_body(pack_body({"encoding": "json", "content": b"\xff\xfe"}))
        self.assertEqual(back["content"], b"\xff\xfe")

    def test_reads_r1_body(self):
        # What msgpack 0.1 on Python 2 produced: every string a raw.
        r1 = msgpack.packb(
            {b"sender": b"host_1.2", b"op": b"ping", b"conv-seq": 1, b"content": b"get stuck in"}, use_bin_type=False
        )
        self.assertEqual(
            unpack_body(r1), {"sender": "host_1.2", "op": "ping", "conv-seq": 1, "content": "get stuck in"}
        )

    def test_properties(self):
        self.assertEqual(
            message_properties(),
            {
                "content_type": "application/msgpack",
                "content_encoding": "binary",
                "headers": {},
                "delivery_mode": 1,
                "priority": 0,
            },
        )


class MalformedTest(unittest.TestCase):
    def assertRefused(self, body, reason):
        error = self.assertRaises(WireFormatError, unpack_body, body)
        self.assertIn(reason, str(error))

    def test_not_msgpack(self):
        self.assertRefused(b"\xc1", "not msgpack")

    def test_truncated(self):
        self.assertRefused(pack_body({"a": "b" * 100})[:-5], "not msgpack")

    def test_not_a_map(self):
        self.assertRefused(msgpack.packb([1, 2]), "not a map")

    def test_empty(self):
        self.assertRefused(b"", "not msgpack")

    def test_not_bytes(self):
        self.assertRefused("text", "not bytes")

    def test_unpackable(self):
        self.assertRaises(WireFormatError, pack_body, {"content": object()})


class BuildMessageTest(unittest.TestCase):
    def test_defaults(self):
        m = build_message("a.1", "b.2", "op1", "c")
        for key, value in {
            "sender": "a.1",
            "receiver": "b.2",
            "reply-to": "a.1",
            "encoding": "json",
            "language": "ion1",
            "format": "raw",
            "ontology": "",
            "user-id": "ANONYMOUS",
            "expiry": "0",
            "conv-id": "",
            "conv-seq": 1,
            "protocol": "",
            "status": "OK",
            "performative": "",
            "op": "op1",
            "content": "c",
        }.items():
            self.assertEqual(m[key], value, key)
        self.assertTrue(m["ts"].isdigit())

    def test_headers_override_defaults_but_not_op_or_content(self):
        m = build_message(
            "a.1", "b.2", "real", "c", {"reply-to": "x", "op": "fake", "content": "fake", "performative": "request"}
        )
        self.assertEqual((m["reply-to"], m["op"], m["content"], m["performative"]), ("x", "real", "c", "request"))
