"""The Structure codec: wire vectors, independent key computation, round trips, hostile input, memory."""

import gc
import hashlib
import tracemalloc

from twisted.trial import unittest

from ion.core.messaging.message_client import MessageInstance, new_message_instance
from ion.core.object import codec, object_utils
from ion.core.object.codec import ION_R1_GPB, CodecError, decode_content, encode_content
from ion.core.object.gpb.net.ooici.core.container.container_pb2 import Structure, StructureElement
from ion.core.object.gpb.net.ooici.core.link.link_pb2 import CASRef
from ion.core.object.gpb.net.ooici.core.message.ion_message_pb2 import IonMsg
from ion.core.object.gpb.net.ooici.core.type.type_pb2 import GPBType
from ion.core.object.gpb.net.ooici.services.dm.event_pb2 import EventMessage, ResourceLifecycleEventMessage
from ion.core.object.gpb_wrapper import Wrapper
from ion.core.object.repository import Repository

IDENTITY = "0F1E2D3C-4B5A-4968-8776-A5B4C3D2E1F0"


def element(message, object_id, isleaf):
    """A StructureElement computed here with hashlib, independently of the codec."""
    value = message.SerializeToString()
    type_bytes = GPBType(object_id=object_id, version=1).SerializeToString()
    key = hashlib.sha1(hashlib.sha1(value).digest() + type_bytes).digest()
    return StructureElement(key=key, type=GPBType(object_id=object_id, version=1), isleaf=isleaf, value=value)


def link_to(target, **override):
    link = CASRef(key=target.key, type=target.type, isleaf=target.isleaf)
    for name, value in override.items():
        if name == "object_id":
            link.type.object_id = value
        else:
            setattr(link, name, value)
    return link


def event_structure(payload=None, event_link=None, message_link=None):
    """IonMsg -> EventMessage -> ResourceLifecycleEventMessage(ACTIVE), built by hand."""
    payload = payload or element(ResourceLifecycleEventMessage(state=3), 2323, True)
    event_msg = EventMessage(name="TestEvent", datetime=1322449200.25, status=4, origin="X")
    event_msg.additional_data.CopyFrom(event_link or link_to(payload))
    event = element(event_msg, 2322, False)
    head = element(IonMsg(identity=IDENTITY, message_object=message_link or link_to(event)), 11, False)
    return Structure(head=head, items=[event, payload])


def fixed_event():
    """The same event as event_structure(), built through the object layer."""
    msg = new_message_instance(2322)
    msg.Message.identity = IDENTITY
    msg.name = "TestEvent"
    msg.datetime = 1322449200.25
    msg.status = msg.Status.NO_CACHE
    msg.origin = "X"
    payload = msg.CreateObject(2323)
    payload.state = payload.State.ACTIVE
    msg.additional_data = payload
    return msg


def by_key(elements):
    return sorted((e.SerializeToString() for e in elements), key=lambda b: StructureElement.FromString(b).key)


