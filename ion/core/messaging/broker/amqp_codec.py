"""
AMQP 0-9-1 wire encoding: frames, method arguments, content properties and
field tables, as pure functions over bytes.

It replaces txamqp's codec, which UTF-8-decodes every string it reads,
message bodies included: here bodies and longstr fields stay bytes, and field
tables support every value type RabbitMQ sends or understands.  Field types
are named as in the spec ("octet", "shortstr", "table", ...).
"""

import datetime
import decimal
import struct

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT, FRAME_END = 1, 2, 3, 8, 0xCE
FRAME_HEAD = struct.Struct("!BHL")  # type, channel, payload size
HEARTBEAT_FRAME = FRAME_HEAD.pack(FRAME_HEARTBEAT, 0, 0) + bytes([FRAME_END])


def frame_bytes(kind, channel, payload):
    """One whole frame: head, payload and end byte."""
    return FRAME_HEAD.pack(kind, channel, len(payload)) + payload + b"\xce"


# -- encoding ------------------------------------------------------------------


def _utf8(text):
    return text if isinstance(text, bytes) else str(text).encode("utf-8", "surrogateescape")


def shortstr_bytes(value):
    """A short string as sent: its length byte, then its UTF-8 bytes."""
    data = _utf8(value)
    if len(data) > 255:
        raise ValueError("AMQP short string longer than 255 bytes: %r..." % data[:40])
    return bytes((len(data),)) + data


def _put_shortstr(out, value):
    out += shortstr_bytes(value)


def _put_longstr(out, value):
    if isinstance(value, dict):
        _put_table(out, value)
        return
    data = _utf8(value)
    out += struct.pack("!L", len(data))
    out += data


def _put_table(out, table):
    body = bytearray()
    for key, value in (table or {}).items():
        _put_shortstr(body, key)
        _put_value(body, value)
    out += struct.pack("!L", len(body))
    out += body


def _put_value(out, value):
    """One typed field-table value, using the type codes RabbitMQ understands."""
    if isinstance(value, bool):
        out += b"t\x01" if value else b"t\x00"
    elif isinstance(value, int):
        out += b"I" + struct.pack("!i", value) if -2**31 <= value < 2**31 else b"l" + struct.pack("!q", value)
    elif isinstance(value, float):
        out += b"d" + struct.pack("!d", value)
    elif isinstance(value, str):
        out += b"S"
        _put_longstr(out, value)
    elif isinstance(value, (bytes, bytearray)):
        out += b"x" + struct.pack("!L", len(value)) + value
    elif isinstance(value, decimal.Decimal):
        sign, digits, exponent = value.as_tuple()
        scaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        out += b"D" + struct.pack("!Bi", -exponent, scaled)
    elif isinstance(value, datetime.datetime):
        out += b"T" + struct.pack("!Q", int(value.timestamp()))
    elif isinstance(value, dict):
        out += b"F"
        _put_table(out, value)
    elif isinstance(value, (list, tuple)):
        items = bytearray()
        for item in value:
            _put_value(items, item)
        out += b"A" + struct.pack("!L", len(items)) + items
    elif value is None:
        out += b"V"
    else:
        raise TypeError("cannot put a %s into an AMQP field table" % type(value).__name__)


def _timestamp(value):
    return int(value.timestamp()) if isinstance(value, datetime.datetime) else int(value)


_PUT = {
    "octet": lambda out, v: out.append(v),
    "short": lambda out, v: out.extend(struct.pack("!H", v)),
    "long": lambda out, v: out.extend(struct.pack("!L", v)),
    "longlong": lambda out, v: out.extend(struct.pack("!Q", v)),
    "timestamp": lambda out, v: out.extend(struct.pack("!Q", _timestamp(v))),
    "shortstr": _put_shortstr,
    "longstr": _put_longstr,
    "table": _put_table,
}


def put_fields(out, fields, values):
    """Encode method arguments; consecutive bits share octets."""
    bits = []
    for field, value in zip(fields, values):
        if field.type == "bit":
            bits.append(value)
            continue
        if bits:
            _put_bits(out, bits)
            bits = []
        _PUT[field.type](out, value)
    if bits:
        _put_bits(out, bits)


def _put_bits(out, bits):
    for start in range(0, len(bits), 8):
        out.append(sum(1 << i for i, bit in enumerate(bits[start:start + 8]) if bit))


