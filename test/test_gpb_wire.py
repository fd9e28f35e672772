"""
wire.py writes Structures, StructureElements and CASRef fields directly: its
bytes must be upb's, for odd values too (empty, long, multi-byte varints).
"""

from twisted.trial import unittest

from ion.core.object import codec, speedups, wire
from ion.core.object.gpb.net.ooici.core.container.container_pb2 import Structure, StructureElement
from ion.core.object.gpb.net.ooici.core.link.link_pb2 import CASRef
from ion.core.object.gpb.net.ooici.core.type.type_pb2 import GPBType
from ion.core.object.object_utils import create_type_identifier
from ion.core.object.repository import Element
from ion.core.object.gpb.net.ooici.services.dm.event_pb2 import EventMessage

KEY = bytes(range(20))
VALUES = (b"", b"\x00", b"v" * 127, b"w" * 128, b"x" * 300, b"y" * 16384, b"z" * 70000)
TYPES = (GPBType(object_id=9, version=1), GPBType(object_id=2322, version=1), GPBType(object_id=-3, version=1),
         GPBType(object_id=2 ** 31 - 1, version=2 ** 20))


def upb_element(key, gpb_type, isleaf, value):
    return StructureElement(key=key, type=gpb_type, isleaf=isleaf, value=value)


class VarintTest(unittest.TestCase):
    def test_as_upb(self):
        for n in (0, 1, 127, 128, 255, 300, 16383, 16384, 2 ** 21, 2 ** 28 + 5, 2 ** 31 - 1):
            self.assertEqual(b"\x08" + wire.varint(n), GPBType(object_id=n).SerializePartialToString(), n)
        self.assertEqual(wire.varint(2 ** 35), b"\x80\x80\x80\x80\x80\x01")
        self.assertEqual(wire.tag(16), b"\x82\x01")


class ElementTest(unittest.TestCase):
    def test_elements_as_upb(self):
        for gpb_type in TYPES:
            for value in VALUES:
                for key in (KEY, b"", b"k" * 200):
                    for isleaf in (True, False):
                        expected = upb_element(key, gpb_type, isleaf, value).SerializeToString()
                        got = wire.element(key, gpb_type.SerializeToString(), isleaf, value)
                        self.assertEqual(got, expected, (gpb_type, len(value), len(key), isleaf))

    def test_parts_make_the_same_element(self):
        for gpb_type in TYPES:
            type_bytes = gpb_type.SerializeToString()
            for isleaf in (True, False):
                before, middle = wire.element_parts(type_bytes, isleaf)
                for value in VALUES:
                    self.assertEqual(before + KEY + middle + wire.varint(len(value)) + value,
                                     wire.element(KEY, type_bytes, isleaf, value))

    def test_link_parts_as_upb(self):
        for gpb_type in TYPES:
            for isleaf in (True, False):
                before, after = wire.link_parts(EventMessage.DESCRIPTOR.fields_by_name["additional_data"].number,
                                                gpb_type.SerializeToString(), isleaf)
                event = EventMessage()
                event.additional_data.CopyFrom(CASRef(key=KEY, type=gpb_type, isleaf=isleaf))
                self.assertEqual(before + KEY + after, event.SerializeToString())
        before, after = wire.link_parts(300, b"\x08\x01\x10\x01", True)
        self.assertEqual(before[:2], b"\xe2\x12")  # field 300: a two-byte tag

    def test_tag_as_upb(self):
        for value in VALUES:
            text = value.decode()
            expected = EventMessage(name=text).SerializeToString()
            self.assertEqual(wire.tag(2) + wire.varint(len(value)) + value, expected)


class StructureTest(unittest.TestCase):
    def elements(self, count):
        type_id = create_type_identifier(2322)
        return [Element(bytes([n]) * 20, type_id, bool(n % 2), VALUES[n % len(VALUES)]) for n in range(count)]

    def upb_structure(self, head, items):
        structure = Structure()
        for target, element in ((structure.head, head), *((structure.items.add(), e) for e in items)):
            target.CopyFrom(upb_element(element.key, element.type.to_gpb(), element.isleaf, element.value))
        return structure.SerializeToString()

    def test_pack_elements_as_upb(self):
        for count in (1, 2, 3, 8):
            head, *items = self.elements(count)
            self.assertEqual(codec.pack_elements(head, items), self.upb_structure(head, items), count)

    def test_structure_from_parts_as_upb(self):
        """The event plan's way: each element as (element_parts, key, value), the Structure in one join."""
        for count in (1, 2, 3, 8):
            head, *items = self.elements(count)
            given = [(wire.element_parts(e.type.serialized, e.isleaf), e.key, e.value) for e in (head, *items)]
            self.assertEqual(speedups.structure_from_parts(*given), self.upb_structure(head, items), count)
            self.assertEqual(speedups.python_structure_from_parts(*given), self.upb_structure(head, items), count)

    def test_a_big_head(self):
        head = Element(KEY, create_type_identifier(11), False, b"h" * 200000)
        packed = codec.pack_elements(head, ())
        self.assertEqual(packed, self.upb_structure(head, ()))
        self.assertEqual(Structure.FromString(packed).head.value, head.value)
