"""
The event monitor service on both brokers, called as R1 clients called it:
sessions, subscription ids, getdata by timestamp, unsubscribe one and all;
and the fixed defects: bounded storage and idle sessions expiring.
"""

import time

from twisted.internet import defer, task

from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.eventmonitor import (
    GETDATA_MESSAGE_TYPE,
    SUBSCRIBE_MESSAGE_TYPE,
    UNSUBSCRIBE_MESSAGE_TYPE,
    EventMonitorService,
    EventMonitorServiceClient,
)
from ion.test.iontest import IonTestCase
from ion.util.state_object import BasicStates
from test.brokers import BrokerTestMixin, for_each_broker, wait_for


class EventMonitorTests(BrokerTestMixin):
    spawnargs = {}

    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.service = yield self.start_service()
        self.proc = Process(spawnargs={"proc-name": "event-monitor-tester"})
        yield self.proc.spawn()
        self.client = EventMonitorServiceClient(proc=self.proc)
        self.pub = events.InfoLoggingEventPublisher(process=self.proc, origin="orig")
        yield self.proc.register_life_cycle_object(self.pub)

    @defer.inlineCallbacks
    def tearDown(self):
        yield self._stop_container()

    @defer.inlineCallbacks
    def start_service(self, clock=None, **spawnargs):
        service = EventMonitorService(spawnargs=dict(spawnargs, **{"proc-name": "eventmonitor"}), clock=clock)
        yield service.spawn()
        self.addCleanup(service.terminate_unless_over)
        return service

    @defer.inlineCallbacks
    def subscribe(self, session="s1", event_id=None, origin=None):
        msg = yield self.proc.message_client.create_instance(SUBSCRIBE_MESSAGE_TYPE)
        msg.session_id = session
        if event_id is not None:
            msg.event_id = event_id
        if origin is not None:
            msg.origin = origin
        reply = yield self.client.subscribe(msg)
        return reply

    @defer.inlineCallbacks
    def getdata(self, session="s1", timestamp=None, subscriber_ids=()):
        msg = yield self.proc.message_client.create_instance(GETDATA_MESSAGE_TYPE)
        msg.session_id = session
        if timestamp is not None:
            msg.timestamp = timestamp
        msg.subscriber_id.extend(subscriber_ids)
        reply = yield self.client.getdata(msg)
        return reply

    @defer.inlineCallbacks
    def unsubscribe(self, session="s1", subscription_id=None):
        msg = yield self.proc.message_client.create_instance(UNSUBSCRIBE_MESSAGE_TYPE)
        msg.session_id = session
        if subscription_id is not None:
            msg.subscription_id = subscription_id
        reply = yield self.client.unsubscribe(msg)
        return reply

    def stored(self, session, subscription_id):
        return len(self.service.sessions[session].subscriptions[subscription_id].events)

    @defer.inlineCallbacks
    def publish(self, *names, origin="orig"):
        for name in names:
            yield self.pub.create_and_publish_event(name=name, origin=origin)

    @staticmethod
    def by_id(reply):
        return {d.subscription_id: d for d in reply.data}

    @defer.inlineCallbacks
    def test_subscribe_getdata(self):
        reply = yield self.subscribe(event_id=events.LOGGING_INFO_EVENT_ID, origin="orig")
        self.assertEqual(reply.MessageType.object_id, 2336)
        self.assertEqual(reply.session_id, "s1")
        subid = reply.subscription_id
        self.assertEqual(len(subid), 6)
        yield self.publish("first", "second")
        yield self.publish("elsewhere", origin="other")
        yield wait_for(lambda: self.stored("s1", subid) == 2)
        data = yield self.getdata(timestamp="0")
        self.assertEqual(data.MessageType.object_id, 2339)
        self.assertEqual(data.session_id, "s1")
        self.assertEqual(len(data.data), 1)
        sub = data.data[0]
        self.assertEqual(sub.subscription_id, subid)
        self.assertEqual(sub.subscription_desc, "3003.orig")
        self.assertEqual([e.name for e in sub.events], ["first", "second"])
        self.assertEqual(sub.events[0].origin, "orig")
        self.assertEqual(sub.events[0].additional_data.ObjectType.object_id, 2326)
        later = yield self.getdata(timestamp=str(time.time() + 1))
        self.assertEqual(len(later.data[0].events), 0)
        bad = yield self.getdata(timestamp="not a number")
        self.assertEqual(len(bad.data[0].events), 2)

    @defer.inlineCallbacks
    def test_getdata_without_timestamp_continues_from_last_request(self):
        reply = yield self.subscribe()
        subid = reply.subscription_id
        yield self.publish("one")
        yield wait_for(lambda: self.stored("s1", subid) == 1)
        first = yield self.getdata()
        self.assertEqual([e.name for e in first.data[0].events], ["one"])
        self.assertEqual(self.by_id(first)[subid].subscription_desc, "*.#")
        again = yield self.getdata()
        self.assertEqual(len(again.data[0].events), 0)
        yield self.publish("two")
        yield wait_for(lambda: self.stored("s1", subid) == 2)
        third = yield self.getdata()
        self.assertEqual([e.name for e in third.data[0].events], ["two"])

    @defer.inlineCallbacks
    def test_unknown_session(self):
        data = yield self.getdata(session="nobody", timestamp="0")
        self.assertEqual(data.session_id, "nobody")
        self.assertEqual(len(data.data), 0)
        yield self.unsubscribe(session="nobody")

    @defer.inlineCallbacks
    def test_getdata_filtered_and_unsubscribe_one(self):
        a = (yield self.subscribe(origin="orig")).subscription_id
        b = (yield self.subscribe(event_id=events.LOGGING_INFO_EVENT_ID)).subscription_id
        self.assertNotEqual(a, b)
        yield self.publish("x")
        yield wait_for(lambda: self.stored("s1", a) == 1 and self.stored("s1", b) == 1)
        only_b = yield self.getdata(timestamp="0", subscriber_ids=[b])
        self.assertEqual(list(self.by_id(only_b)), [b])
        sub_a = self.service.sessions["s1"].subscriptions[a].subscriber
        yield self.unsubscribe(subscription_id=a)
        self.assertEqual(sub_a.state, BasicStates.TERMINATED)
        self.assertNotIn(sub_a, self.service._registered_life_cycle_objects)
        remaining = yield self.getdata(timestamp="0")
        self.assertEqual(list(self.by_id(remaining)), [b])

    @defer.inlineCallbacks
    def test_empty_subscription_id_unsubscribes_all(self):
        yield self.subscribe()
        yield self.subscribe(origin="orig")
        other = yield self.subscribe(session="s2")
        subscribers = [s.subscriber for s in self.service.sessions["s1"].subscriptions.values()]
        yield self.unsubscribe(subscription_id="")
        self.assertNotIn("s1", self.service.sessions)
        self.assertEqual([s.state for s in subscribers], [BasicStates.TERMINATED] * 2)
        for sub in subscribers:
            self.assertNotIn(sub, self.service._registered_life_cycle_objects)
        self.assertIn(other.subscription_id, self.service.sessions["s2"].subscriptions)
        data = yield self.getdata(timestamp="0")
        self.assertEqual(len(data.data), 0)

    @defer.inlineCallbacks
    def test_stored_events_are_bounded(self):
        yield self.service.terminate()
        self.service = yield self.start_service(max_events=3)
        subid = (yield self.subscribe()).subscription_id
        yield self.publish("e1", "e2", "e3", "e4", "e5")
        subscription = self.service.sessions["s1"].subscriptions[subid]
        yield wait_for(lambda: subscription.dropped == 2)
        data = yield self.getdata(timestamp="0")
        self.assertEqual([e.name for e in data.data[0].events], ["e3", "e4", "e5"])

    @defer.inlineCallbacks
    def test_idle_sessions_expire(self):
        yield self.service.terminate()
        clock = task.Clock()
        self.service = yield self.start_service(clock=clock, session_timeout=10)
        yield self.subscribe(session="idle")
        subscriber = next(iter(self.service.sessions["idle"].subscriptions.values())).subscriber
        clock.advance(5)
        yield self.subscribe(session="busy")
        clock.advance(5)  # idle: 10 s without a request; busy: 5 s
        yield wait_for(lambda: "idle" not in self.service.sessions)
        self.assertIn("busy", self.service.sessions)
        yield wait_for(lambda: subscriber.state == BasicStates.TERMINATED)
        self.assertNotIn(subscriber, self.service._registered_life_cycle_objects)
        clock.advance(5)
        yield wait_for(lambda: "busy" not in self.service.sessions)

    def test_bad_bounds(self):
        self.assertRaises(ValueError, EventMonitorService, spawnargs={"max_events": 0})
        self.assertRaises(ValueError, EventMonitorService, spawnargs={"session_timeout": "soon"})


EventMonitorMemoryTest, EventMonitorRabbitTest = for_each_broker(EventMonitorTests, globals(), base=IonTestCase)