def put_properties(out, property_types, properties):
    """
    The property flags and values of a content header.  `property_types` is
    the class's (name, type) list in header order; properties that are None
    or missing are left out.  Each flag word marks in its low bit that
    another follows.
    """
    values = bytearray()
    word, bit = 0, 15
    for name, kind in property_types:
        if bit == 0:
            out += struct.pack("!H", word | 1)
            word, bit = 0, 15
        value = properties.get(name)
        if value is not None:
            word |= 1 << bit
            _PUT[kind](values, value)
        bit -= 1
    out += struct.pack("!H", word) + values


def properties_key(properties):
    """
    A hashable key for content properties whose encoding can be cached (every value a str, an int or
    bytes, or an empty table, as R1's are), or None.
    """
    key = []
    for name, value in properties.items():
        kind = type(value)
        if kind is dict:
            if value:
                return None
            value = _EMPTY_TABLE
        elif kind is not str and kind is not int and kind is not bytes:
            if value is not None:
                return None
        key.append((name, value))
    return tuple(key)


_EMPTY_TABLE = ("empty table",)  # stands for {} in a properties key: no str, int or bytes equals it


# -- decoding ------------------------------------------------------------------


def shortstr_at(data, pos):
    """(the AMQP short string at `pos` in `data`, where it ends); ValueError if it is cut off."""
    end = pos + 1 + data[pos]
    if end > len(data):
        raise ValueError("truncated AMQP payload")
    return data[pos + 1:end].decode("utf-8", "surrogateescape"), end


class Reader:
    """Decodes AMQP types from a bytes payload, front to back."""

    __slots__ = ("data", "pos")

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def unpack(self, fmt):
        values = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return values[0]

    def raw(self, size):
        chunk = self.data[self.pos:self.pos + size]
        if len(chunk) != size:
            raise ValueError("truncated AMQP payload")
        self.pos += size
        return chunk

    def octet(self):
        self.pos += 1
        return self.data[self.pos - 1]

    def short(self):
        return self.unpack(_H)

    def long(self):
        return self.unpack(_L)

    def longlong(self):
        return self.unpack(_Q)

    def shortstr(self):
        value, self.pos = shortstr_at(self.data, self.pos)
        return value

    def longstr(self):
        return self.raw(self.long())

    def table(self):
        end = self.long() + self.pos
        table = {}
        while self.pos < end:
            key = self.shortstr()
            table[key] = self.value()
        return table

    def value(self):
        kind = self.raw(1)
        if kind == b"S":
            return self.longstr().decode("utf-8", "surrogateescape")
        if kind == b"A":
            end = self.long() + self.pos
            items = []
            while self.pos < end:
                items.append(self.value())
            return items
        if kind == b"D":
            scale = self.octet()
            return decimal.Decimal(self.unpack(_i)).scaleb(-scale)
        if kind == b"T":
            return datetime.datetime.fromtimestamp(self.longlong(), datetime.timezone.utc)
        if kind == b"x":
            return self.longstr()
        if kind == b"F":
            return self.table()
        if kind == b"V":
            return None
        try:
            return self.unpack(_VALUE_FORMATS[kind])
        except KeyError:
            raise ValueError("unknown AMQP field-table type %r" % kind) from None


_H, _L, _Q, _i = (struct.Struct(f) for f in ("!H", "!L", "!Q", "!i"))
_VALUE_FORMATS = {k.encode(): struct.Struct("!" + f) for k, f in {
    "t": "?", "b": "b", "B": "B", "s": "h", "u": "H", "I": "i", "i": "I", "l": "q", "L": "Q", "f": "f", "d": "d",
}.items()}
_GET = {
    "octet": Reader.octet, "short": Reader.short, "long": Reader.long, "longlong": Reader.longlong,
    "timestamp": Reader.longlong, "shortstr": Reader.shortstr, "longstr": Reader.longstr, "table": Reader.table,
}


def get_fields(reader, fields):
    """Decode method arguments, the inverse of put_fields."""
    values = []
    bits, used = 0, 8
    for field in fields:
        if field.type == "bit":
            if used == 8:
                bits, used = reader.octet(), 0
            values.append(bool(bits >> used & 1))
            used += 1
        else:
            used = 8
            values.append(_GET[field.type](reader))
    return values


def get_properties(reader, property_types):
    """The properties a content header carries, by name, the inverse of put_properties."""
    present = []
    while True:
        flags = reader.short()
        present.extend(bool(flags >> bit & 1) for bit in range(15, 0, -1))
        if not flags & 1:
            break
    return {name: _GET[kind](reader) for (name, kind), on in zip(property_types, present) if on}
