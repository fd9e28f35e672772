"""Type registry, wrappers, links, repositories and message instances of the GPB object layer."""

from twisted.trial import unittest

from ion.core.messaging.message_client import (
    MessageClient,
    MessageClientError,
    MessageInstance,
    new_message_instance,
)
from ion.core.object import object_utils
from ion.core.object.gpb.net.ooici.core.link.link_pb2 import CASRef
from ion.core.object.gpb.net.ooici.core.type.type_pb2 import GPBType
from ion.core.object.gpb.net.ooici.services.dm import event_pb2, eventmonitor_pb2
from ion.core.object.object_utils import ObjectUtilException, create_type_identifier
from ion.core.object.repository import Repository, RepositoryError

EVENT_IDS = {
    2322: "EventMessage",
    2323: "ResourceLifecycleEventMessage",
    2324: "TriggerEventMessage",
    2325: "ResourceModificationEventMessage",
    2326: "LoggingEventMessage",
    2327: "NewSubscriptionEventMessage",
    2328: "DelSubscriptionEventMessage",
    2329: "DataEventMessage",
    2330: "DatasourceUnavailableEventMessage",
    2331: "DatasetSupplementAddedEventMessage",
    2332: "AppLoaderEventMessage",
    2333: "ContainerStartupEventMessage",
    2335: "EventMonitorSubscribeMessage",
    2336: "EventMonitorSubscribeResponse",
    2337: "EventMonitorUnsubscribeMessage",
    2338: "EventMonitorGetDataMessage",
    2339: "EventMonitorDataMessage",
    2340: "EventMonitorSubData",
    2341: "DataSetChangeEventMessage",
    2342: "DataSourceChangeEventMessage",
    2343: "IngestionProcessingEventMessage",
    4303: "InstrumentSampleData",
}
CORE_IDS = {1: "StructureElement", 2: "Structure", 3: "CASRef", 4: "IDRef", 9: "GPBType", 11: "IonMsg"}


class TypeIdentifierTest(unittest.TestCase):
    def test_serializes_like_gpbtype(self):
        self.assertEqual(create_type_identifier(2322).SerializeToString(), bytes.fromhex("0892121001"))
        self.assertEqual(create_type_identifier(2322).to_gpb(), GPBType(object_id=2322, version=1))

    def test_memoized_comparable_hashable(self):
        a = create_type_identifier(object_id=2322, version=1)
        self.assertIs(a, create_type_identifier(2322))
        self.assertEqual(a, object_utils.TypeIdentifier(2322, 1, b""))
        self.assertNotEqual(a, create_type_identifier(2323))
        self.assertLess(a, create_type_identifier(2323))
        self.assertEqual({a: 1}[create_type_identifier(2322)], 1)
        self.assertEqual((a.object_id, a.version), (2322, 1))

    def test_rejects_bad_arguments(self):
        for args in [(2322, 2), ("2322", 1), (2322.0, 1), (True, 1), (2322, "1")]:
            self.assertRaises(ObjectUtilException, create_type_identifier, *args)


class RegistryTest(unittest.TestCase):
    def test_every_type_is_registered(self):
        for object_id, name in {**EVENT_IDS, **CORE_IDS}.items():
            cls = object_utils.get_gpb_class_from_type_id(object_id)
            self.assertEqual(cls.DESCRIPTOR.name, name)
            self.assertIs(object_utils.get_gpb_class_from_type_id(create_type_identifier(object_id)), cls)

    def test_undocumented_2334_is_absent(self):
        self.assertRaises(ObjectUtilException, object_utils.get_gpb_class_from_type_id, 2334)

    def test_unknown_id(self):
        self.assertRaises(ObjectUtilException, object_utils.get_gpb_class_from_type_id, 99999)
        self.assertRaises(ObjectUtilException, object_utils.get_gpb_class_from_type_id, "x")

    def test_duplicate_ids_fail(self):
        e = self.assertRaises(
            ObjectUtilException,
            object_utils._build_registry,
            [event_pb2.__name__, eventmonitor_pb2.__name__, event_pb2.__name__],
        )
        self.assertIn("2322", str(e))


