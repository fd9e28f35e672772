"""
The Structure codec: object graphs <-> the bytes of an 'ION R1 GPB' message content.

A Structure carries the root object as `head` and everything it links to as `items`,
each element keyed by sha1(sha1(value) + serialized GPBType). Content comes from
the network, so unpacking trusts nothing: every key, type, link and isleaf flag is
checked, and any inconsistency is a CodecError naming the problem.
"""

import functools
from typing import NamedTuple

from google.protobuf.message import DecodeError, EncodeError

from ion.core.exception import IonError
from ion.core.object.message_instance import ION_MESSAGE_TYPE, MessageInstance
from ion.core.object import object_utils, wire
from ion.core.object.gpb.net.ooici.core.container.container_pb2 import Structure
from ion.core.object.gpb_wrapper import Wrapper, wrapper_class
from ion.core.object.object_utils import ObjectUtilException, TypeIdentifier, create_type_identifier, iter_links
from ion.core.object.repository import checked_repository
from ion.core.object.speedups import canonical_elements, type_key

ION_R1_GPB = "ION R1 GPB"


class CodecError(IonError):
    """Content could not be packed, or received content is malformed or forged."""


class Packed(bytes):
    """The Structure bytes of an object packed already (pack_elements'): sent as 'ION R1 GPB' content as they are."""

    __slots__ = ()


def encode_content(content):
    """(Structure bytes, ION_R1_GPB) for a MessageInstance, object or Packed; anything else as (content, None)."""
    if isinstance(content, MessageInstance):
        return pack(content.Message), ION_R1_GPB
    if isinstance(content, Wrapper):
        return pack(content), ION_R1_GPB
    if type(content) is Packed:
        return bytes(content), ION_R1_GPB
    return content, None


def decode_content(content, encoding):
    """The MessageInstance or object packed in 'ION R1 GPB' content; other content unchanged."""
    if encoding == ION_R1_GPB:
        return unpack(content)
    return content


def pack(root):
    """Serialize `root` and every object it links to as a Structure."""
    if not root.IsRoot:
        raise CodecError("only a whole object can be sent, not a part of %r" % (root.Root,))
    try:
        head, elements = root.Repository.commit(root)
        return pack_elements(head, [element for key, element in elements.items() if key != head.key])
    except EncodeError as e:
        raise CodecError("cannot serialize %r: %s" % (root, e)) from e


def pack_elements(head, items):
    """The Structure of a head Element and the other Elements (children before parents, as commit gives them)."""
    return wire.structure(_element_bytes(head), [_element_bytes(element) for element in items])


def _element_bytes(element):
    return wire.element(element.key, element.type.SerializeToString(), element.isleaf, element.value)