class WireFormatTest(unittest.TestCase):
    def test_gpbtype_vector(self):
        self.assertEqual(GPBType(object_id=2322, version=1).SerializeToString(), bytes.fromhex("0892121001"))

    def test_keys_match_independent_computation(self):
        content, encoding = encode_content(fixed_event())
        self.assertEqual(encoding, ION_R1_GPB)
        got = Structure.FromString(content)
        expected = event_structure()
        self.assertEqual(got.head, expected.head)
        self.assertEqual(by_key(got.items), by_key(expected.items))

    def test_links_on_the_wire(self):
        got = Structure.FromString(encode_content(fixed_event())[0])
        self.assertEqual(got.head.type, GPBType(object_id=11, version=1))
        self.assertFalse(got.head.isleaf)
        message_object = IonMsg.FromString(got.head.value).message_object
        self.assertEqual((message_object.type.object_id, message_object.isleaf), (2322, False))
        items = {e.key: e for e in got.items}
        event = EventMessage.FromString(items[message_object.key].value)
        self.assertEqual((event.additional_data.type.object_id, event.additional_data.isleaf), (2323, True))
        self.assertTrue(items[event.additional_data.key].isleaf)

    def test_decodes_hand_built_content(self):
        msg = decode_content(event_structure().SerializeToString(), ION_R1_GPB)
        self.assertEqual((msg.name, msg.origin, msg.status), ("TestEvent", "X", 4))
        self.assertEqual(msg.additional_data.state, msg.additional_data.State.ACTIVE)

    def test_element_order_does_not_matter(self):
        """Children before parents (as pack lays them out), parents first, duplicated: one graph each time."""
        structure = event_structure()
        event, payload = structure.items
        for items in ([payload, event], [event, payload], [payload, event, payload]):
            content = Structure(head=structure.head, items=items).SerializeToString()
            msg = decode_content(content, ION_R1_GPB)
            self.assertEqual((msg.name, msg.additional_data.state), ("TestEvent", 3))


    def test_received_instance_is_made_when_first_used(self):
        """Everything is checked on arrival; the repository and wrappers wait until the instance is used."""
        msg = decode_content(event_structure().SerializeToString(), ION_R1_GPB)
        self.assertIsInstance(msg, MessageInstance)
        self.assertEqual(type(msg).__name__, "EventMessageInstance")
        self.assertEqual(msg.MessageType.object_id, 2322)  # known from the class: nothing made yet
        self.assertIsNotNone(msg._make)
        self.assertEqual(msg.name, "TestEvent")
        self.assertIsNone(msg._make)
        self.assertEqual(msg.MessageIdentity, IDENTITY)
        self.assertIs(msg.MessageObject.Repository, msg.Repository)
        self.assertEqual(msg.MessageType.object_id, 2322)

    def test_received_ionmsg_without_content(self):
        head = element(IonMsg(identity=IDENTITY), 11, True)
        msg = decode_content(Structure(head=head).SerializeToString(), ION_R1_GPB)
        self.assertIs(type(msg), MessageInstance)
        self.assertIsNone(msg.MessageType)
        self.assertIsNone(msg.MessageObject)
        self.assertEqual(msg.MessageIdentity, IDENTITY)


class LinkReaderTest(unittest.TestCase):
    """object_utils.link_reader gives what iter_links gives, for every shape of link plan."""

    def test_same_links_as_iter_links(self):
        event = fixed_event()
        monitor = new_message_instance(2339)
        sub = monitor.data.add()
        sub.events.append(event.MessageObject)
        sub.events.append(event.MessageObject)
        # IonMsg and EventMessage: one singular link; EventMonitorSubData: a repeated one; the
        # EventMonitorDataMessage: links inside nested messages; a payload: none.
        objects = [event.Message, event.MessageObject, event.additional_data, monitor.MessageObject, sub]
        ion = IonMsg(identity=IDENTITY)  # no link set
        for gpb in [o.GPBMessage for o in objects] + [ion]:
            reader = object_utils.link_reader(type(gpb))
            expected = list(object_utils.iter_links(gpb))
            if reader is None:
                self.assertEqual(expected, [])
                self.assertEqual(object_utils._link_plan(gpb.DESCRIPTOR), ())
            else:
                self.assertEqual(list(reader(gpb)), expected, type(gpb).__name__)


