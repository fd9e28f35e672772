"""
Events on both brokers: what R1's test_events.py checked (written anew),
every publisher class end to end, the container's own events, and the R1
defects that are fixed here.
"""

import time

from twisted.internet import defer

from ion.core import ioninit
from ion.core.messaging.broker.interface import NotFound, PreconditionFailed
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker, wait_for


class Collector:
    """An ondata handler that keeps events and lets a test wait for them."""

    def __init__(self):
        self.events = []
        self._waiters = []

    def __call__(self, data):
        data["content"].Repository.persistent = True  # what R1 handlers did; harmless here
        self.events.append(data)
        for count, d in list(self._waiters):
            if len(self.events) >= count:
                self._waiters.remove((count, d))
                d.callback(self.events)

    def wait(self, count=1):
        if len(self.events) >= count:
            return defer.succeed(self.events)
        d = defer.Deferred()
        self._waiters.append((count, d))
        return d

    def names(self):
        return [e["content"].name for e in self.events]


# Fields for one event of each publisher class: EventMessage fields and payload fields.
PAYLOAD_FIELDS = {
    events.ResourceLifecycleEventPublisher: {"state": "ACTIVE"},
    events.ContainerLifecycleEventPublisher: {"state": "READY"},
    events.ProcessLifecycleEventPublisher: {"state": "TERMINATED"},
    events.AppLoaderEventPublisher: {"app_name": "demo", "state": "STOPPED"},
    events.ContainerStartupEventPublisher: {"startup_names": ["a.rel", "b.app"]},
    events.DatasourceUpdateEventPublisher: {"task_id": "task-1"},
    events.DatasourceUnavailableEventPublisher: {
        "datasource_id": "ds",
        "dataset_id": "set",
        "title": "t",
        "url": "http://x",
        "error_explanation": "down",
    },
    events.DatasetSupplementAddedEventPublisher: {
        "datasource_id": "ds",
        "dataset_id": "set",
        "title": "t",
        "url": "u",
        "start_datetime_millis": -5,
        "end_datetime_millis": 2**40,
        "number_of_timesteps": 7,
    },
    events.BusinessStateModificationEventPublisher: {},
    events.DatasetChangeEventPublisher: {"dataset_id": "set"},
    events.DatasourceChangeEventPublisher: {"datasource_id": "ds"},
    events.IngestionProcessingEventPublisher: {
        "dataset_id": "set",
        "ingestion_process_id": "ing",
        "conv_id": "c1",
        "processing_step": "chunk",
    },
    events.NewSubscriptionEventPublisher: {},
    events.DelSubscriptionEventPublisher: {},
    events.ScheduleEventPublisher: {"task_id": "sched"},
    events.CriticalLoggingEventPublisher: {},
    events.ErrorLoggingEventPublisher: {},
    events.InfoLoggingEventPublisher: {},
    events.DataBlockEventPublisher: {"dataset_id": "set", "datasource_id": "ds", "data_block": "1,2,3"},
    events.InstrumentSampleDataEventPublisher: {
        "conductivity": 3.5,
        "pressure": 10.25,
        "temperature": 11.5,
        "sound_velocity": 1500.0,
        "salinity": 35.0,
        "time": "12:00",
        "date": "2011-05-21",
    },
}

SUBSCRIBER_FOR = {
    1001: events.ResourceLifecycleEventSubscriber,
    1051: events.ContainerLifecycleEventSubscriber,
    1052: events.ProcessLifecycleEventSubscriber,
    1075: events.AppLoaderEventSubscriber,
    1076: events.ContainerStartupEventSubscriber,
    1101: events.DatasourceUpdateEventSubscriber,
    1102: events.DatasourceUnavailableEventSubscriber,
    1111: events.DatasetSupplementAddedEventSubscriber,
    1112: events.BusinessStateChangeSubscriber,
    1113: events.DatasetChangeEventSubscriber,
    1114: events.DatasourceChangeEventSubscriber,
    1115: events.IngestionProcessingEventSubscriber,
    1201: events.NewSubscriptionEventSubscriber,
    1202: events.DelSubscriptionEventSubscriber,
    2001: events.ScheduleEventSubscriber,
    3001: events.CriticalLoggingEventSubscriber,
    3002: events.ErrorLoggingEventSubscriber,
    3003: events.InfoLoggingEventSubscriber,
    4001: events.DataBlockEventSubscriber,
}


class EventTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "event-tester"})
        yield self.proc.spawn()

    @defer.inlineCallbacks
    def subscribe(self, cls=events.EventSubscriber, process=None, **kwargs):
        collector = Collector()
        sub = yield SubscriberFactory(process=process or self.proc).build(
            subscriber_type=cls, handler=collector, **kwargs
        )
        return sub, collector

    @defer.inlineCallbacks
    def publisher(self, cls=events.InfoLoggingEventPublisher, **kwargs):
        pub = cls(process=self.proc, **kwargs)
        yield self.proc.register_life_cycle_object(pub)
        return pub

    # --- R1 test_events.py: publisher ------------------------------------
    def test_create(self):
        base = events.EventPublisher(process=self.proc)
        self.assertIsNone(base.msg_type)
        self.assertIsNone(base.event_id)
        self.assertRaises(AssertionError, base.topic, None)
        self.assertRaises(AssertionError, base.topic, "orig")
        rl = events.ResourceLifecycleEventPublisher(process=self.proc, origin="orig")
        self.assertEqual(rl.topic("orig"), "1001.orig")
        self.assertEqual(rl._origin, "orig")
        self.assertRaises(AssertionError, rl.topic, "")
        pl = events.ProcessLifecycleEventPublisher(process=self.proc)
        self.assertEqual(pl.msg_type, rl.msg_type)
        self.assertNotEqual(pl.event_id, rl.event_id)
        self.assertEqual(rl.publisher_config["exchange"], "%s.events.topic" % ioninit.sys_name)
        self.assertEqual(events.EventPublisher.Status.NO_CACHE, "NO_CACHE")
        self.assertEqual(events.AppLoaderEventPublisher.State.STARTED, "STARTED")

    def test_no_process(self):
        from ion.core.messaging.message_client import MessageClientError

        self.assertRaises(MessageClientError, events.InfoLoggingEventPublisher)

    @defer.inlineCallbacks
    def test_create_event(self):
        yield self.assertFailure(events.EventPublisher(process=self.proc).create_event(), AssertionError)
        pub = events.ResourceLifecycleEventPublisher(process=self.proc, origin="orig")
        before = time.time()
        msg = yield pub.create_event()
        self.assertEqual(msg.MessageType.object_id, 2322)
        self.assertEqual(msg.additional_data._MessageTypeIdentifier._ID, 2323)
        self.assertTrue(before <= msg.datetime <= time.time())
        self.assertFalse(msg.IsFieldSet("origin"))
        msg = yield pub.create_event(origin="elsewhere")
        self.assertEqual(msg.origin, "elsewhere")
        state_enum = msg.additional_data.State
        msg = yield pub.create_event(state=state_enum.ACTIVE)
        self.assertEqual(msg.additional_data.state, 3)
        msg = yield pub.create_event(state=pub.State.ACTIVE)
        self.assertEqual(msg.additional_data.state, 3)
        msg = yield pub.create_event(state="ERROR", datetime=12345.5)
        self.assertEqual((msg.additional_data.state, msg.datetime), (5, 12345.5))
        error = yield self.assertFailure(pub.create_event(state="NOEXIST"), AssertionError)
        self.assertIn("NOEXIST", str(error))
        msg = yield pub.create_event(status=pub.Status.NO_CACHE)
        self.assertEqual(msg.status, 4)
        error = yield self.assertFailure(pub.create_event(blah="x"), Exception)
        self.assertIn("unused kwargs", str(error))
        self.assertIn("blah", str(error))
        # A wrapper member's name is not a field (R1 raised KeyError here).
        error = yield self.assertFailure(pub.create_event(Repository="x"), Exception)
        self.assertIn("unused kwargs", str(error))

    @defer.inlineCallbacks
    def test_publish_event_routing(self):
        pub = events.ResourceLifecycleEventPublisher(process=self.proc, origin="species")
        sent = []
        pub.publish = lambda data, routing_key=None: sent.append((data, routing_key)) or defer.succeed(None)
        msg = yield pub.create_event()
        yield pub.publish_event(msg, origin="1234-abcdefg")
        yield pub.publish_event(msg)
        msg = yield pub.create_and_publish_event(origin="zxy-402")
        self.assertEqual([key for _, key in sent], ["1001.1234-abcdefg", "1001.species", "1001.zxy-402"])
        self.assertEqual(sent[-1][0].origin, "zxy-402")
        self.assertIs(sent[-1][0], msg)

    @defer.inlineCallbacks
    def test_publish_without_origin(self):
        pub = events.ResourceLifecycleEventPublisher(process=self.proc)
        msg = yield pub.create_event()
        error = yield self.assertFailure(pub.publish_event(msg), AssertionError)
        self.assertTrue(str(error).startswith("Error - No origin publishing event message:"))
        nameless = events.LoggingEventPublisher(process=self.proc, origin="o")
        yield self.assertFailure(nameless.create_and_publish_event(), AssertionError)

    # --- R1 test_events.py: subscriber -----------------------------------
    def test_subscriber_binding_keys(self):
        self.assertEqual(events.EventSubscriber(process=self.proc)._binding_key, "*.#")
        self.assertEqual(events.ResourceLifecycleEventSubscriber(process=self.proc)._binding_key, "1001.#")
        sub = events.ResourceLifecycleEventSubscriber(process=self.proc, origin="ucsd")
        self.assertEqual(sub._binding_key, "1001.ucsd")
        self.assertEqual(events.EventSubscriber(process=self.proc, origin="x")._binding_key, "*.x")
        explicit = events.EventSubscriber(process=self.proc, event_id=5, origin="x", binding_key="a.b")
        self.assertEqual(explicit._binding_key, "a.b")
        self.assertEqual(events.ResourceLifecycleEventSubscriber.event_id, 1001)
        self.assertEqual(events.EventSubscriber(process=self.proc, event_id=7)._binding_key, "7.#")
        self.assertIsNone(events.EventSubscriber.event_id)

    def test_queue_name_prefix(self):
        sys_name = ioninit.sys_name
        sub = events.EventSubscriber(process=self.proc, queue_name="prefix_me")
        self.assertEqual(sub._queue_name, "%s.prefix_me" % sys_name)
        again = events.EventSubscriber(process=self.proc, queue_name="%s.prefix_me" % sys_name)
        self.assertEqual(again._queue_name, "%s.prefix_me" % sys_name)
        lookalike = events.EventSubscriber(process=self.proc, queue_name="%sX" % sys_name)
        self.assertEqual(lookalike._queue_name, "%s.%sX" % (sys_name, sys_name))
        self.patch(ioninit, "sys_name", None)
        self.assertEqual(events.EventSubscriber(process=self.proc, queue_name="plain")._queue_name, "plain")

    @defer.inlineCallbacks
    def test_round_trip_with_wildcard_origin(self):
        origin = "chan1.%s" % self.proc.id.full
        _, exact = yield self.subscribe(events.InfoLoggingEventSubscriber, origin=origin)
        _, wild = yield self.subscribe(events.InfoLoggingEventSubscriber, origin="chan1.*")
        _, deep = yield self.subscribe(events.EventSubscriber, origin="chan1.#")
        pub = yield self.publisher(origin=origin)
        yield pub.create_and_publish_event(name="TestEvent")
        for collector in (exact, deep):
            (data,) = yield collector.wait(1)
            self.assertEqual(data["content"].name, "TestEvent")
            self.assertEqual(data["receiver"], "3003.%s" % origin)
        # The process id has a dot, so "chan1.*" (one word) does not match it.
        yield pub.create_and_publish_event(name="Short", origin="chan1.single")
        (data,) = yield wild.wait(1)
        self.assertEqual(data["content"].name, "Short")

    # --- every publisher class, end to end ---------------------------------
    @defer.inlineCallbacks
    def test_every_publisher_class(self):
        tag = self.unique_name("all")
        collectors = {}
        for event_id, cls in SUBSCRIBER_FOR.items():
            _, collectors[event_id] = yield self.subscribe(cls, origin="%s.#" % tag)
        published = {}
        for pub_cls, fields in PAYLOAD_FIELDS.items():
            pub = yield self.publisher(pub_cls, origin="%s.data" % tag)
            msg = yield pub.create_and_publish_event(name=pub_cls.__name__, description="d", status="CACHED", **fields)
            published.setdefault(pub_cls.event_id, []).append((pub_cls, fields))
            self.assertEqual(msg.name, pub_cls.__name__)
        # One more per subscriber: queues are FIFO, so its arrival means everything before it arrived too.
        for event_id in SUBSCRIBER_FOR:
            end = events.EventPublisher(process=self.proc, origin="%s.end" % tag)
            end.event_id, end.msg_type = event_id, events.LOGGING_EVENT_MESSAGE_TYPE
            yield self.proc.register_life_cycle_object(end)
            yield end.create_and_publish_event(name="END")
        for event_id, collector in collectors.items():
            expected = published.get(event_id, [])
            received = yield collector.wait(len(expected) + 1)
            self.assertEqual(collector.names()[-1], "END")
            self.assertEqual(collector.names()[:-1], [cls.__name__ for cls, _ in expected])
            for data, (pub_cls, fields) in zip(received, expected):
                content = data["content"]
                self.assertEqual(data["receiver"], "%s.%s.data" % (event_id, tag))
                self.assertEqual((content.description, content.status), ("d", 2))
                self.assertEqual(content.additional_data.ObjectType, pub_cls.msg_type)
                payload = content.additional_data
                for key, value in fields.items():
                    got = getattr(payload, key)
                    if isinstance(value, str) and payload._Properties[key].field_type == "TYPE_ENUM":
                        got = payload._Properties[key].field_enum.lookup[got]
                    if isinstance(value, list):
                        got = list(got)
                    self.assertEqual(got, value, "%s.%s" % (pub_cls.__name__, key))

    # --- events the container publishes ------------------------------------
    @defer.inlineCallbacks
    def test_process_lifecycle_events(self):
        proc = Process(spawnargs={"proc-name": "watched"})
        _, collector = yield self.subscribe(events.ProcessLifecycleEventSubscriber, origin=proc.id.full)
        yield proc.spawn()
        yield proc.terminate()
        received = yield collector.wait(3)
        states = [e["content"].additional_data.state for e in received]
        self.assertEqual(states, [2, 3, 4])  # READY, ACTIVE, TERMINATED
        for data in received:
            self.assertEqual(data["receiver"], "1052.%s" % proc.id.full)
            self.assertFalse(data["content"].IsFieldSet("origin"))
            self.assertEqual(data["sender"], proc.id.full)

    @defer.inlineCallbacks
    def test_app_loader_event(self):
        _, collector = yield self.subscribe(events.AppLoaderEventSubscriber, origin="hello")
        yield self.container.start_app("res/apps/hello.app")
        (data,) = yield collector.wait(1)
        content = data["content"]
        self.assertEqual((content.additional_data.app_name, content.additional_data.state), ("hello", 1))
        self.assertEqual(content.origin, "hello")

    @defer.inlineCallbacks
    def test_container_startup_event(self):
        _, collector = yield self.subscribe(events.ContainerStartupEventSubscriber, origin=self.container.id)
        yield self.container.publish_startup_event(["res/deploy/hello.rel"])
        (data,) = yield collector.wait(1)
        self.assertEqual(list(data["content"].additional_data.startup_names), ["res/deploy/hello.rel"])
        self.assertEqual(data["content"].origin, self.container.id)

    # --- R1 defects, fixed ----------------------------------------------
    @defer.inlineCallbacks
    def test_unsubscribe(self):
        sub, collector = yield self.subscribe(events.InfoLoggingEventSubscriber, origin="unsub")
        pub = yield self.publisher(origin="unsub")
        yield pub.create_and_publish_event(name="first")
        yield collector.wait(1)
        queue = sub.queue
        yield sub.unsubscribe()
        connection = self.container.exchange_manager.connection
        yield self.assertFailure(connection.queue_declare(queue, passive=True), NotFound)
        self.assertIsNone(sub._recv.consumer)
        yield pub.create_and_publish_event(name="while away")
        yield sub.subscribe()
        yield pub.create_and_publish_event(name="back")
        yield collector.wait(2)
        self.assertEqual(collector.names(), ["first", "back"])

    @defer.inlineCallbacks
    def test_unsubscribe_named_durable_queue_keeps_queue_drops_binding(self):
        name = self.unique_name("durable")
        sub, collector = yield self.subscribe(
            events.InfoLoggingEventSubscriber, origin="dur", queue_name=name, durable=True, auto_delete=False
        )
        connection = self.container.exchange_manager.connection
        self.addCleanup(connection.queue_delete, sub._queue_name)
        pub = yield self.publisher(origin="dur")
        yield pub.create_and_publish_event(name="kept")
        yield collector.wait(1)
        yield sub.unsubscribe()
        yield connection.queue_declare(sub._queue_name, passive=True)  # still there
        yield pub.create_and_publish_event(name="unbound")  # no binding: not queued
        yield sub.subscribe()
        yield pub.create_and_publish_event(name="after")
        yield collector.wait(2)
        self.assertEqual(collector.names(), ["kept", "after"])

    @defer.inlineCallbacks
    def test_handler_in_place_before_consuming(self):
        # Events already waiting in a named queue reach the factory's handler, not the default ondata.
        name = "%s.%s" % (ioninit.sys_name, self.unique_name("waiting"))
        connection = self.container.exchange_manager.connection
        pub = yield self.publisher(origin="early")
        yield connection.queue_declare(name, auto_delete=True)
        yield connection.queue_bind(name, pub._xp_name, "3003.early")
        for i in range(3):
            yield pub.create_and_publish_event(name="early %d" % i)
        _, collector = yield self.subscribe(events.InfoLoggingEventSubscriber, origin="early", queue_name=name)
        yield collector.wait(3)
        self.assertEqual(collector.names(), ["early 0", "early 1", "early 2"])

    @defer.inlineCallbacks
    def test_durable_subscriber_does_not_redeclare_exchange(self):
        pub = yield self.publisher(origin="flags")
        name = self.unique_name("durable")
        sub, collector = yield self.subscribe(
            events.InfoLoggingEventSubscriber, origin="flags", queue_name=name, durable=True, auto_delete=False
        )
        self.addCleanup(self.container.exchange_manager.connection.queue_delete, sub._queue_name)
        yield pub.create_and_publish_event(name="fine")
        yield collector.wait(1)
        # The queue binds to the durable companion; the events exchange keeps R1's flags,
        # so an R1 peer declaring it as R1 did still can.
        self.assertEqual(sub.consumer_config["exchange"], pub._xp_name + ".durable")
        yield self.container.exchange_manager.connection.exchange_declare(
            pub._xp_name, "topic", durable=False, auto_delete=True
        )

    def count_declarations(self, connection):
        """The names `connection` declares exchanges for from now on, in order."""
        declared = []
        original = connection.exchange_declare

        def counting(name, *args, **kwargs):
            declared.append(name)
            return original(name, *args, **kwargs)

        self.patch(connection, "exchange_declare", counting)
        return declared

    @defer.inlineCallbacks
    def test_exchange_declared_once_per_publisher(self):
        declared = self.count_declarations(self.container.exchange_manager.connection)
        pub = yield self.publisher(origin="count")
        for i in range(10):
            yield pub.create_and_publish_event(name="n%d" % i)
        self.assertLessEqual(declared.count(pub._xp_name), 1)

    @defer.inlineCallbacks
    def test_exchange_declared_again_once_our_last_binding_went(self):
        """
        RabbitMQ auto-deletes the events exchange with the last binding: the
        next publish declares it first instead of meeting a 404 that closes
        the channel (what every RabbitMQ shutdown logged).
        """
        connection = self.container.exchange_manager.connection
        pub = yield self.publisher(origin="again")
        sub, collector = yield self.subscribe(events.InfoLoggingEventSubscriber, origin="again")
        yield pub.create_and_publish_event(name="bound")
        yield collector.wait(1)
        declared = self.count_declarations(connection)
        yield pub.create_and_publish_event(name="still bound")
        self.assertEqual(declared, [])
        yield sub.unsubscribe()
        yield pub.create_and_publish_event(name="unbound")
        yield pub.create_and_publish_event(name="unbound again")
        self.assertEqual(declared, [pub._xp_name])

    @defer.inlineCallbacks
    def test_failed_publish_fails_deferred(self):
        # The exchange exists with other flags: the broker refuses the declaration.
        connection = self.container.exchange_manager.connection
        xp = "%s.%s" % (ioninit.sys_name, self.unique_name("xp"))
        yield connection.exchange_declare(xp, type="direct", durable=False, auto_delete=False)
        self.addCleanup(connection.exchange_delete, xp)
        pub = events.InfoLoggingEventPublisher(process=self.proc, origin="refused", xp_name=xp)
        yield self.assertFailure(pub.create_and_publish_event(name="nope"), PreconditionFailed)

    @defer.inlineCallbacks
    def test_undecodable_messages_rejected_subscriber_goes_on(self):
        sub, collector = yield self.subscribe(events.InfoLoggingEventSubscriber, origin="bad")
        connection = self.container.exchange_manager.connection
        for body in (b"\x00\x01garbage", b"\x82\xa7content\xa3ab", b"\x82\xa8encoding\xaaION R1 GPB\xa7content\xa3xyz"):
            yield connection.publish(sub._xp_name, "3003.bad", body)
        pub = yield self.publisher(origin="bad")
        yield pub.create_and_publish_event(name="good")
        yield collector.wait(1)
        self.assertEqual(collector.names(), ["good"])
        self.assertEqual(sub.stats["undecodable"], 3)

    @defer.inlineCallbacks
    def test_failing_handler_acks_and_goes_on(self):
        seen = []

        def handler(data):
            seen.append(data["content"].name)
            if data["content"].name == "boom":
                raise ValueError("handler failed on purpose")

        yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin="fail", handler=handler
        )
        pub = yield self.publisher(origin="fail")
        yield pub.create_and_publish_event(name="boom")
        yield pub.create_and_publish_event(name="next")

        yield wait_for(lambda: seen == ["boom", "next"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    # --- subscription modes ---------------------------------------------
    @defer.inlineCallbacks
    def test_prefetch_above_one(self):
        held = []  # (name, Deferred) of events being handled, none finished yet
        done = []

        def hold(data):
            d = defer.Deferred()
            held.append((data["content"].name, d))
            return d.addCallback(lambda _: done.append(data["content"].name))

        sub = yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin="pf", handler=hold, prefetch_count=10,
            concurrency=10,
        )
        self.assertEqual(sub.consumer_config["prefetch_count"], 10)
        pub = yield self.publisher(origin="pf")
        for i in range(15):
            yield pub.create_and_publish_event(name="e%d" % i)
        # Ten handled at once (asked for: concurrency=10), and no more.
        yield wait_for(lambda: len(held) == 10)
        while held:
            held.pop(0)[1].callback(None)
            yield wait_for(lambda: held or len(done) == 15)
        self.assertEqual(sorted(done), sorted("e%d" % i for i in range(15)))
        self.assertRaises(ValueError, events.EventSubscriber, process=self.proc, prefetch_count=0)

    @defer.inlineCallbacks
    def test_anonymous_queues_broadcast(self):
        _, first = yield self.subscribe(events.InfoLoggingEventSubscriber, origin="bcast")
        _, second = yield self.subscribe(events.InfoLoggingEventSubscriber, origin="bcast")
        pub = yield self.publisher(origin="bcast")
        for i in range(5):
            yield pub.create_and_publish_event(name="e%d" % i)
        yield first.wait(5)
        yield second.wait(5)
        self.assertEqual(first.names(), second.names())

    @defer.inlineCallbacks
    def test_named_queue_competing_consumers(self):
        name = self.unique_name("shared")
        other = Process(spawnargs={"proc-name": "second-consumer"})
        yield other.spawn()
        first_sub, first = yield self.subscribe(events.InfoLoggingEventSubscriber, origin="compete", queue_name=name)
        second_sub, second = yield self.subscribe(
            events.InfoLoggingEventSubscriber, process=other, origin="compete", queue_name=name
        )
        self.assertEqual(first_sub.queue, second_sub.queue)
        pub = yield self.publisher(origin="compete")
        for i in range(20):
            yield pub.create_and_publish_event(name="e%d" % i)

        yield wait_for(lambda: len(first.events) + len(second.events) == 20)
        self.assertEqual(sorted(first.names() + second.names()), sorted("e%d" % i for i in range(20)))
        self.assertTrue(first.events and second.events)


for_each_broker(EventTests, globals(), base=IonTestCase)