def unpack(data):
    """Check a Structure and rebuild its graph: a MessageInstance for an IonMsg head, else the head object.

    Content in pack()'s layout is read and its keys and links checked in C where that was built
    (speedups.canonical_elements); the element parses and type checks are the same either way.
    A MessageInstance's repository and wrappers are made when it is first used (everything is
    checked before): a handler that only counts events, or reads the headers, never pays for them.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("'%s' content must be bytes, not %s" % (ION_R1_GPB, type(data).__name__))
    read = canonical_elements(data, _link_plans)
    if read is None:  # not the layout pack() writes, or not compiled: upb reads it
        elements, links_verified = _elements(data), False
    else:
        elements, links_verified = read
    last = len(elements)
    messages = {}  # key -> protobuf message: what the repository will hold
    facts = {}  # key -> (its _Kind, isleaf, rank: items by position, the head above them all, links or None)
    kinds = _kinds
    for position, (key, object_id, version, isleaf, value, key_ok, links) in enumerate(elements):
        kind = kinds.get(object_id)  # _parse's checks, a known type's kind looked up here
        if kind is None or version != 1:
            kind = _kind_checked(key, object_id, version)
        messages[key] = _message_of(key, kind, value, key_ok)
        facts[key] = kind, isleaf, position or last, links
    head_key = elements[0][0]
    if not links_verified:
        _check_links(messages, facts, head_key, last)
    if facts[head_key][0].type_id.object_id != ION_MESSAGE_TYPE.object_id:  # every type here is version 1
        return checked_repository(messages, head_key)
    content = facts.get(messages[head_key].message_object.key)  # None: the IonMsg holds no content
    content_class = content[0].wrapper if content is not None else None
    return MessageInstance.later(content_class, functools.partial(checked_repository, messages, head_key))


def _check_links(messages, facts, head_key, last):
    """
    Every link's target present with the link's type and isleaf, isleaf flags true, the links a DAG
    from the head that reaches every element (`last`: how many the content had, the same key twice counted).
    Content laid out as pack() lays it out (head first, every other element after the elements it
    links to) is a DAG by that order alone, and then everything is reachable from the head when
    every element but the head is linked to: only content in another order needs the graph walked.
    """
    ordered = len(facts) == last
    linked = set()
    for (key, message), (kind, isleaf, rank, links) in zip(messages.items(), facts.values()):
        if links is None:  # not read by canonical_elements: read from the object
            links = () if kind.links is None else [
                (link.key, link.type.object_id, link.type.version, link.isleaf) for link in kind.links(message)]
        for target_key, object_id, version, link_isleaf in links:
            target = facts.get(target_key)
            if target is None:
                raise CodecError("element %s links to %s, which is not in the content" % (key.hex(), target_key.hex()))
            target_type = target[0].type_id
            if object_id != target_type.object_id or version != target_type.version:
                raise CodecError(
                    "element %s links to %s as type %d but it is type %d"
                    % (key.hex(), target_key.hex(), object_id, target_type.object_id)
                )
            if link_isleaf != target[1]:
                raise CodecError("element %s: link to %s has the wrong isleaf flag" % (key.hex(), target_key.hex()))
            ordered = ordered and target[2] < rank
            linked.add(target_key)
        if isleaf != (not links):
            raise CodecError("element %s: isleaf is %s but it has %d links" % (key.hex(), isleaf, len(links)))
    if not ordered or len(linked) != last - 1:
        _check_graph(head_key, {key: [link.key for link in iter_links(message)] for key, message in messages.items()})


class _Kind(NamedTuple):
    """What the codec knows of a registered type: read once per type, used for every element of it."""

    message_class: type
    wrapper: type
    type_id: TypeIdentifier
    links: object  # object_utils.link_reader's function, None for a type that cannot hold links


_kinds = {}  # object id -> _Kind of its registered (version 1) type
_link_plans = {}  # object id -> its type's direct_link_fields, for canonical_elements to read the links


def _kind_of(object_id, version):
    """The _Kind of an element's type; ObjectUtilException or ValueError if it is not a registered type."""
    kind = _kinds.get(object_id)
    if kind is not None and version == 1:
        return kind
    if version != 1:
        raise ValueError(version)
    message_class = object_utils.get_gpb_class_from_type_id(object_id)
    type_id = create_type_identifier(object_id)
    kind = _kinds[type_id.object_id] = _Kind(
        message_class, wrapper_class(message_class), type_id, object_utils.link_reader(message_class)
    )
    _link_plans[type_id.object_id] = object_utils.direct_link_fields(message_class)
    return kind


def _kind_checked(key, object_id, version):
    """_kind_of, its errors as CodecErrors about the element `key`."""
    try:
        return _kind_of(object_id, version)
    except ObjectUtilException as e:
        raise CodecError("element %s: %s" % (key.hex(), e)) from None
    except ValueError:
        raise CodecError("element %s has type version %d; only version 1 exists" % (key.hex(), version)) from None


def _elements(data):
    """canonical_elements' rows read through upb, for any layout; key_ok and links None: not read yet."""
    try:
        structure = Structure.FromString(data)
    except DecodeError as e:
        raise CodecError("content is not a valid Structure: %s" % e) from None
    return [(element.key, element.type.object_id, element.type.version, element.isleaf, element.value, None, None)
            for element in (structure.head, *structure.items)]


def _message_of(key, kind, value, key_ok=None):
    """The object of an element of that kind, after checking (unless key_ok says) its key matches its content."""
    if key_ok is None:
        key_ok = type_key(value, kind.type_id.serialized) == key
    if not key_ok:
        raise CodecError("element %s: key does not match its content" % key.hex())
    try:
        return kind.message_class.FromString(value)
    except DecodeError as e:
        raise CodecError("element %s is not a valid %s: %s" % (key.hex(), kind.message_class.DESCRIPTOR.name, e)) from None


def _parse(element):
    """The element's object, after checking its type is known and its key matches its content."""
    key, element_type = element.key, element.type
    return _message_of(key, _kind_checked(key, element_type.object_id, element_type.version), element.value)


def _check_graph(head, children):
    """The links from the head must form a DAG that reaches every element."""
    state = {head: "open"}
    stack = [(head, iter(children[head]))]
    while stack:
        key, pending = stack[-1]
        child = next(pending, None)
        if child is None:
            state[key] = "done"
            stack.pop()
        elif state.get(child) == "open":
            raise CodecError("link cycle through element %s" % child.hex())
        elif child not in state:
            state[child] = "open"
            stack.append((child, iter(children[child])))
    unreached = children.keys() - state.keys()
    if unreached:
        raise CodecError("%d element(s) not reachable from the head, e.g. %s" % (len(unreached), min(unreached).hex()))
