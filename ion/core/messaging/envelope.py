"""
The ION wire envelope: the one place where a message becomes an AMQP body
and properties, and where a body becomes a message again (R1 §4.6, §5.1).

On the wire an ION message is one msgpack map, the AMQP body: the R1 headers
(sender, receiver, reply-to, encoding, ..., op) and `content`, which is the
bytes of a GPB Structure when `encoding` is 'ION R1 GPB' (see
ion.core.object.codec) and any msgpack value otherwise.  The AMQP properties
are R1's: content type application/msgpack, encoding binary, empty headers,
priority 0 and the delivery mode (1 unless the sender asks for persistence).

R1 used msgpack on Python 2, where every string is a msgpack *raw*.  To stay
readable by R1 peers we pack without the bin/str8 types (`use_bin_type=False`)
and unpack raws as bytes, then turn header keys and textual values into `str`.
GPB content stays bytes until the codec decodes it; everything else that is
valid UTF-8 becomes `str`, which is what a Python 3 handler expects of R1 text.

`encode()` is the publish side, `decode()` the delivery side; the smaller
functions are R1's steps, kept for callers that need one of them alone.
"""

import time
from typing import NamedTuple

import msgpack

from ion.core.exception import IonError
from ion.core.object.codec import ION_R1_GPB, decode_content, encode_content
from ion.core.object.speedups import text_headers

CONTENT_TYPE = "application/msgpack"
CONTENT_ENCODING = "binary"

# AMQP routing keys are short strings: at most 255 bytes.
MAX_ROUTING_KEY_BYTES = 255


class WireFormatError(IonError, ValueError):
    """An AMQP body that is not an ION message; the reason says why."""


class Envelope(NamedTuple):
    """One encoded message: the header map as sent (content encoded), its AMQP body and properties."""

    message: dict
    body: bytes
    properties: dict

    @property
    def routing_key(self):
        return self.message["receiver"]


def check_routing_key(key):
    """`key` if it can be an AMQP routing key; TypeError or ValueError (with the reason) if not."""
    if not isinstance(key, str):
        raise TypeError("routing key must be a str, not %s" % (type(key).__name__,))
    size = len(key.encode("utf-8"))
    if size > MAX_ROUTING_KEY_BYTES:
        raise ValueError(
            "routing key is %d bytes long in UTF-8; AMQP allows at most %d: %r..."
            % (size, MAX_ROUTING_KEY_BYTES, key[:40])
        )
    return key


# --- publishing -----------------------------------------------------------
def encode(sender, recipient, operation, content, headers=None, delivery_mode=1):
    """
    The Envelope of one ION message to `recipient` (its routing key, checked
    here): content through the codec, the R1 header map, msgpack, properties.
    Raises (TypeError/ValueError, CodecError, WireFormatError) before anything
    could be sent.
    """
    recipient = check_routing_key(recipient if type(recipient) is str else str(recipient))
    value, encoding = encode_content(content)
    message = build_message(sender, recipient, operation, value, headers)
    if encoding:
        message["encoding"] = encoding
    return Envelope(message, pack_body(message), message_properties(delivery_mode))


# The header map's defaults, in wire order; build_message copies it (cheaper than building it anew).
_DEFAULT_HEADERS = {
    "sender": "",
    "receiver": "",
    "reply-to": "",
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
    "ts": "",
}


def _now_ts():
    """R1's ts header: the time in milliseconds since the epoch, as text."""
    return str(int(time.time() * 1000))


def build_message(sender, recipient, operation, content, headers=None):
    """
    The header map that goes on the wire, content as given.

    Defaults first, then the caller's headers (which may override any of
    them), then `performative`, `op` and `content`, which headers cannot
    override.
    """
    message = _DEFAULT_HEADERS.copy()
    sender = sender if type(sender) is str else str(sender)
    message["sender"] = sender
    message["receiver"] = recipient if type(recipient) is str else str(recipient)
    message["reply-to"] = sender
    message["ts"] = _now_ts()
    if headers:
        message.update(headers)
        if "user-id" in headers:
            message["user-id"] = str(message["user-id"])
        if "expiry" in headers:
            message["expiry"] = str(message["expiry"])
        message["performative"] = headers.get("performative", "")
    else:
        message["performative"] = ""
    message["op"] = operation
    message["content"] = content
    return message


def message_properties(delivery_mode=1):
    """AMQP basic properties R1 put on every message (§5.1)."""
    return {
        "content_type": CONTENT_TYPE,
        "content_encoding": CONTENT_ENCODING,
        "headers": {},
        "delivery_mode": delivery_mode,
        "priority": 0,
    }


