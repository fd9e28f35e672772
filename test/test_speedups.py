"""The compiled hot loops (ion/core/object/_speedups.c) against their Python versions: the same answers."""

import hashlib

import msgpack
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from ion.core.messaging import envelope
from ion.core.object import codec, object_utils, speedups
from ion.core.object.codec import CodecError, decode_content, encode_content
from ion.core.object.gpb.net.ooici.core.container.container_pb2 import Structure
from ion.core.object.gpb.net.ooici.core.message.ion_message_pb2 import IonMsg
from ion.core.object.gpb.net.ooici.core.type.type_pb2 import GPBType
from test import test_gpb_codec
from ion.core.object.gpb.net.ooici.services.dm.event_pb2 import ResourceLifecycleEventMessage
from test.test_gpb_codec import element, event_structure, fixed_event

NOT_BUILT = None if speedups.COMPILED else "_ioncore_speedups was not built (no C compiler or OpenSSL headers)"


def packed_event_structure():
    """event_structure() laid out as pack() does: each element after those it links to (the head first)."""
    structure = event_structure()
    event, payload = structure.items
    del structure.items[:]
    structure.items.extend([payload, event])
    return structure


EVENT = packed_event_structure().SerializeToString()
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plans():
    """The codec's link plans once every type of the event is known to it (object id -> direct_link_fields)."""
    decode_content(EVENT, codec.ION_R1_GPB)
    return codec._link_plans


def upb_rows(data, link_plans):
    """What canonical_elements must give for `data`, read through upb and hashlib."""
    rows = []
    for element in codec._elements(data):
        key, object_id, version, isleaf, value, _, _ = element
        type_bytes = GPBType(object_id=object_id, version=version).SerializeToString()
        key_ok = hashlib.sha1(hashlib.sha1(value).digest() + type_bytes).digest() == key
        links = None
        if version == 1 and link_plans.get(object_id) is not None:
            try:
                message = object_utils.get_gpb_class_from_type_id(object_id).FromString(value)
            except DecodeError:
                links = NOT_PARSED  # the codec stops at the parse: what the links are does not matter
            else:
                links = tuple((link.key, link.type.object_id, link.type.version, link.isleaf)
                              for link in object_utils.iter_links(message))
        rows.append((key, object_id, version, isleaf, value, key_ok, links))
    return rows


class _NotParsed:
    def __eq__(self, other):
        return True


NOT_PARSED = _NotParsed()


def outcome(data):
    """decode_content's result as something comparable: the content packed again, or the error's text."""
    try:
        result = decode_content(data, codec.ION_R1_GPB)
    except CodecError as e:
        return "error", str(e)
    return "decoded", encode_content(result)[0]


@st.composite
def mutated(draw, base=EVENT):
    """`base` with a few bytes replaced, inserted or cut off: mostly invalid, sometimes still canonical."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(min_size=1, max_size=3))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))):]
    return bytes(data)


@st.composite
def rekeyed(draw):
    """The event with one element's value changed and its key made to match again: the link checks are reached."""
    structure = packed_event_structure()
    element = draw(st.sampled_from([structure.head, *structure.items]))
    element.value = draw(mutated(element.value))
    type_bytes = element.type.SerializeToString()
    element.key = hashlib.sha1(hashlib.sha1(element.value).digest() + type_bytes).digest()
    return structure.SerializeToString()


class TypeKeyTest(unittest.TestCase):
    skip = NOT_BUILT

    @SETTINGS
    @given(st.binary(max_size=300), st.binary(max_size=12))
    def test_same_as_hashlib(self, value, type_bytes):
        self.assertEqual(speedups.type_key(value, type_bytes), speedups.python_type_key(value, type_bytes))

    def test_takes_bytes_like_values(self):
        expected = speedups.python_type_key(b"value", b"\x08\x0b\x10\x01")
        self.assertEqual(speedups.type_key(bytearray(b"value"), memoryview(b"\x08\x0b\x10\x01")), expected)

    def test_refuses_what_is_not_bytes(self):
        self.assertRaises(TypeError, speedups.type_key, "text", b"")
        self.assertRaises(TypeError, speedups.type_key, b"value")


