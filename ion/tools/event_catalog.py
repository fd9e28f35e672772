"""
What events there are (R1 §1), found from the events module itself: each
event id with its constant's name, its publisher and subscriber classes and
its payload type; and how to show a received event to a person or to `jq`.

An event is named by its id (`3003`), its constant (`LOGGING_INFO`, with or
without `_EVENT_ID`), its class stem (`InfoLogging`) or a class name
(`InfoLoggingEventPublisher`), in any case.
"""

import json
import time
from dataclasses import dataclass, field

from google.protobuf import json_format

from ion.core.exception import IonError
from ion.core.object.gpb_wrapper import Wrapper
from ion.core.object.object_utils import get_gpb_class_from_type_id, is_repeated
from ion.services.dm.distribution import events


class UnknownEvent(IonError, ValueError):
    """A name or number that is no event."""


@dataclass
class EventType:
    event_id: int
    constant: str  # e.g. LOGGING_INFO_EVENT_ID
    publishers: list = field(default_factory=list)
    subscribers: list = field(default_factory=list)

    @property
    def name(self):
        """The readable name: the first publisher's (or subscriber's) class stem, else the constant."""
        for cls in self.publishers + self.subscribers:
            return stem(cls.__name__)
        return self.constant.removesuffix("_EVENT_ID")

    @property
    def publisher(self):
        """The publisher class to publish with: the one whose stem is the name (the most specific)."""
        return self.publishers[0] if self.publishers else None

    def payload_class(self):
        """The protobuf class of the payload, from the publisher's msg_type (None without a publisher)."""
        publisher = self.publisher
        if publisher is None or publisher.msg_type is None:
            return None
        return get_gpb_class_from_type_id(publisher.msg_type)


def stem(class_name):
    for suffix in ("EventPublisher", "EventSubscriber", "Publisher", "Subscriber"):
        if class_name.endswith(suffix) and class_name != suffix:
            return class_name[: -len(suffix)]
    return class_name


def _catalog():
    found = {}
    for constant, value in vars(events).items():
        if constant.endswith("_EVENT_ID") and isinstance(value, int):
            found[value] = EventType(value, constant)
    for value in vars(events).values():
        if not isinstance(value, type) or getattr(value, "event_id", None) not in found:
            continue
        kind = found[value.event_id]
        if issubclass(value, events.EventPublisher) and value.msg_type is not None:
            kind.publishers.append(value)
        elif issubclass(value, events.EventSubscriber):
            kind.subscribers.append(value)
    for kind in found.values():
        # The class defining the id itself first: InfoLogging, not a subclass reusing its id.
        kind.publishers.sort(key=lambda c: (_defines_id(c), c.__name__))
        kind.subscribers.sort(key=lambda c: (_defines_id(c), c.__name__))
    return dict(sorted(found.items()))


def _defines_id(cls):
    return 0 if "event_id" in vars(cls) else 1


TYPES = _catalog()


def all_types():
    return list(TYPES.values())


def find(text):
    """The EventType an id or name names; UnknownEvent saying what is known otherwise."""
    text = str(text).strip()
    if text.isdigit():
        if int(text) in TYPES:
            return TYPES[int(text)]
        raise UnknownEvent("no event with id %s (known: %s)" % (text, ", ".join(map(str, TYPES))))
    wanted = text.lower()
    for kind in TYPES.values():
        names = {kind.constant, kind.constant.removesuffix("_EVENT_ID"), kind.name}
        for cls in kind.publishers + kind.subscribers:
            names.update((cls.__name__, stem(cls.__name__)))
        if wanted in {n.lower() for n in names}:
            return kind
    raise UnknownEvent("no event named %r (try an id, e.g. 3003, or `ion-events types`)" % (text,))


# --- received events ---------------------------------------------------------


