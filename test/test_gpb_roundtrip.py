"""GPB content between two processes, on both brokers: every field, enum and link arrives intact."""

from twisted.internet import defer

from ion.core.messaging.envelope import encode
from ion.core.messaging.message_client import MessageInstance
from ion.core.object.object_utils import create_type_identifier
from ion.core.process.process import Process
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker

EVENT = create_type_identifier(object_id=2322, version=1)
LIFECYCLE = create_type_identifier(object_id=2323, version=1)


class Keeper(Process):
    """Keeps what op_keep receives and answers with it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept = []

    def op_keep(self, content, headers, msg):
        self.kept.append((content, headers))
        return self.reply_ok(msg, content)


class GPBRoundTripTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.sender = Process(spawnargs={"proc-name": "sender"})
        self.keeper = Keeper(spawnargs={"proc-name": "keeper"})
        yield self.sender.spawn()
        yield self.keeper.spawn()

    @defer.inlineCallbacks
    def make_event(self):
        msg = yield self.sender.message_client.create_instance(EVENT, MessageName="round trip")
        msg.name = "TestEvent"
        msg.description = "ünïcode ✓"
        msg.datetime = 1306000000.25
        msg.origin = "somewhere"
        msg.status = msg.Status.NO_CACHE
        payload = msg.CreateObject(LIFECYCLE)
        payload.state = payload.State.ACTIVE
        msg.additional_data = payload
        return msg

    def assertSameEvent(self, got):
        self.assertIsInstance(got, MessageInstance)
        self.assertEqual(got.MessageType, EVENT)
        self.assertEqual(got.MessageName, "round trip")
        self.assertEqual((got.name, got.description, got.datetime, got.origin), ("TestEvent", "ünïcode ✓", 1306000000.25, "somewhere"))
        self.assertEqual(got.status, 4)
        self.assertEqual(got.Status.lookup[got.status], "NO_CACHE")
        self.assertEqual(got.additional_data.ObjectType, LIFECYCLE)
        self.assertEqual(got.additional_data.state, got.additional_data.State.ACTIVE)

    @defer.inlineCallbacks
    def test_event_shaped_message_between_processes(self):
        msg = yield self.make_event()
        content, headers, _ = yield self.sender.rpc_send(self.keeper.id.full, "keep", msg)
        kept, kept_headers = self.keeper.kept[0]
        self.assertEqual(kept_headers["encoding"], "ION R1 GPB")
        self.assertSameEvent(kept)
        self.assertEqual(kept.MessageIdentity, msg.MessageIdentity)
        # ... and back again in the reply.
        self.assertEqual(headers["encoding"], "ION R1 GPB")
        self.assertSameEvent(content)

    @defer.inlineCallbacks
    def test_forged_structure_rejected_next_message_delivered(self):
        connection = self.container.exchange_manager.connection
        forged = encode("x.1", self.keeper.id.full, "keep", b"\x0a\x05forged", {"encoding": "ION R1 GPB"})
        yield connection.publish("magnet.topic", self.keeper.id.full, forged.body)
        msg = yield self.make_event()
        yield self.sender.rpc_send(self.keeper.id.full, "keep", msg)
        self.assertEqual(len(self.keeper.kept), 1)
        self.assertSameEvent(self.keeper.kept[0][0])


for_each_broker(GPBRoundTripTests, globals(), base=IonTestCase)