class CanonicalElementsTest(unittest.TestCase):
    skip = NOT_BUILT

    def test_reads_what_pack_writes(self):
        content, _ = encode_content(fixed_event())
        rows, verified = speedups.canonical_elements(content, plans())
        self.assertEqual(rows, upb_rows(content, plans()))
        self.assertTrue(all(row[5] for row in rows))
        self.assertEqual([len(row[6]) for row in rows], [1, 0, 1])  # IonMsg -> EventMessage, payload, -> payload
        self.assertIs(verified, True)

    def test_links_not_verified_when_any_check_fails(self):
        self.assertIs(speedups.canonical_elements(EVENT, plans())[1], True)
        unlinked = element(ResourceLifecycleEventMessage(state=1), 2323, True)

        def variant(change):
            structure = packed_event_structure()
            change(structure)
            return structure.SerializeToString()

        cases = {
            "no such target": variant(lambda s: setattr(s.items[0], "key", b"\x00" * 20)),
            "a leaf with links": variant(lambda s: setattr(s.items[1], "isleaf", True)),
            "an element nothing links to": variant(lambda s: s.items.add().CopyFrom(unlinked)),
            "a key twice": variant(lambda s: s.items.add().CopyFrom(s.items[0])),
            "laid out after its parent": event_structure().SerializeToString(),  # the payload after the EventMessage
        }
        for name, data in cases.items():
            rows, verified = speedups.canonical_elements(data, plans())
            self.assertIs(verified, False, name)
        self.assertIs(speedups.canonical_elements(EVENT, {})[1], False)  # links not read

    def test_links_left_to_upb_for_types_without_a_plan(self):
        rows, _ = speedups.canonical_elements(EVENT, {})
        self.assertEqual([row[6] for row in rows], [None, None, None])
        self.assertEqual([row[:6] for row in rows], [row[:6] for row in upb_rows(EVENT, {})])

    def test_links_upb_might_read_otherwise_left_to_upb(self):
        structure = event_structure()
        head = structure.head
        tag = bytes((IonMsg.DESCRIPTOR.fields_by_name["message_object"].number << 3 | 2,))
        link = IonMsg.FromString(head.value).message_object.SerializeToString()
        without = head.value[:-len(link) - 2]
        self.assertEqual(head.value, without + tag + bytes((len(link),)) + link)
        twice = head.value + tag + bytes((len(link),)) + link  # not repeated: upb merges the two
        unknown_in_link = without + tag + bytes((len(link) + 2,)) + link + b"\x20\x01"  # CASRef field 4
        wrong_wire_type = without + bytes((tag[0] & ~7,)) + b"\x01"  # message_object as a varint
        for value in (twice, unknown_in_link, wrong_wire_type, head.value + b"\x13"):  # 0x13: a group
            head.value = value
            rows, verified = speedups.canonical_elements(structure.SerializeToString(), plans())
            self.assertIsNone(rows[0][6], value)
            self.assertIs(verified, False)

    def test_flags_a_wrong_key_without_raising(self):
        structure = event_structure()
        structure.items[0].key = b"\x00" * 20
        rows, _ = speedups.canonical_elements(structure.SerializeToString(), plans())
        self.assertEqual([row[5] for row in rows], [True, False, True])

    def test_other_layouts_left_to_upb(self):
        structure = event_structure()
        head_last = Structure(items=structure.items).SerializePartialToString() + Structure(head=structure.head).SerializeToString()
        unknown_field = EVENT + b"\x18\x01"  # Structure field 3
        big_isleaf = EVENT.replace(b"\x18\x01\x22", b"\x18\x02\x22", 1)  # an element's isleaf, then its value
        strided = memoryview(EVENT + EVENT)[::2]  # not contiguous
        for data in (b"", head_last, unknown_field, big_isleaf, EVENT[:-1], strided):
            self.assertIsNone(speedups.canonical_elements(data, plans()), data)
            self.assertIsNone(speedups.python_canonical_elements(data, plans()))

    @SETTINGS
    @given(st.one_of(mutated(), rekeyed()))
    def test_same_rows_as_upb_whenever_it_answers(self, data):
        read = speedups.canonical_elements(data, plans())
        if read is not None:
            rows, expected = read[0], upb_rows(data, plans())
            self.assertEqual([row[:6] for row in rows], [row[:6] for row in expected])
            for row, upb in zip(rows, expected):  # links: upb's, or None (left to upb)
                if row[6] is not None:
                    self.assertEqual(row[6], upb[6])

    @SETTINGS
    @given(st.one_of(mutated(), rekeyed()))
    def test_codec_gives_the_same_outcome_either_way(self, data):
        compiled = outcome(data)
        self.patch(codec, "canonical_elements", speedups.python_canonical_elements)
        self.assertEqual(outcome(data), compiled)


