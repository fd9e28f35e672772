"""
The Structure codec: object graphs <-> the bytes of an 'ION R1 GPB' message content.

A Structure carries the root object as `head` and everything it links to as `items`,
each element keyed by sha1(sha1(value) + serialized GPBType). Content comes from
the network, so unpacking trusts nothing: every key, type, link and isleaf flag is
checked, and any inconsistency is a CodecError naming the problem.
"""

import functools

from google.protobuf.message import DecodeError, EncodeError

from ion.core.exception import IonError
from ion.core.object.message_instance import ION_MESSAGE_TYPE, MessageInstance
from ion.core.object import object_utils, wire
from ion.core.object.gpb.net.ooici.core.container.container_pb2 import Structure
from ion.core.object.gpb_wrapper import Wrapper
from ion.core.object.object_utils import ObjectUtilException, create_type_identifier, iter_links, may_link
from ion.core.object.repository import checked_repository, content_key

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

    Content laid out as pack() lays it out (head first, every other element after the elements it
    links to) is a DAG by that order alone, and then everything is reachable from the head when
    every element but the head is linked to: only content in another order needs the graph walked.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("'%s' content must be bytes, not %s" % (ION_R1_GPB, type(data).__name__))
    try:
        structure = Structure.FromString(data)
    except DecodeError as e:
        raise CodecError("content is not a valid Structure: %s" % e) from None
    head = structure.head
    elements = (head, *structure.items)
    last = len(elements)
    messages = {}  # key -> protobuf message: what the repository will hold
    facts = {}  # key -> (TypeIdentifier, isleaf, whether it can link, rank: items by position, the head above)
    for position, element in enumerate(elements):
        key, gpb, type_id, has_links = _read(element)
        messages[key] = gpb
        facts[key] = type_id, element.isleaf, has_links, position or last
    ordered = len(facts) == last
    linked = set()
    for (key, gpb), (_type_id, isleaf, has_links, rank) in zip(messages.items(), facts.values()):
        count = 0
        if has_links:
            for link in iter_links(gpb):
                target_key = link.key
                target = facts.get(target_key)
                if target is None:
                    raise CodecError(
                        "element %s links to %s, which is not in the content" % (key.hex(), target_key.hex())
                    )
                link_type, target_type = link.type, target[0]
                if link_type.object_id != target_type.object_id or link_type.version != target_type.version:
                    raise CodecError(
                        "element %s links to %s as type %d but it is type %d"
                        % (key.hex(), target_key.hex(), link_type.object_id, target_type.object_id)
                    )
                if link.isleaf != target[1]:
                    raise CodecError("element %s: link to %s has the wrong isleaf flag" % (key.hex(), target_key.hex()))
                ordered = ordered and target[3] < rank
                linked.add(target_key)
                count += 1
        if isleaf != (not count):
            raise CodecError("element %s: isleaf is %s but it has %d links" % (key.hex(), isleaf, count))
    if not ordered or len(linked) != last - 1:
        _check_graph(head.key, {key: [link.key for link in iter_links(gpb)] for key, gpb in messages.items()})
    head_key = head.key
    root = checked_repository(messages, head_key)
    if facts[head_key][0].object_id == ION_MESSAGE_TYPE.object_id:  # every type here is version 1
        return MessageInstance.wrap(root)
    return root


@functools.cache
def _known_type(object_id, version):
    """(message class, TypeIdentifier, whether it can hold links) of a registered version-1 type.

    ObjectUtilException or ValueError if there is none.
    """
    message_class = object_utils.get_gpb_class_from_type_id(object_id)
    if version != 1:
        raise ValueError(version)
    return message_class, create_type_identifier(object_id), may_link(message_class)


def _read(element):
    """(key, object, TypeIdentifier, whether it can link) of an element, after checking its type and key."""
    key, element_type, value = element.key, element.type, element.value
    try:
        message_class, type_id, has_links = _known_type(element_type.object_id, element_type.version)
    except ObjectUtilException as e:
        raise CodecError("element %s: %s" % (key.hex(), e)) from None
    except ValueError:
        raise CodecError(
            "element %s has type version %d; only version 1 exists" % (key.hex(), element_type.version)
        ) from None
    if content_key(value, type_id) != key:
        raise CodecError("element %s: key does not match its content" % key.hex())
    try:
        return key, message_class.FromString(value), type_id, has_links
    except DecodeError as e:
        raise CodecError("element %s is not a valid %s: %s" % (key.hex(), message_class.DESCRIPTOR.name, e)) from None


def _parse(element):
    """The element's object, after checking its type is known and its key matches its content."""
    return _read(element)[1]


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
