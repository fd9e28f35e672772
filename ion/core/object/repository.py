"""
A repository holds the objects of one message: a root and everything linked from it.

Deliberately small: no workbench, branches or commit history, so nothing outlives
the message unless whoever holds the message keeps it. Inside a repository every
object has a stable id (MyId) and a link (CASRef) holds the id of its target; the
content keys that travel on the wire are computed by `commit`.
"""

import itertools
import os
import random
import weakref
from typing import NamedTuple

from ion.core.exception import IonError
from ion.core.object import object_utils
from ion.core.object.gpb_wrapper import Wrapper, wrapper_class
from ion.core.object.object_utils import TypeIdentifier, iter_links
from ion.core.object.speedups import type_key  # content_key of a type given as its serialized GPBType


class RepositoryError(IonError):
    """A link that cannot be made or followed."""


class Element(NamedTuple):
    """One object as content-addressed bytes: what a StructureElement carries."""

    key: bytes
    type: TypeIdentifier
    isleaf: bool
    value: bytes


def content_key(value, type_id):
    """R1's element key: sha1(sha1(value) + serialized GPBType), binary."""
    return type_key(value, type_id.SerializeToString())


# Repository keys are random UUIDs (version 4), as R1's; drawn from a generator of our own, seeded
# from os.urandom and again in a forked child, at a fraction of uuid.uuid4's cost per message.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)
_bits = _random.getrandbits


def new_key():
    """A new random UUID4 in upper case, as R1 named a repository: 'E3A1...-....-4...-[89AB]...-...'."""
    # The version nibble (4) and the variant bits (10) are fixed; the other 122 bits are random.
    return "%08X-%04X-4%03X-%04X-%012X" % (_bits(32), _bits(16), _bits(12), 0x8000 | _bits(14), _bits(48))


class Repository:
    """The objects of one message. `persistent` is kept for R1 callers; nothing here caches."""

    def __init__(self, key=None):
        self._key = key  # None: made when first asked for
        self.persistent = False
        self._messages = {}  # object id -> its protobuf message: what the repository holds
        self._wrappers = {}  # object id -> weak reference to its wrapper, made again when it has gone
        self._local_ids = itertools.count(1)

    @property
    def key(self):
        """The repository's unique name (a new message's identity); made when first asked for."""
        if self._key is None:
            self._key = new_key()
        return self._key

    def create_object(self, type_id):
        """A new, unlinked object of the given type (an int, TypeIdentifier or GPBType)."""
        return self.add_new(object_utils.get_gpb_class_from_type_id(type_id)())

    def add_new(self, gpb):
        """A protobuf message built elsewhere as a new object of this repository (next local id), as create_object."""
        return self.add_object(gpb, str(next(self._local_ids)).encode())

    def add_object(self, gpb, key):
        """Wrap a protobuf message as an object of this repository, reachable by links holding `key`."""
        obj = wrapper_class(type(gpb))(gpb, self, None, key)  # a root: no _root
        self._messages[key] = gpb
        self._wrappers[key] = weakref.ref(obj)
        return obj

    def get_linked(self, link):
        """The object a link points at: the same wrapper for as long as anyone holds it."""
        key = link.key
        ref = self._wrappers.get(key)
        obj = ref() if ref is not None else None
        if obj is None:
            gpb = self._messages.get(key)
            if gpb is None:
                raise RepositoryError("link to an object missing from the repository: %s" % key.hex())
            obj = wrapper_class(type(gpb))(gpb, self, None, key)  # a root: no _root
            self._wrappers[key] = weakref.ref(obj)
        return obj

    def set_link(self, parent, link, value):
        """Point `link` (a CASRef inside `parent`) at `value`, copying it in from another repository."""
        child = self._adopt(value)
        if self._reaches(child, parent):
            raise RepositoryError("linking %r into %r would create a cycle" % (child, parent))
        link.key = child.MyId
        link.type.object_id = child.ObjectType.object_id
        link.type.version = child.ObjectType.version
        link.isleaf = next(iter_links(child.GPBMessage), None) is None

    def _adopt(self, value):
        if not isinstance(value, Wrapper):
            raise RepositoryError("only an object can be linked, not %r" % (value,))
        if not value.IsRoot:
            raise RepositoryError("only a whole object can be linked, not a part of %r" % (value.Root,))
        if value.Repository is self:
            return value
        return self._copy(value, {})

    def _copy(self, obj, copies):
        """Deep-copy an object and what it links to from another repository into this one (copies: by object id)."""
        done = copies.get(obj.MyId)
        if done is not None:
            return done
        gpb = obj.ObjectClass()
        gpb.CopyFrom(obj.GPBMessage)
        for link in iter_links(gpb):
            link.key = self._copy(obj.Repository.get_linked(link), copies).MyId
        copy = self.add_new(gpb)
        copies[obj.MyId] = copy
        return copy

    def _reaches(self, start, target):
        """Whether `target` is `start` or linked from it (objects of this repository, compared by id)."""
        stack, seen = [start], set()
        while stack:
            obj = stack.pop()
            if obj.MyId == target.MyId:
                return True
            if obj.MyId not in seen:
                seen.add(obj.MyId)
                stack.extend(self.get_linked(link) for link in iter_links(obj.GPBMessage))
        return False

    def commit(self, root):
        """Elements of `root` and everything it links to, children before parents.

        Returns (root element, {key: element}). Each link's isleaf is brought up to
        date; the live links keep holding object ids, so objects stay distinct even
        when their contents are equal.
        """
        elements = {}
        return self._commit(root, elements, {}), elements

    def _commit(self, obj, elements, done):
        element = done.get(obj.MyId)
        if element is not None:
            return element
        gpb = obj.GPBMessage
        links = list(iter_links(gpb))
        ids = []
        for link in links:
            child = self._commit(self.get_linked(link), elements, done)
            ids.append(link.key)
            link.key = child.key
            link.isleaf = child.isleaf
        value = gpb.SerializeToString()
        for link, object_id in zip(links, ids, strict=True):
            link.key = object_id
        element = Element(content_key(value, obj.ObjectType), obj.ObjectType, not links, value)
        elements[element.key] = element
        done[obj.MyId] = element
        return element


def checked_repository(messages, head):
    """
    The object `head` of a new Repository holding `messages` ({key: protobuf message}, the dict itself):
    received content the codec has checked.  Only the head is wrapped now, the others when a link to
    them is first followed, as get_linked would wrap them again anyway once their wrappers had gone.
    """
    repository = Repository()
    repository._messages = messages
    return repository.add_object(messages[head], head)