class WrapperTest(unittest.TestCase):
    def setUp(self):
        self.repo = Repository()
        self.event = self.repo.create_object(2322)

    def test_scalars_and_defaults(self):
        self.assertEqual(self.event.name, "")
        self.assertEqual(self.event.datetime, 0.0)
        self.assertEqual(self.event.status, self.event.Status.IN_PROGRESS)
        self.assertFalse(self.event.IsFieldSet("name"))
        self.event.name = "TestEvent"
        self.event.datetime = 12.5
        self.assertEqual(self.event.name, "TestEvent")
        self.assertIsInstance(self.event.name, str)
        self.assertTrue(self.event.IsFieldSet("name"))
        self.assertEqual(sorted(self.event.ListSetFields()), ["datetime", "name"])
        self.event.ClearField("name")
        self.assertEqual(self.event.ListSetFields(), ["datetime"])
        self.assertRaises(TypeError, setattr, self.event, "name", 5)

    def test_enums(self):
        state = self.repo.create_object(2323)
        self.assertEqual(state.State.ACTIVE, 3)
        self.assertEqual(state.State.lookup[3], "ACTIVE")
        self.assertEqual(state._MessageTypeIdentifier._ID, 2323)
        self.assertEqual(state._MessageTypeIdentifier._VERSION, 1)
        self.assertEqual(self.event.Status.NO_CACHE, 4)
        self.assertRaises(AttributeError, setattr, state.State, "ACTIVE", 9)
        self.assertRaises(AttributeError, setattr, state, "State", None)
        self.assertEqual(set(state._Enums), {"State", "_MessageTypeIdentifier"})

    def test_properties(self):
        status = self.event._Properties["status"]
        self.assertEqual((status.name, status.field_type), ("status", "TYPE_ENUM"))
        self.assertIs(status.field_enum, self.event.Status)
        self.assertFalse(hasattr(status.field_enum, "NOEXIST"))
        self.assertEqual(self.event._Properties["datetime"].field_type, "TYPE_DOUBLE")
        self.assertEqual(self.event._Properties["additional_data"].field_type, "TYPE_MESSAGE")
        self.assertIsNone(self.event._Properties["name"].field_enum)
        supplement = self.repo.create_object(2331)
        self.assertEqual(supplement._Properties["start_datetime_millis"].field_type, "TYPE_SINT64")

    def test_unknown_attribute(self):
        self.assertFalse(hasattr(self.event, "nofield"))
        self.assertRaises(AttributeError, setattr, self.event, "nofield", 1)
        self.assertTrue(hasattr(self.event, "Repository"))
        self.assertIs(self.event.Repository, self.repo)

    def test_identity_members(self):
        self.assertEqual(self.event.ObjectType, create_type_identifier(2322))
        self.assertIs(self.event.ObjectClass, event_pb2.EventMessage)
        self.assertTrue(self.event.IsRoot)
        self.assertIs(self.event.Root, self.event)

    def test_repeated_scalars(self):
        startup = self.repo.create_object(2333)
        startup.startup_names.append("a")
        startup.startup_names.extend(["b", "c"])
        startup.startup_names.insert(0, "z")
        startup.startup_names.remove("b")
        self.assertEqual(list(startup.startup_names), ["z", "a", "c"])
        self.assertEqual(startup.startup_names[1:], ["a", "c"])
        self.assertEqual(len(startup.startup_names), 3)
        self.assertRaises(AttributeError, setattr, startup, "startup_names", ["x"])


