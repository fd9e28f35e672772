"""
R1's serialization module: the msgpack body and the AMQP properties of an
ION message.  They are made in ion.core.messaging.envelope; the names stay
importable here.
"""

from ion.core.messaging.envelope import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    WireFormatError,
    message_properties,
    pack_body,
    unpack_body,
)

__all__ = ["CONTENT_ENCODING", "CONTENT_TYPE", "WireFormatError", "message_properties", "pack_body", "unpack_body"]
