"""
Wrappers: ION's attribute view of protobuf messages.

One Wrapper subclass is built per message type. Fields become properties, enums become
read-only attribute objects, and CASRef fields read and write the *linked object*
through the repository, so an object graph looks like plain nested objects.
Wrappers have no instance dict: setting anything that is not a field raises AttributeError.
"""

import functools
from typing import NamedTuple

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor

from ion.core.object import object_utils

FIELD_TYPE_NAMES = {getattr(FieldDescriptor, n): n for n in dir(FieldDescriptor) if n.startswith("TYPE_")}


class EnumObject:
    """A protobuf enum: each name is an attribute holding its number; `lookup` maps number -> name."""

    def __init__(self, descriptor):
        for value in descriptor.values:
            object.__setattr__(self, value.name, value.number)
        object.__setattr__(self, "lookup", {n: v.name for n, v in descriptor.values_by_number.items()})
        object.__setattr__(self, "_name", descriptor.full_name)

    def __setattr__(self, name, value):
        raise AttributeError("enum %s is read-only" % self._name)

    def __repr__(self):
        return "<enum %s %s>" % (self._name, self.lookup)


@functools.cache
def enum_object(descriptor):
    """The shared EnumObject of an enum descriptor, so `field_enum` is the class attribute itself."""
    return EnumObject(descriptor)


class FieldProperty(NamedTuple):
    """What create_event needs to know about a field: its protobuf type name and enum, if any."""

    name: str
    field_type: str
    field_enum: EnumObject | None


class Wrapper:
    """Base of the per-type wrapper classes; `wrapper_class` builds them."""

    # A root keeps _root None rather than itself, and its repository refers to it weakly: an object
    # graph then has no reference cycle and goes as soon as its last user lets go of it.
    __slots__ = ("_gpb", "_repository", "_root", "_myid", "__weakref__")

    ObjectClass = None
    ObjectType = None
    _Properties = {}
    _Enums = {}

    def __init__(self, gpb, repository, root=None, myid=None):
        self._gpb = gpb
        self._repository = repository
        self._root = root  # None: this wrapper is the root
        self._myid = myid

    @property
    def GPBMessage(self):
        return self._gpb

    @property
    def Repository(self):
        return self._repository

    @property
    def Root(self):
        """The object this wrapper belongs to: itself, or the object holding this nested message."""
        return self if self._root is None else self._root

    @property
    def IsRoot(self):
        return self._root is None

    @property
    def MyId(self):
        """The key links to this object hold inside its repository (None for nested messages)."""
        return self._myid

    def IsFieldSet(self, name):
        field = self.ObjectClass.DESCRIPTOR.fields_by_name[name]
        if object_utils.is_repeated(field):
            return len(getattr(self._gpb, name)) > 0
        return self._gpb.HasField(name)

    def ClearField(self, name):
        self._gpb.ClearField(name)

    def ListSetFields(self):
        return [field.name for field, _value in self._gpb.ListFields()]

    def SerializeToString(self):
        return self._gpb.SerializeToString()

    def _wrap(self, nested):
        return wrapper_class(type(nested))(nested, self._repository, self.Root)

    def __repr__(self):
        text = text_format.MessageToString(self._gpb, as_one_line=True, as_utf8=True)
        return "<%s {%s}>" % (self.ObjectClass.DESCRIPTOR.full_name, text)


class CompositeList:
    """A repeated nested-message field; items read as wrappers."""

    __slots__ = ("_owner", "_items")

    def __init__(self, owner, items):
        self._owner = owner
        self._items = items

    def __len__(self):
        return len(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._owner._wrap(item) for item in self._items[index]]
        return self._owner._wrap(self._items[index])

    def add(self):
        return self._owner._wrap(self._items.add())


class LinkList:
    """A repeated CASRef field; items read as the linked objects, `append` links one more."""

    __slots__ = ("_owner", "_links")

    def __init__(self, owner, links):
        self._owner = owner
        self._links = links

    def __len__(self):
        return len(self._links)

    def __getitem__(self, index):
        get = self._owner.Repository.get_linked
        if isinstance(index, slice):
            return [get(link) for link in self._links[index]]
        return get(self._links[index])

    def append(self, value):
        link = self._links.add()
        try:
            self._owner.Repository.set_link(self._owner.Root, link, value)
        except Exception:
            del self._links[-1]
            raise


def _read_only(name):
    def refuse(self, value):
        raise AttributeError("field %r cannot be assigned; change its contents instead" % name)

    return refuse


def _field_property(field):
    """The attribute for one field; the kind of field decides how it reads and writes."""
    name = field.name
    if object_utils.is_repeated(field):
        if field.type != field.TYPE_MESSAGE:
            return property(lambda self: getattr(self._gpb, name), _read_only(name))
        view = LinkList if object_utils.is_link(field) else CompositeList
        return property(lambda self: view(self, getattr(self._gpb, name)), _read_only(name))
    if field.type != field.TYPE_MESSAGE:
        return property(lambda self: getattr(self._gpb, name), lambda self, value: setattr(self._gpb, name, value))
    if object_utils.is_link(field):

        def get_linked(self):
            return self._repository.get_linked(getattr(self._gpb, name)) if self._gpb.HasField(name) else None

        def set_linked(self, value):
            self._repository.set_link(self.Root, getattr(self._gpb, name), value)

        return property(get_linked, set_linked)
    return property(lambda self: self._wrap(getattr(self._gpb, name)), _read_only(name))


@functools.cache
def wrapper_class(message_class):
    """The Wrapper subclass for a protobuf message class (built once per type)."""
    descriptor = message_class.DESCRIPTOR
    enums = {e.name: enum_object(e) for e in descriptor.enum_types}
    namespace = {
        "__slots__": (),
        "ObjectClass": message_class,
        "ObjectType": object_utils.type_of(descriptor),
        "_Enums": enums,
        "_Properties": {
            f.name: FieldProperty(f.name, FIELD_TYPE_NAMES[f.type], f.enum_type and enum_object(f.enum_type))
            for f in descriptor.fields
        },
        **enums,
    }
    namespace.update((f.name, _field_property(f)) for f in descriptor.fields)
    return type(descriptor.name, (Wrapper,), namespace)
