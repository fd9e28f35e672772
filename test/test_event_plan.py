"""
Event plans (event_plan.py) make the same events and the same bytes as the
general object path, for every event type in events.py, and leave to it
whatever they cannot do, so its results and errors stay R1's.
"""

import uuid

from twisted.trial import unittest

from ion.core.messaging import envelope
from ion.core.object import codec, repository
from ion.core.object.message_instance import MessageInstance
from ion.services.dm.distribution import event_plan, events
from test.test_events import PAYLOAD_FIELDS

FIXED = "12345678-1234-4234-8234-123456789ABC"
EVENT_FIELDS = {
    "name": "n", "description": "d", "status": "CACHED", "origin": "o", "body": "b", "user_id": "u",
    "data_resource_id": "r", "datetime": 1306000000.25,
}


def publisher(cls):
    return cls.__new__(cls)  # the event-making methods need no process


class RepositoryKeyTest(unittest.TestCase):
    def test_repository_keys_are_random_uuid4s(self):
        keys = {repository.Repository().key for _ in range(1000)}
        self.assertEqual(len(keys), 1000)
        for key in keys:
            parsed = uuid.UUID(key)
            self.assertEqual((parsed.version, parsed.variant, str(parsed).upper()), (4, uuid.RFC_4122, key))


class EventPlanTest(unittest.TestCase):
    def setUp(self):
        self.patch(repository, "new_key", lambda: FIXED)

    def both(self, cls, fields):
        """(fast event, its packed bytes, the general path's event) for the same fields and identity."""
        pub = publisher(cls)
        fast, packed = pub._new_packed_event(fields)
        self.assertIsNotNone(packed, "%s has no plan for %r" % (cls.__name__, fields))
        slow = pub._build_event(dict(fields))
        return fast, packed, slow

    def test_same_bytes_and_objects_for_every_event_type(self):
        for cls, payload in PAYLOAD_FIELDS.items():
            for fields in ({"datetime": 5.0}, dict(EVENT_FIELDS, **payload), dict(payload, status=3, datetime=0.5)):
                fast, packed, slow = self.both(cls, fields)
                self.assertIsInstance(packed, codec.Packed)
                self.assertEqual(packed, codec.pack(slow.Message), cls.__name__)
                # The live objects are what packing left of the general path's: they pack the same again.
                self.assertEqual(repr(fast), repr(slow))
                self.assertEqual(codec.pack(fast.Message), packed)
                self.assertEqual(fast.MessageIdentity, FIXED)
                self.assertEqual(fast.additional_data.ObjectType, cls.msg_type)

    def test_the_envelope_is_byte_identical(self):
        cls = events.InfoLoggingEventPublisher
        fast, packed, slow = self.both(cls, dict(EVENT_FIELDS))
        self.patch(envelope.time, "time", lambda: 1306000000.5)
        self.assertEqual(envelope.encode("s.1", "3003.o", None, packed, {"sender-name": "s"}).body,
                         envelope.encode("s.1", "3003.o", None, slow, {"sender-name": "s"}).body)

    def test_received_event_reads_as_sent(self):
        fast, packed, _ = self.both(events.InstrumentSampleDataEventPublisher,
                                    dict(PAYLOAD_FIELDS[events.InstrumentSampleDataEventPublisher], name="s"))
        received = codec.unpack(bytes(packed))
        self.assertEqual((received.name, received.additional_data.salinity), ("s", 35.0))

    def test_repeated_fields_and_enum_numbers(self):
        fast, packed, slow = self.both(events.ContainerStartupEventPublisher,
                                       {"startup_names": ("a", "b"), "status": 4, "datetime": 1.0})
        self.assertEqual(list(fast.additional_data.startup_names), ["a", "b"])
        self.assertEqual(packed, codec.pack(slow.Message))

    def test_new_objects_get_their_own_ids(self):
        fast, _, _ = self.both(events.InfoLoggingEventPublisher, {"datetime": 1.0})
        extra = fast.CreateObject(events.LOGGING_EVENT_MESSAGE_TYPE)
        self.assertNotIn(extra.MyId, (fast.Message.MyId, fast.MessageObject.MyId, fast.additional_data.MyId))

    def test_objects_made_on_first_use(self):
        """The repository and wrappers of a planned event: made once, when the caller first uses the event."""
        plan = event_plan.plan_for(events.EVENT_MESSAGE_TYPE, events.LOGGING_EVENT_MESSAGE_TYPE)
        made, objects = [], plan._objects
        self.patch(plan, "_objects", lambda *args: made.append(args) or objects(*args))
        fast, packed = plan.build({"datetime": 1.0, "origin": "o"})
        self.assertEqual(made, [])
        self.assertIsInstance(fast, MessageInstance)
        self.assertEqual((fast.origin, fast.Repository.key, len(made)), ("o", FIXED, 1))
        self.assertEqual(codec.pack(fast.Message), packed)
        self.assertEqual(len(made), 1)

    def test_left_to_the_general_path(self):
        """A message-typed field, a bad value, an unknown kwarg: no plan; the general path's result or error."""
        plan = event_plan.plan_for(events.EVENT_MESSAGE_TYPE, events.RESOURCE_MODIFICATION_EVENT_MESSAGE_TYPE)
        for fields in ({"resource": object()}, {"status": "NOT_A_STATUS"}, {"name": 5}, {"nope": 1},
                       {"name": ["a"]}, {"additional_data": None}):
            self.assertIsNone(plan.build(dict(fields, datetime=1.0)), fields)
        pub = publisher(events.BusinessStateModificationEventPublisher)
        for fields, error in (({"status": "NOT_A_STATUS"}, "is not a name of status"),
                              ({"name": 5}, "takes str"), ({"nope": 1}, "unused kwargs")):
            with self.assertRaises(Exception) as fast_error:
                pub._new_packed_event(fields)
            with self.assertRaises(Exception) as slow_error:
                pub._build_event(dict(fields, datetime=1.0))
            self.assertIs(type(fast_error.exception), type(slow_error.exception))
            self.assertIn(error, str(fast_error.exception))
        # A message-typed field the general path can set: its event, not packed in advance.
        resource = repository.Repository().create_object(events.EVENT_MESSAGE_TYPE)
        event, packed = pub._new_packed_event({"resource": resource})
        self.assertIsNone(packed)
        self.assertEqual(event.additional_data.resource.ObjectType, events.EVENT_MESSAGE_TYPE)