# One Packer for every message (packb makes a new one per call); it resets itself after each pack,
# a failed one too.
_packer = msgpack.Packer(use_bin_type=False)


def pack_body(message):
    """Encode a header map (with `content`) as R1 msgpack bytes."""
    try:
        return _packer.pack(message)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireFormatError("message cannot be packed: %s" % (e,)) from e


class Template:
    """
    The envelope of many messages from one sender to one recipient, encoded once: the same header map
    every time but for its timestamp and its content.  `body(content)` gives what encode() would for
    that content, without building and packing the map again: its msgpack bytes are kept in three
    pieces around the timestamp and the content (a msgpack map is its entries' bytes in order).
    `properties` is one dict shared by every message: read it, do not change it.
    """

    __slots__ = ("sender", "recipient", "headers", "delivery_mode", "properties", "_before_ts", "_before_content")

    def __init__(self, sender, recipient, operation=None, headers=None, encoding=ION_R1_GPB, delivery_mode=1):
        recipient = check_routing_key(recipient if type(recipient) is str else str(recipient))
        message = build_message(sender, recipient, operation, None, headers)
        message["encoding"] = encoding
        own_ts = bool(headers) and "ts" in headers  # the caller's ts: sent as it is, in every message
        if not own_ts:
            message["ts"] = _LATER
        message["content"] = _LATER
        parts, piece = [], [_packer.pack_map_header(len(message))]
        for key, value in message.items():
            piece.append(pack_body(key))
            if value is _LATER:
                parts.append(b"".join(piece))
                piece = []
            else:
                piece.append(pack_body(value))
        self._before_ts, self._before_content = (None, *parts) if own_ts else parts
        self.sender, self.recipient, self.headers, self.delivery_mode = sender, recipient, headers, delivery_mode
        self.properties = message_properties(delivery_mode)

    def body(self, content):
        """The AMQP body of a message with this content (bytes: GPB Structure bytes for 'ION R1 GPB')."""
        if self._before_ts is None:
            return b"".join((self._before_content, _packer.pack(content)))
        return b"".join((self._before_ts, _packer.pack(_now_ts()), self._before_content, _packer.pack(content)))


_LATER = object()  # a header value that Template.body puts in


# --- delivery -------------------------------------------------------------
def decode(body, raw=False):
    """
    The header map of an AMQP body with its content decoded: the
    MessageInstance or object of 'ION R1 GPB' content, other content as
    unpack_body gives it.  `raw=True` leaves GPB content as its bytes.
    Raises WireFormatError or CodecError for a body that is not an ION message.
    """
    return _unpack(body, decode_gpb=not raw)


def unpack_body(body):
    """Decode R1 msgpack bytes into a header map, GPB content left as bytes; raises WireFormatError."""
    return _unpack(body, decode_gpb=False)


def _unpack(body, decode_gpb):
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise WireFormatError("body is %s, not bytes" % (type(body).__name__,))
    try:
        raw = msgpack.unpackb(body, raw=True, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise WireFormatError("body is not msgpack: %s" % (e,)) from e
    if not isinstance(raw, dict):
        raise WireFormatError("body is a msgpack %s, not a map" % (type(raw).__name__,))
    content = raw.pop(b"content", None)
    message = text_headers(raw, _HEADER_NAMES)  # R1's headers: known names, UTF-8 texts, numbers and None
    if message is None:  # some other name or value: each is looked at on its own
        message = _headers(raw)
    encoding = message.get("encoding")
    if encoding != ION_R1_GPB:
        message["content"] = _text(content)
    elif decode_gpb:
        message["content"] = decode_content(content, encoding)
    else:
        message["content"] = content
    return message


def _header_name(key):
    name = _text(key)
    if not isinstance(name, str):
        raise WireFormatError("header key %r is not text" % (name,))
    return name


def _headers(raw):
    """The header map of a msgpack map (content taken out): keys and textual values as str."""
    message = {}
    for key, value in raw.items():
        name = _HEADER_NAMES.get(key) or _header_name(key)
        if type(value) is bytes:  # most headers: inline _text
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                pass
        elif type(value) is not int:
            value = _text(value)
        message[name] = value
    return message


# The header names build_message writes, as they arrive: decoded once, not per message.
_HEADER_NAMES = {
    name.encode(): name for name in build_message("", "", None, None, {"sender-name": ""})
}


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