class LinkTest(unittest.TestCase):
    def setUp(self):
        self.repo = Repository()
        self.event = self.repo.create_object(2322)
        self.payload = self.repo.create_object(2323)

    def test_link_reads_as_object(self):
        self.assertIsNone(self.event.additional_data)
        self.event.additional_data = self.payload
        self.assertIs(self.event.additional_data, self.payload)
        link = self.event.GPBMessage.additional_data
        self.assertEqual((link.type.object_id, link.type.version, link.isleaf), (2323, 1, True))
        self.assertEqual(self.event._Properties["additional_data"].field_type, "TYPE_MESSAGE")

    def test_only_whole_objects_link(self):
        self.assertRaises(RepositoryError, setattr, self.event, "additional_data", "text")
        self.event.additional_data = self.payload
        link_part = self.event.GPBMessage.additional_data
        self.assertRaises(RepositoryError, setattr, self.event, "additional_data", link_part)

    def test_cycles_refused(self):
        trigger = self.repo.create_object(2324)
        self.event.additional_data = trigger
        self.assertRaises(RepositoryError, setattr, trigger, "payload", self.event)
        self.assertRaises(RepositoryError, setattr, self.event, "additional_data", self.event)

    def test_object_from_another_repository_is_copied(self):
        other = Repository()
        trigger = other.create_object(2324)
        trigger.task_id = "t1"
        trigger.payload = other.create_object(2326)
        self.event.additional_data = trigger
        copied = self.event.additional_data
        self.assertIsNot(copied, trigger)
        self.assertIs(copied.Repository, self.repo)
        self.assertEqual(copied.task_id, "t1")
        self.assertEqual(copied.payload.ObjectType.object_id, 2326)
        trigger.task_id = "changed"
        self.assertEqual(copied.task_id, "t1")

    def test_repeated_links_and_nested_messages(self):
        data = self.repo.create_object(2339)
        sub = data.data.add()
        sub.subscription_id = "abc"
        self.assertFalse(sub.IsRoot)
        self.assertIs(sub.Root, data)
        sub.events.append(self.event)
        sub.events.append(self.payload)
        self.assertEqual(len(data.data), 1)
        self.assertEqual(data.data[0].subscription_id, "abc")
        self.assertEqual([e.ObjectType.object_id for e in data.data[0].events[:]], [2322, 2323])
        self.assertIs(sub.events[0], self.event)
        self.assertRaises(RepositoryError, sub.events.append, sub)
        self.assertEqual(len(sub.events), 2)
        self.assertRaises(AttributeError, setattr, data, "data", [])

    def test_commit_keys_and_leaf_flags(self):
        self.event.additional_data = self.payload
        head, elements = self.repo.commit(self.event)
        self.assertEqual(list(elements.values())[-1], head)
        self.assertFalse(head.isleaf)
        (leaf,) = [e for e in elements.values() if e is not head]
        self.assertTrue(leaf.isleaf)
        self.assertEqual(len(head.key), 20)
        self.assertIs(self.event.additional_data, self.payload)

    def test_equal_objects_stay_distinct(self):
        data = self.repo.create_object(2339)
        sub = data.data.add()
        first, second = self.repo.create_object(2326), self.repo.create_object(2326)
        sub.events.append(first)
        sub.events.append(second)
        self.repo.commit(data)
        self.assertIs(sub.events[0], first)
        self.assertIs(sub.events[1], second)