class RoundTripTest(unittest.TestCase):
    def round_trip(self, content):
        data, encoding = encode_content(content)
        return decode_content(data, encoding)

    def test_event_with_every_field(self):
        msg = new_message_instance(2322)
        values = dict(
            data_resource_id="res-1",
            name="TestEvent",
            description="described",
            datetime=1322449200.125,
            origin="zxy-402",
            body="body text",
            user_id="user-7",
        )
        for name, value in values.items():
            setattr(msg, name, value)
        msg.status = msg.Status.CACHED
        payload = msg.CreateObject(2323)
        payload.state = payload.State.TERMINATED
        msg.additional_data = payload

        got = self.round_trip(msg)
        self.assertIsInstance(got, MessageInstance)
        self.assertIsNot(got.Repository, msg.Repository)
        self.assertEqual(got.MessageType.object_id, 2322)
        self.assertEqual(got.MessageIdentity, msg.MessageIdentity)
        for name, value in values.items():
            self.assertEqual(getattr(got, name), value, name)
        self.assertEqual(got.status, got.Status.CACHED)
        self.assertEqual(got.additional_data._MessageTypeIdentifier._ID, 2323)
        self.assertEqual(got.additional_data.State.lookup[got.additional_data.state], "TERMINATED")
        self.assertEqual(encode_content(got)[0], encode_content(msg)[0])

    def test_received_message_can_be_changed_and_resent(self):
        got = self.round_trip(fixed_event())
        got.additional_data.state = got.additional_data.State.ERROR
        again = self.round_trip(got)
        self.assertEqual(again.additional_data.state, 5)
        self.assertEqual(again.name, "TestEvent")

    def test_root_object_without_ionmsg(self):
        repo = Repository()
        trigger = repo.create_object(2324)
        trigger.task_id = "task"
        trigger.payload = repo.create_object(2326)
        got = self.round_trip(trigger)
        self.assertIsInstance(got, Wrapper)
        self.assertEqual((got.ObjectType.object_id, got.task_id), (2324, "task"))
        self.assertEqual(got.payload.ObjectType.object_id, 2326)

    def test_nested_repeated_links_and_shared_objects(self):
        msg = new_message_instance(2339)
        msg.session_id = "s1"
        events = [fixed_event(), fixed_event()]
        for sub_id in ["a", "b"]:
            sub = msg.data.add()
            sub.subscription_id = sub_id
            for event in events:
                sub.events.append(event.MessageObject)
        got = self.round_trip(msg)
        self.assertEqual([sub.subscription_id for sub in got.data[:]], ["a", "b"])
        first, second = got.data[0], got.data[1]
        self.assertEqual(len(first.events), 2)
        self.assertEqual(first.events[1].additional_data.state, 3)
        self.assertIs(first.events[0], second.events[0])
        self.assertEqual(len(Structure.FromString(encode_content(got)[0]).items), 3)  # data, event, payload

    def test_other_content_passes_through(self):
        for content in ["text", b"bytes", {"a": 1}, None]:
            self.assertEqual(encode_content(content), (content, None))
            self.assertIs(decode_content(content, "binary"), content)
            self.assertIs(decode_content(content, None), content)

    def test_pack_refuses_parts_and_incomplete_objects(self):
        msg = new_message_instance(2339)
        self.assertRaises(CodecError, encode_content, msg.data.add())
        incomplete = Repository().create_object(3)
        self.assertIn("cannot serialize", str(self.assertRaises(CodecError, encode_content, incomplete)))


