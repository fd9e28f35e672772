"""
Type identifiers and the object id -> protobuf class registry.

Every ION message type carries its id in a nested `_MessageTypeIdentifier` enum
(`_ID`, `_VERSION`). The registry is read from those enums once, at import, from
every module tools/make_protos.py generated.
"""

import functools
import importlib
from dataclasses import dataclass, field

from ion.core.exception import IonError
from ion.core.object import gpb
from ion.core.object.gpb.net.ooici.core.link.link_pb2 import CASRef
from ion.core.object.gpb.net.ooici.core.type.type_pb2 import GPBType


class ObjectUtilException(IonError):
    """A bad type identifier, an unknown object id, or an inconsistent registry."""


@dataclass(frozen=True, slots=True, order=True)
class TypeIdentifier:
    """An immutable GPBType: compares and hashes by (object_id, version), unlike protobuf messages."""

    object_id: int
    version: int
    serialized: bytes = field(compare=False, repr=False)

    def __eq__(self, other):
        # Each (object_id, version) is made once (create_type_identifier): identity nearly always answers.
        if self is other:
            return True
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.object_id == other.object_id and self.version == other.version

    def SerializeToString(self):
        return self.serialized

    def to_gpb(self):
        return GPBType(object_id=self.object_id, version=self.version)


def create_type_identifier(object_id, version=1):
    """The one (memoized) TypeIdentifier for (object_id, version); only version 1 exists in R1."""
    if not _is_int(object_id) or not _is_int(version):
        raise ObjectUtilException("object_id and version must be ints, got %r, %r" % (object_id, version))
    if version != 1:
        raise ObjectUtilException("only version 1 type identifiers exist, got %r" % (version,))
    return _type_identifier(object_id, version)


@functools.cache
def _type_identifier(object_id, version):
    serialized = GPBType(object_id=object_id, version=version).SerializeToString()
    return TypeIdentifier(object_id, version, serialized)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def object_id_of(type_or_int):
    """The object id named by an int, a TypeIdentifier or a GPBType message."""
    return type_or_int if _is_int(type_or_int) else type_or_int.object_id


def get_gpb_class_from_type_id(type_or_int):
    """The protobuf message class registered for an object id."""
    try:
        return _CLASSES[object_id_of(type_or_int)]
    except (KeyError, AttributeError):
        raise ObjectUtilException("no message type with id %r" % (type_or_int,)) from None


def type_of(descriptor):
    """The TypeIdentifier a protobuf message descriptor declares, or None."""
    ident = descriptor.enum_types_by_name.get("_MessageTypeIdentifier")
    if ident is None:
        return None
    values = ident.values_by_name
    return create_type_identifier(values["_ID"].number, values["_VERSION"].number)


def is_repeated(field):
    """Whether a field descriptor is repeated (protobuf 7 dropped `label`; 5.x lacks `is_repeated`)."""
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def is_link(field):
    return field.message_type is CASRef.DESCRIPTOR


@functools.cache
def _link_plan(descriptor):
    """Where CASRefs can sit in a message: (field, repeated, plan of the sub-message or None for a link).

    Assumes message types are not recursive, which holds for every R1 type used here.
    """
    plan = []
    for f in descriptor.fields:
        if f.type != f.TYPE_MESSAGE:
            continue
        sub = None if is_link(f) else _link_plan(f.message_type)
        if sub is None or sub:
            plan.append((f.name, is_repeated(f), sub))
    return tuple(plan)


def iter_links(message):
    """Every set CASRef inside a protobuf message, including inside nested (non-link) messages."""
    return _iter_plan(message, _link_plan(message.DESCRIPTOR))


def _iter_plan(message, plan):
    for name, repeated, sub in plan:
        if repeated:
            values = getattr(message, name)
        elif message.HasField(name):
            values = (getattr(message, name),)
        else:
            continue
        for value in values:
            if sub is None:
                yield value
            else:
                yield from _iter_plan(value, sub)


def _build_registry(module_names):
    classes = {}
    for name in module_names:
        module = importlib.import_module(name)
        for message in module.DESCRIPTOR.message_types_by_name.values():
            type_id = type_of(message)
            if type_id is None:
                continue
            if type_id.object_id in classes:
                raise ObjectUtilException(
                    "object id %d is used by both %s and %s"
                    % (type_id.object_id, classes[type_id.object_id].DESCRIPTOR.full_name, message.full_name)
                )
            classes[type_id.object_id] = getattr(module, message.name)
    return classes


_CLASSES = _build_registry(gpb.MODULES)


@functools.cache
def direct_link_fields(message_class):
    """
    ((field number, repeated), ...) of the links a message of this class holds in its own fields, in
    iter_links' order; () when it cannot hold any; None when some sit in nested messages.
    """
    plan = _link_plan(message_class.DESCRIPTOR)
    if any(sub is not None for _name, _repeated, sub in plan):
        return None
    fields = message_class.DESCRIPTOR.fields_by_name
    return tuple((fields[name].number, repeated) for name, repeated, _sub in plan)


@functools.cache
def link_reader(message_class):
    """
    A function giving the set CASRefs of a message of this class (a sequence, iter_links' order), or None
    when it cannot hold any.  Links held directly by the message (every R1 event type's) are read
    without iter_links' generators: the codec reads them for every element it receives.
    """
    plan = _link_plan(message_class.DESCRIPTOR)
    if not plan:
        return None
    if any(sub is not None for _name, _repeated, sub in plan):
        return lambda message: list(_iter_plan(message, plan))
    if len(plan) == 1 and not plan[0][1]:
        name = plan[0][0]
        return lambda message: (getattr(message, name),) if message.HasField(name) else ()
    fields = tuple((name, repeated) for name, repeated, _sub in plan)

    def direct_links(message):
        links = []
        for name, repeated in fields:
            if repeated:
                links.extend(getattr(message, name))
            elif message.HasField(name):
                links.append(getattr(message, name))
        return links

    return direct_links