class MessageInstanceTest(unittest.TestCase):
    def test_client_needs_process(self):
        self.assertRaises(MessageClientError, MessageClient, None)
        self.assertRaises(MessageClientError, MessageClient)

    def test_create_instance(self):
        msg = self.successResultOf(MessageClient(proc=object()).create_instance(2322, MessageName="hello"))
        self.assertIsInstance(msg, MessageInstance)
        self.assertEqual(msg.MessageType.object_id, 2322)
        self.assertEqual(msg.MessageType, create_type_identifier(2322))
        self.assertEqual(msg.MessageName, "hello")
        self.assertEqual(msg.MessageIdentity, msg.Repository.key)
        self.assertEqual(msg.MessageIdentity, msg.MessageIdentity.upper())
        self.assertEqual(len(msg.MessageIdentity), 36)
        self.assertEqual(msg.Message.ObjectType.object_id, 11)
        self.assertEqual(msg.MessageObject.ObjectType.object_id, 2322)

    def test_unknown_type_fails_the_deferred(self):
        d = MessageClient(proc=object()).create_instance(99999)
        self.failureResultOf(d, ObjectUtilException)

    def test_content_fields_and_enums(self):
        msg = new_message_instance(create_type_identifier(2322))
        self.assertEqual(msg.Status.NO_CACHE, 4)
        self.assertEqual(msg._Properties["status"].field_type, "TYPE_ENUM")
        self.assertFalse(hasattr(msg._Properties["status"].field_enum, "NOEXIST"))
        msg.origin = "X"
        msg.status = msg.Status.CACHED
        self.assertEqual(msg.MessageObject.origin, "X")
        self.assertEqual(msg.status, 2)
        self.assertTrue(msg.IsFieldSet("origin"))
        self.assertEqual(sorted(msg.ListSetFields()), ["origin", "status"])
        msg.ClearField("status")
        self.assertFalse(msg.IsFieldSet("status"))

    def test_hasattr_is_fields_and_members(self):
        msg = new_message_instance(2322)
        for name in ["name", "datetime", "additional_data", "origin", "Repository", "CreateObject"]:
            self.assertTrue(hasattr(msg, name), name)
        for name in ["state", "app_name", "nofield"]:
            self.assertFalse(hasattr(msg, name), name)
        self.assertRaises(AttributeError, setattr, msg, "nofield", 1)
        self.assertRaises(KeyError, lambda: msg._Properties["Repository"])

    def test_payload_link(self):
        msg = new_message_instance(2322)
        payload = msg.CreateObject(2323)
        payload.state = payload.State.ACTIVE
        msg.additional_data = payload
        self.assertEqual(msg.additional_data._MessageTypeIdentifier._ID, 2323)
        self.assertEqual(msg.additional_data.state, 3)
        self.assertIs(payload.Repository, msg.Repository)

    def test_response_codes_and_members(self):
        msg = new_message_instance(2336)
        self.assertEqual(msg.ResponseCodes.OK, 200)
        self.assertEqual(msg.ResponseCodes.lookup[3008], "RECEIVER_ERROR")
        msg.MessageResponseCode = msg.ResponseCodes.NOT_FOUND
        msg.MessageResponseBody = "gone"
        self.assertEqual((msg.MessageResponseCode, msg.MessageResponseBody), (404, "gone"))
        msg.Repository.persistent = True
        self.assertTrue(msg.Repository.persistent)

    def test_without_content(self):
        msg = new_message_instance(None)
        self.assertIsNone(msg.MessageType)
        self.assertIsNone(msg.MessageObject)
        self.assertFalse(hasattr(msg, "origin"))

    def test_later_is_made_when_first_used(self):
        """MessageInstance.later (event plans' results): the instance wrap gives, its message made on first use."""
        made = []

        def make():
            made.append(True)
            return new_message_instance(2322).Message

        eager = new_message_instance(2322)
        later = MessageInstance.later(type(eager.MessageObject), make)
        self.assertIs(type(later), type(eager))
        self.assertFalse(hasattr(later, "nofield"))
        self.assertEqual(made, [])
        later.origin = "X"
        self.assertEqual((later.origin, later.MessageObject.origin, made), ("X", "X", [True]))
        self.assertEqual(later.MessageIdentity, later.Repository.key)
        self.assertIs(later.MessageObject.Repository, later.Repository)
        self.assertEqual(made, [True])
        for msg in (eager, later):
            with self.assertRaises(AttributeError) as raised:
                msg.nofield
            self.assertEqual(str(raised.exception), "'EventMessageInstance' object has no attribute 'nofield'")

    def test_casref_is_type_3(self):
        self.assertIs(object_utils.get_gpb_class_from_type_id(3), CASRef)