class MalformedContentTest(unittest.TestCase):
    def assertRejected(self, content, reason):
        error = self.assertRaises(CodecError, decode_content, content, ION_R1_GPB)
        self.assertIn(reason, str(error))
        self.assertEqual(decode_content(event_structure().SerializeToString(), ION_R1_GPB).name, "TestEvent")

    def test_not_bytes(self):
        self.assertRejected("a string", "must be bytes")

    def test_truncated(self):
        content = event_structure().SerializeToString()
        for cut in [1, 7, len(content) // 2, len(content) - 1]:
            self.assertRejected(content[:cut], "not a valid Structure")

    def test_garbage(self):
        self.assertRejected(b"\xff" * 40, "not a valid Structure")

    def test_wrong_key(self):
        structure = event_structure()
        structure.items[0].key = bytes(20)
        self.assertRejected(structure.SerializeToString(), "key does not match its content")

    def test_tampered_value(self):
        structure = event_structure()
        structure.items[1].value = ResourceLifecycleEventMessage(state=5).SerializeToString()
        self.assertRejected(structure.SerializeToString(), "key does not match its content")

    def test_wrong_link_type(self):
        structure = event_structure(
            event_link=link_to(element(ResourceLifecycleEventMessage(state=3), 2323, True), object_id=2326)
        )
        self.assertRejected(structure.SerializeToString(), "as type 2326 but it is type 2323")

    def test_wrong_link_isleaf(self):
        payload = element(ResourceLifecycleEventMessage(state=3), 2323, True)
        structure = event_structure(payload=payload, event_link=link_to(payload, isleaf=False))
        self.assertRejected(structure.SerializeToString(), "wrong isleaf flag")

    def test_wrong_element_isleaf(self):
        payload = element(ResourceLifecycleEventMessage(state=3), 2323, False)
        self.assertRejected(event_structure(payload=payload).SerializeToString(), "isleaf is False but it has 0 links")

    def test_unknown_type_id(self):
        payload = element(ResourceLifecycleEventMessage(state=3), 9999, True)
        self.assertRejected(event_structure(payload=payload).SerializeToString(), "no message type with id 9999")

    def test_wrong_version(self):
        structure = event_structure()
        item = structure.items[1]
        item.type.version = 2
        item.key = hashlib.sha1(hashlib.sha1(item.value).digest() + item.type.SerializeToString()).digest()
        self.assertRejected(structure.SerializeToString(), "only version 1 exists")

    def test_value_not_parseable(self):
        payload = StructureElement(type=GPBType(object_id=2323, version=1), isleaf=True, value=b"\x08")
        payload.key = hashlib.sha1(hashlib.sha1(b"\x08").digest() + payload.type.SerializeToString()).digest()
        self.assertRejected(
            event_structure(payload=payload).SerializeToString(), "is not a valid ResourceLifecycleEventMessage"
        )

    def test_missing_linked_element(self):
        structure = event_structure()
        del structure.items[1]
        self.assertRejected(structure.SerializeToString(), "which is not in the content")

    def test_forged_head(self):
        good = event_structure()
        forged = Structure(head=good.items[1], items=[good.head, good.items[0]])
        self.assertRejected(forged.SerializeToString(), "not reachable from the head")

    def test_extra_element(self):
        structure = event_structure()
        structure.items.append(element(ResourceLifecycleEventMessage(state=1), 2323, True))
        self.assertRejected(structure.SerializeToString(), "not reachable from the head")
        # Also when everything else is in pack's order (children first), where no graph walk is needed.
        extra, (event, payload) = structure.items[2], structure.items[:2]
        packed_order = Structure(head=structure.head, items=[extra, payload, event])
        self.assertRejected(packed_order.SerializeToString(), "not reachable from the head")

    def test_link_cycle(self):
        # Valid SHA-1 keys make a cycle unconstructible, so the graph check is exercised directly.
        e = self.assertRaises(CodecError, codec._check_graph, b"a", {b"a": [b"b"], b"b": [b"c"], b"c": [b"a"]})
        self.assertIn("link cycle", str(e))
        codec._check_graph(b"a", {b"a": [b"b", b"c"], b"b": [b"c"], b"c": []})


class MemoryTest(unittest.TestCase):
    def test_no_growth_per_message(self):
        """20k pack/unpack cycles leave nothing behind: memory and object counts stay flat."""
        content = encode_content(fixed_event())[0]

        def cycle():
            msg = decode_content(content, ION_R1_GPB)
            msg.additional_data.state = 2
            encode_content(msg)

        for _ in range(500):
            cycle()
        gc.collect()
        objects_before = len(gc.get_objects())
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(20000):
                cycle()
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertLess(growth, 64 * 1024)
        self.assertLess(len(gc.get_objects()) - objects_before, 100)
