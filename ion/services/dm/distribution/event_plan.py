"""
The fast way to a new event: the objects create_event makes and the bytes
the codec would pack from them, without the general object machinery.

create_event builds an IonMsg -> EventMessage -> payload graph through a
repository (objects, links, cycle checks) and publishing packs it through a
repository commit (content keys, links rewritten and restored).  For an event
made from keyword arguments that set scalar fields only, all of that is known
in advance: a plan per payload type sets the fields on the protobuf messages
directly, computes the three elements' keys once, and wraps the messages in a
repository exactly as create_event leaves them after packing.  Whatever the
plan cannot do (a message-typed field, a bad value, an unknown kwarg) it
leaves to the general path, which then gives R1's result or R1's error: a
plan never raises.  test_event_plan checks the bytes are the general path's,
for every event type in events.py.
"""

import functools

from ion.core.object.codec import Packed, pack_elements
from ion.core.object.gpb_wrapper import wrapper_class
from ion.core.object.message_instance import ION_MESSAGE_TYPE, MessageInstance
from ion.core.object.object_utils import get_gpb_class_from_type_id
from ion.core.object.repository import Element, Repository, content_key

_MESSAGE = object()  # a message-typed field: the plan leaves it to the general path


class EventPlan:
    """How to build the events of one payload type (see the module docstring)."""

    def __init__(self, event_type, payload_type):
        self.event_type, self.payload_type = event_type, payload_type
        self.ion_class = get_gpb_class_from_type_id(ION_MESSAGE_TYPE)
        self.event_class = get_gpb_class_from_type_id(event_type)
        self.payload_class = get_gpb_class_from_type_id(payload_type)
        self.event_fields = _settable(self.event_class)
        self.payload_fields = _settable(self.payload_class)

    def build(self, fields):
        """(MessageInstance, Packed content) for the event with `fields`; None if only the general path can make it."""
        try:
            return self._build(fields)
        except Exception:  # the general path raises R1's error for it (or manages what the plan does not)
            return None

    def _build(self, fields):
        event, payload = self.event_class(), self.payload_class()
        event_fields, payload_fields = self.event_fields, self.payload_fields
        for name, value in fields.items():
            # The EventMessage first: a name both have is the EventMessage's (R1).
            target, enum = event, event_fields.get(name, _MESSAGE)
            if enum is _MESSAGE and name not in event_fields:
                target, enum = payload, payload_fields.get(name, _MESSAGE)
            if enum is _MESSAGE:
                return None
            if enum is not None and isinstance(value, str):
                value = enum[value]
            if isinstance(value, (list, tuple)):
                getattr(target, name).extend(value)
            else:
                setattr(target, name, value)
        ion = self.ion_class()
        repository = Repository()
        ion.identity = repository.key
        ion_object, event_object, payload_object = (repository.add_new(m) for m in (ion, event, payload))
        payload_element = _element(payload, self.payload_type, True)
        event_link = _link(event.additional_data, payload_element)
        event_element = _element(event, self.event_type, False)
        event_link.key = payload_object.MyId  # live links hold object ids, as after a commit
        ion_link = _link(ion.message_object, event_element)
        ion_element = _element(ion, ION_MESSAGE_TYPE, False)
        ion_link.key = event_object.MyId
        packed = Packed(pack_elements(ion_element, (payload_element, event_element)))
        return MessageInstance.wrap(ion_object), packed


@functools.cache
def plan_for(event_type, payload_type):
    """The EventPlan of a payload type (made once)."""
    return EventPlan(event_type, payload_type)


def _settable(message_class):
    """Field name -> its enum (None if not an enum), or _MESSAGE for a message-typed field."""
    wrapper = wrapper_class(message_class)
    fields = {}
    for field in message_class.DESCRIPTOR.fields:
        if field.type == field.TYPE_MESSAGE:
            fields[field.name] = _MESSAGE
        else:
            enum = wrapper._Properties[field.name].field_enum
            fields[field.name] = None if enum is None else dict(zip(enum.lookup.values(), enum.lookup.keys()))
    return fields


def _element(message, type_id, isleaf):
    value = message.SerializeToString()
    return Element(content_key(value, type_id), type_id, isleaf, value)


def _link(link, element):
    """Point a CASRef at an element, as a commit does while it serializes the parent."""
    link.key = element.key
    link.type.object_id = element.type.object_id
    link.type.version = element.type.version
    link.isleaf = element.isleaf
    return link