def event_record(routing_key, content, full=False):
    """
    A received event as plain data: routing key, id and name, the
    EventMessage's fields and the payload's (enums by name; unset fields
    only with full=True).
    """
    event_id_text, _, origin = routing_key.partition(".")
    record = {"routing_key": routing_key, "event_id": None, "event": None, "origin": origin}
    if event_id_text.isdigit():
        record["event_id"] = int(event_id_text)
        kind = TYPES.get(int(event_id_text))
        record["event"] = kind.name if kind else None
    message = content.MessageObject if hasattr(content, "MessageObject") else content
    fields = _fields(message, full)
    fields.pop("additional_data", None)
    record["fields"] = fields
    payload = getattr(message, "additional_data", None)
    if isinstance(payload, Wrapper):
        record["payload_type"] = type(payload).__name__
        record["payload"] = _fields(payload, full)
    return record


def _fields(wrapper, full):
    """The fields that are set; with full=True every field, the unset ones with their defaults."""
    message = wrapper.GPBMessage
    fields = json_format.MessageToDict(message, preserving_proto_field_name=True)
    if full:
        for descriptor in message.DESCRIPTOR.fields:
            if descriptor.name not in fields and descriptor.message_type is None:
                value = getattr(message, descriptor.name)
                if descriptor.enum_type is not None and not is_repeated(descriptor):
                    value = descriptor.enum_type.values_by_number[value].name
                fields[descriptor.name] = list(value) if is_repeated(descriptor) else value
    return fields


def one_line(record):
    """time, id and name, origin, then the fields that are set."""
    fields = dict(record["fields"])
    when = fields.pop("datetime", None)
    fields.pop("origin", None)
    fields.update(record.get("payload", {}))
    stamp = time.strftime("%H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "--:--:--"
    shown = " ".join("%s=%s" % (k, _short(v)) for k, v in fields.items())
    return "%s %s %s %s %s" % (stamp, record["event_id"], record["event"] or "?", record["origin"], shown)


def _short(value, limit=80):
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def full_text(record):
    """Every field of the EventMessage and its payload, one per line."""
    lines = ["%s %s  (routing key %s)" % (record["event_id"], record["event"] or "?", record["routing_key"])]
    lines += ["  %s: %s" % (k, v) for k, v in record["fields"].items()]
    if "payload" in record:
        lines.append("  payload %s:" % (record["payload_type"],))
        lines += ["    %s: %s" % (k, v) for k, v in record["payload"].items()]
    return "\n".join(lines)


def json_line(record):
    return json.dumps(record, sort_keys=True)


def describe(kind):
    """`types EVENT`: id, classes, payload type and its fields with their types."""
    lines = ["%d %s (%s)" % (kind.event_id, kind.name, kind.constant)]
    lines.append("  publishers:  %s" % (", ".join(c.__name__ for c in kind.publishers) or "-"))
    lines.append("  subscribers: %s" % (", ".join(c.__name__ for c in kind.subscribers) or "-"))
    lines.append("  EventMessage fields:")
    lines += ["    %s: %s" % (f.name, _field_type(f)) for f in event_message_fields() if f.name != "additional_data"]
    payload = kind.payload_class()
    if payload is not None:
        lines.append("  payload: %s%s" % (payload.DESCRIPTOR.full_name, "" if payload.DESCRIPTOR.fields else " (no fields)"))
        for f in payload.DESCRIPTOR.fields:
            lines.append("    %s: %s" % (f.name, _field_type(f)))
    return "\n".join(lines)


def event_message_fields():
    """The EventMessage's field descriptors (publish puts the other fields on the payload)."""
    return get_gpb_class_from_type_id(events.EVENT_MESSAGE_TYPE).DESCRIPTOR.fields


def _field_type(descriptor):
    if descriptor.enum_type is not None:
        return "enum %s (%s)" % (descriptor.enum_type.name, ", ".join(v.name for v in descriptor.enum_type.values))
    if descriptor.message_type is not None:
        return descriptor.message_type.full_name
    names = {v: k for k, v in vars(type(descriptor)).items() if k.startswith("TYPE_")}
    return names.get(descriptor.type, str(descriptor.type)).removeprefix("TYPE_").lower()


