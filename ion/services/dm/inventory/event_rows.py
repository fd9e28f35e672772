"""From a received event (its decoded message dict, body and route) to the row the store keeps."""

from ion.core.object.codec import CodecError


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
    event_id, _, origin = routing_key.partition(".")
    if not event_id.isdigit() or not origin:
        raise CodecError("routing key %r is not <event_id>.<origin>" % (routing_key,))
    return {
        "event_id": int(event_id),
        "name": content.name,
        "origin": origin,
        "event_time": float(content.datetime),
        "received": float(received),
        "routing_key": routing_key,
        "content_key": content.Message.MyId.hex(),
        "body": bytes(body),
        "fields": event_fields(content),
    }
