"""
The R1 wire format: one msgpack map (headers plus `content`) as the AMQP body.

R1 used msgpack on Python 2, where every string is a msgpack *raw*.  To stay
readable by R1 peers we pack without the bin/str8 types (`use_bin_type=False`)
and unpack raws as bytes, then turn header keys and textual values into `str`.
GPB content (encoding `ION R1 GPB`) stays bytes; everything else that is valid
UTF-8 becomes `str`, which is what a Python 3 handler expects of R1 text.
"""

import msgpack

from ion.core.exception import IonError
from ion.core.object.codec import ION_R1_GPB

CONTENT_TYPE = "application/msgpack"
CONTENT_ENCODING = "binary"


class WireFormatError(IonError, ValueError):
    """An AMQP body that is not an ION message; the reason says why."""


def message_properties(delivery_mode=1):
    """AMQP basic properties R1 put on every message (§5.1)."""
    return {
        "content_type": CONTENT_TYPE,
        "content_encoding": CONTENT_ENCODING,
        "headers": {},
        "delivery_mode": delivery_mode,
        "priority": 0,
    }


def pack_body(message):
    """Encode a header dict (with `content`) as R1 msgpack bytes."""
    try:
        return msgpack.packb(message, use_bin_type=False)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireFormatError("message cannot be packed: %s" % (e,)) from e


def _text(value):
    """bytes -> str when it is UTF-8; containers converted recursively."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


def unpack_body(body):
    """Decode R1 msgpack bytes into a header dict; raises WireFormatError."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise WireFormatError("body is %s, not bytes" % (type(body).__name__,))
    try:
        raw = msgpack.unpackb(body, raw=True, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise WireFormatError("body is not msgpack: %s" % (e,)) from e
    if not isinstance(raw, dict):
        raise WireFormatError("body is a msgpack %s, not a map" % (type(raw).__name__,))
    message = {}
    content = raw.pop(b"content", None)
    for key, value in raw.items():
        key = _text(key)
        if not isinstance(key, str):
            raise WireFormatError("header key %r is not text" % (key,))
        message[key] = _text(value)
    is_gpb = message.get("encoding") == ION_R1_GPB
    message["content"] = content if is_gpb else _text(content)
    return message
