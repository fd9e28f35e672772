"""
From a received event to the row the store keeps: `event_row` from the
decoded message (its message instance), `raw_event_row` from the RawEvent
`parse_raw_event` makes of the content left as Structure bytes, for the
persister's fast path.

The raw path parses only what the row needs, once: the Structure, then the
IonMsg head, its EventMessage and what that links to, each element checked
as the codec checks it (known type, version, key matching its content);
it builds no repository, wrappers or message instance.  Both give the
same row.
"""

from typing import NamedTuple

from ion.core.object import codec
from ion.core.object.codec import CodecError
from ion.core.object.gpb.net.ooici.core.container.container_pb2 import Structure
from ion.core.object.object_utils import is_link, is_repeated

ION_MESSAGE_ID = 11  # IonMsg
EVENT_MESSAGE_ID = 2322  # EventMessage


def _plain(value):
    """A field value as JSON can hold it: nested objects as dicts of their set fields, repeated as lists."""
    if hasattr(value, "ListSetFields"):
        return {name: _plain(getattr(value, name)) for name in value.ListSetFields()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.hex()
    try:
        return [_plain(v) for v in value]
    except TypeError:
        return str(value)


def event_fields(content):
    """The set fields of an event's EventMessage, `additional_data` as the dict of its payload's."""
    return _plain(content.MessageObject)


def event_row(data, body, routing_key, received):
    """
    The store row of one event: `data` the decoded message dict (content a
    message instance holding an EventMessage), `body` its exact wire bytes,
    `routing_key` `<event_id>.<origin>`.  CodecError if it is not such an event.
    """
    content = data["content"]
    return _row(routing_key, content.name, content.datetime, content.Message.MyId, body, event_fields(content),
                received)


def _row(routing_key, name, when, content_key, body, fields, received):
    event_id, _, origin = routing_key.partition(".")
    if not event_id.isdigit() or not origin:
        raise CodecError("routing key %r is not <event_id>.<origin>" % (routing_key,))
    return {
        "event_id": int(event_id),
        "name": name,
        "origin": origin,
        "event_time": float(when),
        "received": float(received),
        "routing_key": routing_key,
        "content_key": content_key.hex(),
        "body": bytes(body),
        "fields": fields,
    }


class RawEvent(NamedTuple):
    """What the row needs of an event's content, parsed from its Structure bytes."""

    name: str
    datetime: float
    content_key: bytes
    fields: dict


def parse_raw_event(content):
    """
    The RawEvent of 'ION R1 GPB' content still as its Structure bytes.
    CodecError if it is not an IonMsg holding an EventMessage.
    """
    try:
        structure = Structure.FromString(content)
    except Exception as e:  # DecodeError, or content that is not bytes at all
        raise CodecError("content is not a valid Structure: %s" % (e,)) from None
    graph = _Graph(structure)
    head = graph.element(structure.head.key, ION_MESSAGE_ID)
    if not head.HasField("message_object"):
        raise CodecError("not an event: the IonMsg holds no object")
    event = graph.element(head.message_object.key, EVENT_MESSAGE_ID)
    return RawEvent(event.name, event.datetime, structure.head.key, graph.plain(event))


def raw_event_row(event, body, routing_key, received):
    """The row event_row gives, from the RawEvent of the body's content."""
    return _row(routing_key, event.name, event.datetime, event.content_key, body, event.fields, received)


class _Graph:
    """The Structure's elements by key, each parsed and checked the first time a link reaches it."""

    def __init__(self, structure):
        self._elements = {e.key: e for e in (structure.head, *structure.items)}
        self._parsed = {}

    def element(self, key, object_id=None):
        if key not in self._parsed:
            element = self._elements.get(key)
            if element is None:
                raise CodecError("a link to %s, which is not in the content" % (key.hex(),))
            if object_id is not None and element.type.object_id != object_id:
                raise CodecError("not an event: element %s is type %d, not %d"
                                 % (key.hex(), element.type.object_id, object_id))
            self._parsed[key] = codec._parse(element)
        return self._parsed[key]

    def plain(self, message, depth=0):
        """What event_fields gives for the object: its set fields, links followed, bytes as hex."""
        if depth > 64:
            raise CodecError("content links deeper than 64 objects")
        out = {}
        for field, value in message.ListFields():
            if is_repeated(field):
                out[field.name] = [self._value(field, v, depth) for v in value]
            else:
                out[field.name] = self._value(field, value, depth)
        return out

    def _value(self, field, value, depth):
        if field.message_type is not None:
            target = self.element(value.key) if is_link(field) else value
            return self.plain(target, depth + 1)
        if isinstance(value, bytes):
            return value.hex()
        return value
