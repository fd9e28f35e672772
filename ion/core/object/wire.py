"""
The protobuf encoding of a Structure and of a link, written directly: the bytes upb would serialize.

Packing fills no protobuf messages: a StructureElement is four fields in field
order (key 1, type 2, isleaf 3, value 4, all required, so always present), a
CASRef is the same first three, and a Structure is its head (1) then its items
(2), each length-prefixed.  Filling a upb Structure field by field and
serializing it cost several times more.  The *_parts functions give the bytes
that are the same for every content key of one type, for a writer (event_plan)
that makes many.  test_gpb_wire checks all of it against upb's bytes.
"""

KEY_SIZE = 20  # a content key: a sha1 digest

_LENGTH_DELIMITED = 2
_ISLEAF = (b"\x18\x00", b"\x18\x01")  # isleaf (field 3, varint) false / true
_SMALL = tuple(bytes((n,)) for n in range(0x80))  # the one-byte varints: nearly every length here


def varint(n):
    """The base-128 varint of a non-negative int."""
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(field_number):
    """The key byte(s) of a length-delimited field."""
    return varint(field_number << 3 | _LENGTH_DELIMITED)


def _typed(type_bytes, isleaf):
    """The type (2) and isleaf (3) fields an element and a CASRef share; type_bytes: the serialized GPBType."""
    return b"".join((b"\x12", varint(len(type_bytes)), type_bytes, _ISLEAF[bool(isleaf)]))


def element(key, type_bytes, isleaf, value):
    """A StructureElement's bytes."""
    return b"".join((b"\x0a", varint(len(key)), key, _typed(type_bytes, isleaf), b"\x22", varint(len(value)), value))


def structure(head, items):
    """A Structure's bytes from its head's and its items' element bytes."""
    parts = [b"\x0a", varint(len(head)), head]
    for item in items:
        parts += (b"\x12", varint(len(item)), item)
    return b"".join(parts)


def element_parts(type_bytes, isleaf):
    """(before, middle) for speedups.structure_from_parts: the bytes around a content key in every element of that type."""
    return b"\x0a" + varint(KEY_SIZE), _typed(type_bytes, isleaf) + b"\x22"


def link_parts(field_number, type_bytes, isleaf):
    """(before, after): a CASRef field `field_number` linking to content key k of that type is before + k + after."""
    key, after = b"\x0a" + varint(KEY_SIZE), _typed(type_bytes, isleaf)
    return tag(field_number) + varint(len(key) + KEY_SIZE + len(after)) + key, after
