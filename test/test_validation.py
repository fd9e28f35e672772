"""
Input validation on both brokers: routing keys and publishing origins are
checked before anything reaches the broker; subscriber origins may hold
wildcards; an event nobody subscribes to is not an error.  And a broker
credential file: its secret is never logged, a lax mode draws a warning.
"""

import os

from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from ion.core.messaging.broker.address import BrokerAddress
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.publisher_subscriber import Publisher, SubscriberFactory
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker
from test.test_events import Collector

WILDCARD_ORIGINS = ("#", "*", "a.*", "a.#.b", "x*y", "tag#1")
NON_STR_ORIGINS = (42, 4.5, b"bytes", ["a"], object)


class ValidationTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "validator"})
        yield self.proc.spawn()
        self.pub = events.InfoLoggingEventPublisher(process=self.proc, origin="valid")
        yield self.proc.register_life_cycle_object(self.pub)

    def watch_broker(self):
        """From now on, record every call that would reach the broker."""
        calls = []
        connection = self.container.exchange_manager.connection
        for name in ("publish", "exchange_declare", "queue_declare", "queue_bind"):
            original = getattr(connection, name)

            def recorder(*args, _name=name, _original=original, **kwargs):
                calls.append(_name)
                return _original(*args, **kwargs)

            self.patch(connection, name, recorder)
        return calls

    @defer.inlineCallbacks
    def subscribe(self, **kwargs):
        collector = Collector()
        yield SubscriberFactory(process=self.proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, handler=collector, **kwargs
        )
        return collector

    # --- routing keys -----------------------------------------------------
    @defer.inlineCallbacks
    def test_routing_key_over_255_bytes_fails_before_sending(self):
        event = yield self.pub.create_event(name="long")
        calls = self.watch_broker()
        for origin, size in (("o" * 300, 305), ("é" * 126, 257)):  # 131 characters but 257 bytes
            error = yield self.assertFailure(self.pub.publish_event(event, origin=origin), ValueError)
            self.assertIn("%d bytes" % size, str(error))
            self.assertIn("255", str(error))
            error = yield self.assertFailure(self.pub.create_and_publish_event(origin=origin), ValueError)
            self.assertIn("%d bytes" % size, str(error))
            self.assertRaises(ValueError, self.pub.topic, origin)
        error = yield self.assertFailure(self.pub.publish("raw", routing_key="k" * 256), ValueError)
        self.assertIn("256 bytes", str(error))
        self.assertEqual(calls, [])
        self.assertRaises(ValueError, Publisher, xp_name="xp", routing_key="k" * 256, process=self.proc)

    @defer.inlineCallbacks
    def test_routing_key_of_255_bytes_is_delivered(self):
        origin = "o" * (255 - len("3003."))
        collector = yield self.subscribe(origin=origin)
        yield self.pub.create_and_publish_event(name="longest", origin=origin)
        (data,) = yield collector.wait(1)
        self.assertEqual(data["receiver"], "3003." + origin)

    # --- publishing origins --------------------------------------------------
    @defer.inlineCallbacks
    def test_wildcard_origin_fails_before_sending(self):
        event = yield self.pub.create_event(name="wild")
        calls = self.watch_broker()
        for origin in WILDCARD_ORIGINS:
            error = yield self.assertFailure(self.pub.publish_event(event, origin=origin), ValueError)
            self.assertIn(repr(origin), str(error))
            error = yield self.assertFailure(self.pub.create_and_publish_event(origin=origin), ValueError)
            self.assertIn(repr(origin), str(error))
            error = self.assertRaises(ValueError, events.InfoLoggingEventPublisher, process=self.proc, origin=origin)
            self.assertIn("wildcard", str(error))
        self.assertEqual(calls, [])

    @defer.inlineCallbacks
    def test_non_str_origin_fails_before_sending(self):
        event = yield self.pub.create_event(name="typed")
        calls = self.watch_broker()
        for origin in NON_STR_ORIGINS:
            error = yield self.assertFailure(self.pub.publish_event(event, origin=origin), TypeError)
            self.assertIn(type(origin).__name__, str(error))
            yield self.assertFailure(self.pub.create_and_publish_event(origin=origin), TypeError)
            self.assertRaises(TypeError, events.InfoLoggingEventPublisher, process=self.proc, origin=origin)
        self.assertEqual(calls, [])

    # --- event fields --------------------------------------------------------
    @defer.inlineCallbacks
    def test_wrong_field_type_names_field_and_type(self):
        calls = self.watch_broker()
        error = yield self.assertFailure(self.pub.create_and_publish_event(name=12345), TypeError)
        self.assertEqual(
            str(error), "EventMessage field 'name' takes str (protobuf TYPE_STRING), not int 12345"
        )
        error = yield self.assertFailure(self.pub.create_event(datetime="now"), TypeError)
        self.assertIn("field 'datetime' takes float (protobuf TYPE_DOUBLE), not str 'now'", str(error))
        startup = events.ContainerStartupEventPublisher(process=self.proc, origin="valid")
        error = yield self.assertFailure(startup.create_event(startup_names=["ok", 7]), TypeError)
        self.assertIn("ContainerStartupEventMessage field 'startup_names' takes a list of str", str(error))
        self.assertEqual(calls, [])

    @defer.inlineCallbacks
    def test_no_origin_is_r1_assertion(self):
        nameless = events.InfoLoggingEventPublisher(process=self.proc)
        event = yield nameless.create_event(name="nowhere")
        calls = self.watch_broker()
        for origin in (None, ""):
            error = yield self.assertFailure(nameless.publish_event(event, origin=origin), AssertionError)
            self.assertTrue(str(error).startswith("Error - No origin publishing event message:"))
        self.assertEqual(calls, [])

    @defer.inlineCallbacks
    def test_subscriber_origins_may_hold_wildcards(self):
        star = yield self.subscribe(origin="inst.*")
        hash_ = yield self.subscribe(origin="inst.#")
        for origin in ("inst.a", "inst.a.b", "other.a"):
            yield self.pub.create_and_publish_event(name=origin, origin=origin)
        yield hash_.wait(2)
        yield star.wait(1)
        self.assertEqual(star.names(), ["inst.a"])
        self.assertEqual(hash_.names(), ["inst.a", "inst.a.b"])

    # --- unroutable events ----------------------------------------------------
    @defer.inlineCallbacks
    def test_event_without_subscriber_is_not_an_error(self):
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        collector = yield self.subscribe(origin="heard")
        for i in range(5):
            yield self.pub.create_and_publish_event(name="unheard %d" % i, origin="unheard")
        # Returns come back before this event's confirm, and in order on both brokers.
        yield self.pub.create_and_publish_event(name="heard", origin="heard")
        yield collector.wait(1)
        complaints = [formatEvent(e) for e in logged if e.get("log_level", LogLevel.info) >= LogLevel.warn]
        self.assertEqual(complaints, [])


for_each_broker(ValidationTests, globals(), base=IonTestCase)


class CredentialFileTest(unittest.TestCase):
    """address.py keeps credentials out of the log (test_broker_address covers the rest)."""

    SECRET = "s3cr3t-Pa55word"

    def setUp(self):
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def credfile(self, mode):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("ion %s\n" % self.SECRET)
        os.chmod(path, mode)
        return path

    def logged_text(self):
        return "\n".join(formatEvent(e) + repr(e) for e in self.logged)

    def test_private_credfile_logs_nothing(self):
        address = BrokerAddress.from_options(host="mq", credfile=self.credfile(0o600))
        self.assertEqual(address.password, self.SECRET)
        self.assertEqual(self.logged, [])
        self.assertNotIn(self.SECRET, str(address) + repr(address) + address.description)

    def test_readable_credfile_warns_without_the_secret(self):
        path = self.credfile(0o644)
        BrokerAddress.from_options(host="mq", credfile=path)
        (warning,) = self.logged
        self.assertEqual(warning["log_level"], LogLevel.warn)
        self.assertIn(path, formatEvent(warning))
        self.assertIn("chmod 600", formatEvent(warning))
        self.assertNotIn(self.SECRET, self.logged_text())
