"""
The fast way to a new event: the objects create_event makes and the bytes
the codec would pack from them, without the general object machinery.

create_event builds an IonMsg -> EventMessage -> payload graph through a
repository (objects, links, cycle checks) and publishing packs it through a
repository commit (content keys, links rewritten and restored).  For an event
made from keyword arguments that set scalar fields only, all of that is known
in advance: a plan per payload type sets the fields on the payload and
EventMessage protobuf messages, serializes them, and writes the rest of the
content directly (wire.py): the two links, the IonMsg, the Structure.  The
repository and wrappers the caller gets are built only when the event is first
used (MessageInstance.later), exactly as create_event leaves them after packing;
a publisher that ignores its result never pays for them.  Whatever the plan
cannot do (a message-typed field, a bad value, an unknown kwarg) it leaves to
the general path, which then gives R1's result or R1's error: a plan never
raises.  test_event_plan checks the bytes are the general path's, for every
event type in events.py.
"""

import functools

from ion.core.object import repository, wire
from ion.core.object.codec import Packed
from ion.core.object.gpb.net.ooici.core.link.link_pb2 import CASRef
from ion.core.object.gpb_wrapper import wrapper_class
from ion.core.object.message_instance import ION_MESSAGE_TYPE, MessageInstance
from ion.core.object.object_utils import get_gpb_class_from_type_id
from ion.core.object.repository import Repository
from ion.core.object.speedups import structure_from_parts, type_key

_EVENT, _PAYLOAD = 0, 1  # which message a field is set on


class EventPlan:
    """How to build the events of one payload type (see the module docstring)."""

    def __init__(self, event_type, payload_type):
        self.event_type, self.payload_type = event_type, payload_type
        self.ion_class = get_gpb_class_from_type_id(ION_MESSAGE_TYPE)
        self.event_class = get_gpb_class_from_type_id(event_type)
        self.payload_class = get_gpb_class_from_type_id(payload_type)
        self.event_wrapper = wrapper_class(self.event_class)
        # The EventMessage's entries last: a name both have is the EventMessage's (R1).
        self.fields = {**_settable(self.payload_class, _PAYLOAD), **_settable(self.event_class, _EVENT)}
        # A link's bytes are appended to its message's: it must come after every field set there.
        ion_bytes = ION_MESSAGE_TYPE.SerializeToString()
        event_bytes, payload_bytes = event_type.SerializeToString(), payload_type.SerializeToString()
        message_object = _last_number(self.ion_class, "message_object", ("identity",))
        additional_data = _last_number(self.event_class, "additional_data", self.event_class.DESCRIPTOR.fields_by_name)
        self.event_link = wire.link_parts(message_object, event_bytes, False)
        self.payload_link = wire.link_parts(additional_data, payload_bytes, True)
        self.ion_element = wire.element_parts(ion_bytes, False)
        self.event_element = wire.element_parts(event_bytes, False)
        self.payload_element = wire.element_parts(payload_bytes, True)
        self.type_bytes = ion_bytes, event_bytes, payload_bytes
        self.identity_tag = wire.tag(_number(self.ion_class, "identity"))
        # The live links of the caller's objects, but for the object id (copied: cheaper than set field by field).
        self.event_ref = CASRef(type=event_type.to_gpb(), isleaf=False)
        self.payload_ref = CASRef(type=payload_type.to_gpb(), isleaf=True)

    def build(self, fields):
        """(MessageInstance, Packed content) for the event with `fields`; None if only the general path can make it."""
        try:
            return self._build(fields)
        except Exception:  # the general path raises R1's error for it (or manages what the plan does not)
            return None

    def _build(self, fields):
        event, payload = messages = self.event_class(), self.payload_class()
        settable = self.fields
        for name, value in fields.items():
            where = settable.get(name)
            if where is None:
                return None
            target, enum = messages[where[0]], where[1]
            if enum is not None and isinstance(value, str):
                value = enum[value]
            if isinstance(value, (list, tuple)):
                getattr(target, name).extend(value)
            else:
                setattr(target, name, value)
        key = repository.new_key()  # looked up here: tests fix it
        ion_bytes, event_bytes, payload_bytes = self.type_bytes
        payload_value = payload.SerializeToString()
        payload_key = type_key(payload_value, payload_bytes)
        before, after = self.payload_link
        event_value = b"".join((event.SerializeToString(), before, payload_key, after))
        event_key = type_key(event_value, event_bytes)
        identity = key.encode()
        before, after = self.event_link
        ion_value = b"".join((self.identity_tag, wire.varint(len(identity)), identity, before, event_key, after))
        content = structure_from_parts(
            (self.ion_element, type_key(ion_value, ion_bytes), ion_value),
            (self.payload_element, payload_key, payload_value),
            (self.event_element, event_key, event_value),
        )
        instance = MessageInstance.later(self.event_wrapper, functools.partial(self._objects, key, event, payload))
        return instance, Packed(content)

    def _objects(self, key, event, payload):
        """The IonMsg object create_event leaves after packing: a repository of three, links holding object ids."""
        objects = Repository(key)
        ion = self.ion_class(identity=key)
        root = objects.add_new(ion)
        _point(ion.message_object, self.event_ref, objects.add_new(event))
        _point(event.additional_data, self.payload_ref, objects.add_new(payload))
        return root


@functools.cache
def plan_for(event_type, payload_type):
    """The EventPlan of a payload type (made once)."""
    return EventPlan(event_type, payload_type)


def _settable(message_class, where):
    """Field name -> (where, its enum's name -> number, or None), or None for a message-typed field."""
    wrapper = wrapper_class(message_class)
    fields = {}
    for field in message_class.DESCRIPTOR.fields:
        if field.type == field.TYPE_MESSAGE:
            fields[field.name] = None
        else:
            enum = wrapper._Properties[field.name].field_enum
            fields[field.name] = (where, None if enum is None else dict(zip(enum.lookup.values(), enum.lookup.keys())))
    return fields


def _number(message_class, name):
    return message_class.DESCRIPTOR.fields_by_name[name].number


def _last_number(message_class, name, others):
    """The field number of link `name`, checked to be higher than those of the fields `others`."""
    number = _number(message_class, name)
    if any(_number(message_class, other) > number for other in others):
        raise ValueError("%s.%s is not the last field set" % (message_class.DESCRIPTOR.name, name))
    return number


def _point(link, ref, target):
    """Point a CASRef at an object by its id, as a live link is after a commit: `ref` gives its type and isleaf."""
    link.CopyFrom(ref)
    link.key = target.MyId