class PythonMalformedContentTest(test_gpb_codec.MalformedContentTest):
    """The codec's hostile-input cases with the Structure read through upb alone (the compiled reader off)."""

    def setUp(self):
        self.patch(codec, "canonical_elements", speedups.python_canonical_elements)
        self.patch(codec, "type_key", speedups.python_type_key)


class PythonWireFormatTest(test_gpb_codec.WireFormatTest):
    """The codec's wire cases with the Python versions only."""

    def setUp(self):
        self.patch(codec, "canonical_elements", speedups.python_canonical_elements)
        self.patch(codec, "type_key", speedups.python_type_key)


ELEMENT_PARTS = st.tuples(st.tuples(st.binary(max_size=4), st.binary(max_size=300)), st.binary(max_size=21),
                          st.binary(max_size=300))


class StructureFromPartsTest(unittest.TestCase):
    skip = NOT_BUILT

    @SETTINGS
    @given(st.lists(ELEMENT_PARTS, min_size=1, max_size=4))
    def test_same_as_python(self, elements):
        self.assertEqual(speedups.structure_from_parts(*elements), speedups.python_structure_from_parts(*elements))

    def test_refuses_other_arguments(self):
        parts = ((b"", b""), b"key", b"value")
        for bad in ([], ((b"",), b"k", b"v"), ((b"", b""), "key", b"v"), ((b"", b""), b"k")):
            self.assertRaises(TypeError, speedups.structure_from_parts, parts, bad)
        self.assertRaises(TypeError, speedups.structure_from_parts)


HEADER_VALUES = st.one_of(st.binary(max_size=8), st.text(max_size=8), st.integers(-2**63, 2**64 - 1), st.none(),
                          st.booleans(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2))


class TextHeadersTest(unittest.TestCase):
    skip = NOT_BUILT

    def test_a_received_map(self):
        body = envelope.encode("sender", "receiver", "op", "text", {"quiet": True, "conv-seq": 3}).body
        raw = msgpack.unpackb(body, raw=True)
        raw.pop(b"content")
        names = {**envelope._HEADER_NAMES, b"quiet": "quiet"}
        headers = speedups.text_headers(raw, names)
        self.assertEqual(headers, speedups.python_text_headers(raw, names))
        self.assertIs(headers["quiet"], True)
        self.assertEqual((headers["op"], headers["conv-seq"]), ("op", 3))

    def test_unknown_name_or_other_value_left_to_the_caller(self):
        names = {b"op": "op"}
        for raw in ({b"other": b"x"}, {b"op": b"\xff"}, {b"op": [1]}, {b"op": {b"a": 1}}):
            self.assertIsNone(speedups.text_headers(raw, names), raw)
            self.assertIsNone(speedups.python_text_headers(raw, names), raw)

    def test_refuses_what_is_not_a_dict(self):
        self.assertRaises(TypeError, speedups.text_headers, [], {})
        self.assertRaises(TypeError, speedups.text_headers, {})

    @SETTINGS
    @given(st.dictionaries(st.sampled_from([b"op", b"ts", b"sender", b"unknown", 1]), HEADER_VALUES, max_size=4))
    def test_same_as_python(self, raw):
        names = {b"op": "op", b"ts": "ts", b"sender": "sender"}
        # msgpack gives text as bytes (raw=True): str values stand for other objects here
        compiled, python = speedups.text_headers(raw, names), speedups.python_text_headers(raw, names)
        self.assertEqual(compiled, python)
        if compiled is not None:
            self.assertEqual([type(v) for v in compiled.values()], [type(v) for v in python.values()])


class DecodeWithoutSpeedupsTest(unittest.TestCase):
    """envelope.decode gives the same message with the Python versions (as on a machine where none was built)."""

    def test_same_message(self):
        body = envelope.encode("sender", "receiver", "op", fixed_event(), {"quiet": False}).body
        compiled = envelope.decode(body)
        self.patch(envelope, "text_headers", speedups.python_text_headers)
        self.patch(codec, "canonical_elements", speedups.python_canonical_elements)
        self.patch(codec, "type_key", speedups.python_type_key)
        python = envelope.decode(body)
        self.assertEqual({k: v for k, v in compiled.items() if k != "content"},
                         {k: v for k, v in python.items() if k != "content"})
        self.assertEqual(encode_content(compiled["content"]), encode_content(python["content"]))
