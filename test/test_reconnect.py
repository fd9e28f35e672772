"""
Reconnect and resume on RabbitMQ (issue 5): a broker restart in the middle
of confirmed publishing, a connection cut by a TCP proxy, calls made while
disconnected, close() while reconnecting, broker-named queues renamed.

The restart test stops and starts a private RabbitMQ node of its own
(test/rabbit_node.py), never the shared one.  The tests print FIGURES lines:
events sent, received, duplicates, time to resume.
"""

import os

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.trial import unittest

from ion.core import ioninit
from ion.core.messaging.broker import connect
from ion.core.messaging.broker.address import BrokerAddress
from ion.core.messaging.broker.interface import ConnectionLost
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory
from ion.test.iontest import IonTestCase
from ion.util.state_object import BasicStates
from test import rabbit_node
from test.brokers import RABBIT_URL, AckingInbox, wait_for
from test.proxy import TcpProxy

log = Logger()

RESTART_EVENTS = 10000
WINDOW = 200  # publishes awaiting their confirm at once
RESUME_LIMIT = 5.0  # seconds from the broker's return (or the cut) until consumers get messages again
HELLO = {"name": "hello", "module": "ion.services.examples.hello_service", "class": "HelloService"}


def figures(test, **values):
    """One line the lead can copy into the closing note."""
    line = "FIGURES %s: %s" % (test, ", ".join("%s=%s" % item for item in values.items()))
    log.info(line)
    print("\n" + line, flush=True)


# -- RabbitMQ control ------------------------------------------------------------


@defer.inlineCallbacks
def rabbit_accepts(address):
    """True when RabbitMQ's AMQP listener takes TCP connections."""
    endpoint = TCP4ClientEndpoint(reactor, address.host, address.port, timeout=2)
    try:
        probe = yield endpoint.connect(Factory.forProtocol(Protocol))
    except ConnectError:
        return False
    probe.transport.abortConnection()
    return True


@defer.inlineCallbacks
def wait_until_accepting(address, timeout):
    deadline = reactor.seconds() + timeout
    while not (yield rabbit_accepts(address)):
        if reactor.seconds() > deadline:
            raise AssertionError("%s takes no connections after %s s" % (address.description, timeout))
        yield task.deferLater(reactor, 0.05, lambda: None)


# -- helpers -----------------------------------------------------------------------


class Collector:
    """An ondata handler that records each event's name and arrival time."""

    def __init__(self):
        self.arrivals = []  # (name, reactor time)
        self.distinct = set()

    def __call__(self, data):
        name = data["content"].name
        self.arrivals.append((name, reactor.seconds()))
        self.distinct.add(name)

    def names(self):
        return [name for name, _ in self.arrivals]

    def first_after(self, moment):
        """Arrival time of the first event that came after `moment`, or None."""
        return next((at for _, at in self.arrivals if at > moment), None)


def ready(connection):
    return connection._state.ready


def unique(prefix):
    """A queue or topic name no other test uses."""
    return "%s-%s" % (prefix, os.urandom(6).hex())


class ReconnectTestBase(IonTestCase):
    timeout = 60
    broker_url = RABBIT_URL

    @defer.inlineCallbacks
    def setUp(self):
        if not (yield rabbit_accepts(BrokerAddress.from_url(RABBIT_URL))):
            raise unittest.SkipTest("no RabbitMQ at %s" % BrokerAddress.from_url(RABBIT_URL).description)

    def proxy(self):
        proxy = TcpProxy()
        self.addCleanup(proxy.stop)
        return proxy

    @defer.inlineCallbacks
    def start_process(self):
        yield self._start_container()
        proc = Process(spawnargs={"proc-name": "reconnect-tester"})
        yield proc.spawn()
        return proc

    @defer.inlineCallbacks
    def subscribe(self, proc, origin, **kwargs):
        collector = Collector()
        sub = yield SubscriberFactory(process=proc).build(
            subscriber_type=events.InfoLoggingEventSubscriber, origin=origin, handler=collector, **kwargs
        )
        return sub, collector

    @defer.inlineCallbacks
    def publisher(self, proc, origin):
        pub = events.InfoLoggingEventPublisher(process=proc, origin=origin)
        yield proc.register_life_cycle_object(pub)
        return pub

    @defer.inlineCallbacks
    def publish(self, pub, name, persistent=False):
        event = yield pub.create_event(origin=pub._origin, name=name)
        yield pub.publish(event, routing_key=pub.topic(pub._origin), delivery_mode=2 if persistent else 1)

    def assertActive(self, *objects):
        for thing in objects:
            self.assertEqual(thing._get_state(), BasicStates.ACTIVE, "%r is not ACTIVE" % (thing,))


class BrokerRestartTest(ReconnectTestBase):
    """Acceptance: rabbitmqctl stop_app / start_app in the middle of 10,000 confirmed events."""

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.node = yield rabbit_node.start_for(self)
        self.broker_url = self.node.url

    @defer.inlineCallbacks
    def test_restart_during_confirmed_events_to_durable_subscription(self):
        proc = yield self.start_process()
        self.addCleanup(self._stop_container)  # before the node goes
        origin = unique("restart")
        durable, kept = yield self.subscribe(
            proc, origin, queue_name=unique("durable"), durable=True, auto_delete=False
        )
        anonymous, seen = yield self.subscribe(proc, origin)
        anonymous_queue = anonymous.queue
        pub = yield self.publisher(proc, origin)

        address = BrokerAddress.from_url(self.node.url)
        times = {}

        @defer.inlineCallbacks
        def restart():
            times["stopping"] = reactor.seconds()
            yield self.node.stop_app()
            times["stopped"] = reactor.seconds()
            starting = self.node.start_app()
            yield wait_until_accepting(address, timeout=50)
            times["back"] = reactor.seconds()  # the broker takes connections again
            yield starting

        started = reactor.seconds()
        restarting = None
        window = []
        for i in range(RESTART_EVENTS):
            window.append(self.publish(pub, str(i), persistent=True))
            if len(window) >= WINDOW:
                yield window.pop(0)
            if i == RESTART_EVENTS // 4:
                yield wait_for(lambda: len(kept.arrivals) > 0)  # the subscription is busy when the broker goes
                restarting = restart()
            if i == RESTART_EVENTS // 2:
                # However fast this machine publishes, the second half waits for the reconnect.
                yield wait_for(lambda: "stopped" in times, timeout=30)
        yield defer.gatherResults(window, consumeErrors=True)
        confirmed = reactor.seconds()
        yield restarting

        # Every confirmed event reaches the durable subscription; redeliveries are counted, not lost.
        yield wait_for(lambda: len(kept.distinct) == RESTART_EVENTS, timeout=40)
        received = kept.names()
        self.assertEqual(kept.distinct, {str(i) for i in range(RESTART_EVENTS)})

        back = times["back"]
        durable_resumed = kept.first_after(back) - back
        anonymous_resumed = seen.first_after(back) - back
        self.assertLess(anonymous_resumed, RESUME_LIMIT)
        self.assertLess(durable_resumed, RESUME_LIMIT)
        self.assertNotEqual(anonymous.queue, anonymous_queue)  # broker-named: a new queue, bound again
        self.assertActive(proc, durable, anonymous, pub)
        self.assertEqual(durable._recv._get_state(), BasicStates.ACTIVE)
        figures(
            "broker restart (stop_app/start_app)",
            events_sent=RESTART_EVENTS,
            events_confirmed=RESTART_EVENTS,
            durable_received=len(received),
            durable_distinct=len(kept.distinct),
            duplicates=len(received) - len(kept.distinct),
            anonymous_received=len(seen.arrivals),
            stop_app_s="%.1f" % (times["stopped"] - times["stopping"]),
            broker_down_s="%.1f" % (back - times["stopping"]),
            anonymous_resumed_after_return_s="%.2f" % anonymous_resumed,
            durable_resumed_after_return_s="%.2f" % durable_resumed,
            all_confirmed_after_s="%.1f" % (confirmed - started),
        )


class ProxyCutTest(ReconnectTestBase):
    """A TCP proxy inside the test cuts the container's connection."""

    @defer.inlineCallbacks
    def test_cut_connection_resumes_without_state_change(self):
        proxy = self.proxy()
        self.broker_url = proxy.url()
        proc = yield self.start_process()
        yield self._spawn_processes([HELLO])
        origin = unique("cut")
        sub, collector = yield self.subscribe(proc, origin)
        pub = yield self.publisher(proc, origin)
        old_queue = sub.queue
        yield self.publish(pub, "before")
        yield wait_for(lambda: collector.names() == ["before"])
        states = [(thing, thing._get_state()) for thing in (proc, sub, pub, sub._recv)]

        cut_at = reactor.seconds()
        self.assertEqual(proxy.cut(), 1)
        yield self.publish(pub, "after")  # waits for the reconnect
        yield wait_for(lambda: "after" in collector.names(), timeout=RESUME_LIMIT)
        resumed = collector.first_after(cut_at) - cut_at
        self.assertLess(resumed, RESUME_LIMIT)
        self.assertEqual([(thing, thing._get_state()) for thing, _ in states], states)
        self.assertActive(proc, sub, pub)
        self.assertNotEqual(sub.queue, old_queue)  # the anonymous queue went with the old connection
        # The process's own queues and the service's are back too: RPC works.
        content, _, _ = yield proc.rpc_send("%s.hello" % ioninit.sys_name, "ping", None)
        self.assertEqual(content, {"pong": "pong"})
        for i in range(10):
            yield self.publish(pub, "later %d" % i)
        yield wait_for(lambda: len(collector.arrivals) == 12, timeout=10)
        self.assertEqual(collector.names(), ["before", "after"] + ["later %d" % i for i in range(10)])
        figures("TCP proxy cut", events_sent=12, received=len(collector.arrivals),
                duplicates=len(collector.arrivals) - len(collector.distinct),
                resumed_after_cut_s="%.2f" % resumed)


class StopDuringOutageTest(ReconnectTestBase):
    """A container stopping while its broker is unreachable does not wait for it."""

    @defer.inlineCallbacks
    def test_stop_while_broker_unreachable(self):
        proxy = self.proxy()
        self.broker_url = proxy.url()
        proc = yield self.start_process()
        yield self._spawn_processes([HELLO])
        yield self.subscribe(proc, unique("outage"))
        proxy.refusing = True
        proxy.cut()
        connection = self.container.exchange_manager.connection
        yield wait_for(lambda: not connection.connected, timeout=10)
        started = reactor.seconds()
        yield self._stop_container()
        took = reactor.seconds() - started
        self.assertLess(took, 5)
        self.assertEqual(proc._get_state(), BasicStates.TERMINATED)
        figures("stop while the broker is unreachable", stop_took_s="%.2f" % took)


class ConnectionReconnectTest(unittest.TestCase):
    """The AMQPConnection alone, through a proxy that cuts and refuses connections."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        address = BrokerAddress.from_url(RABBIT_URL)
        if not (yield rabbit_accepts(address)):
            raise unittest.SkipTest("no RabbitMQ at %s" % address.description)
        self.proxy = TcpProxy(address)
        self.addCleanup(self.proxy.stop)

    @defer.inlineCallbacks
    def open(self, query=""):
        conn = yield connect(BrokerAddress.from_url(self.proxy.url(query)))
        self.addCleanup(conn.close)
        return conn

    @defer.inlineCallbacks
    def cut_and_wait_until_lost(self, conn):
        self.assertEqual(self.proxy.cut(), 1)
        yield wait_for(lambda: not ready(conn))

    @defer.inlineCallbacks
    def test_publish_while_disconnected_waits_for_reconnect(self):
        conn = yield self.open()
        queue = yield conn.queue_declare(unique("wait"), exclusive=True)
        inbox = AckingInbox()
        yield conn.consume(queue, inbox)
        self.proxy.refusing = True
        yield self.cut_and_wait_until_lost(conn)
        attempts = self.proxy.attempts
        published = conn.publish("", queue, b"while away")
        yield wait_for(lambda: self.proxy.attempts > attempts)  # a reconnect was tried and refused
        self.assertFalse(published.called)
        back = reactor.seconds()
        self.proxy.refusing = False
        yield published
        yield wait_for(lambda: inbox.bodies == [b"while away"], timeout=RESUME_LIMIT)
        figures("publish while disconnected", events_sent=1, received=len(inbox.bodies),
                duplicates=len(inbox.bodies) - len(set(inbox.bodies)),
                resumed_after_return_s="%.2f" % (reactor.seconds() - back))

    @defer.inlineCallbacks
    def test_dead_peer_noticed_by_heartbeat_then_resumed(self):
        conn = yield self.open("?heartbeat=1")
        queue = yield conn.queue_declare(unique("heartbeat"), exclusive=True)
        inbox = AckingInbox()
        yield conn.consume(queue, inbox)
        self.proxy.silent = True
        went_silent = reactor.seconds()
        yield wait_for(lambda: not ready(conn), timeout=5)
        noticed = reactor.seconds() - went_silent
        self.proxy.silent = False
        self.proxy.cut()  # a reconnect attempt that went into the silence
        yield conn.publish("", queue, b"after")
        yield wait_for(lambda: inbox.bodies == [b"after"], timeout=RESUME_LIMIT)
        resumed = reactor.seconds() - went_silent - noticed
        figures("dead peer (heartbeat=1)", events_sent=1, received=len(inbox.bodies),
                duplicates=len(inbox.bodies) - len(set(inbox.bodies)), noticed_after_s="%.1f" % noticed,
                resumed_after_noticed_s="%.2f" % resumed)

    @defer.inlineCallbacks
    def test_publish_fails_after_reconnect_timeout(self):
        conn = yield self.open("?reconnect_timeout=1")
        self.proxy.refusing = True
        yield self.cut_and_wait_until_lost(conn)
        asked = reactor.seconds()
        error = yield self.assertFailure(conn.publish("amq.topic", "k", b"lost"), ConnectionLost)
        waited = reactor.seconds() - asked
        self.assertIn("not reconnected", str(error))
        self.assertIn("reconnect_timeout", str(error))
        self.assertTrue(0.9 <= waited < 5, waited)
        yield self.assertFailure(conn.queue_declare(unique("late")), ConnectionLost)
        self.proxy.refusing = False
        yield wait_for(lambda: ready(conn), timeout=RESUME_LIMIT)
        yield conn.publish("amq.topic", "k", b"fine again")

    @defer.inlineCallbacks
    def test_call_in_flight_is_made_again(self):
        conn = yield self.open()
        declaring = conn.queue_declare(unique("inflight"), exclusive=True)
        self.proxy.cut()
        queue = yield declaring
        self.assertEqual((yield conn.queue_declare(queue, passive=True)), queue)

    @defer.inlineCallbacks
    def test_unconfirmed_publishes_are_sent_again(self):
        conn = yield self.open()
        # Shared and not auto-delete, so it outlives the cut with what it holds.
        queue = yield conn.queue_declare(unique("confirms"), auto_delete=False)
        self.addCleanup(conn.queue_delete, queue)
        inbox = AckingInbox()
        yield conn.consume(queue, inbox, prefetch_count=50)
        bodies = [b"%d" % i for i in range(5000)]
        confirms = [conn.publish("", queue, body) for body in bodies]
        cut = {}

        def cut_now(_):
            # Right when the 200th publish is confirmed: later ones are still waiting for theirs.
            cut.update(at=reactor.seconds(), unconfirmed=len(conn._pipeline.pending.waiting), connections=self.proxy.cut())

        confirms[199].addCallback(cut_now)
        yield defer.gatherResults(confirms, consumeErrors=True)
        confirmed = reactor.seconds() - cut["at"]
        unconfirmed = cut["unconfirmed"]
        self.assertEqual(cut["connections"], 1)
        yield wait_for(lambda: set(inbox.bodies) == set(bodies), timeout=20)
        figures("unconfirmed publishes across a cut", events_sent=len(bodies), received=len(inbox.bodies),
                unconfirmed_at_cut=unconfirmed, duplicates=len(inbox.bodies) - len(set(inbox.bodies)),
                all_confirmed_after_cut_s="%.2f" % confirmed)
        self.assertGreater(unconfirmed, 0)

    @defer.inlineCallbacks
    def close_while_reconnecting(self, proxy_mode):
        conn = yield self.open()
        setattr(self.proxy, proxy_mode, True)
        yield self.cut_and_wait_until_lost(conn)
        attempts = self.proxy.attempts
        yield wait_for(lambda: self.proxy.attempts > attempts)
        waiting = conn.queue_declare(unique("never"))
        yield conn.close()
        error = yield self.assertFailure(waiting, ConnectionLost)
        self.assertIn("closed", str(error))
        self.assertFalse(conn._link.service.running)
        # The ClientService is stopped: it will not connect again.
        yield self.assertFailure(conn._link.service.whenConnected(), defer.CancelledError)
        yield self.assertFailure(conn.publish("", "q", b"x"), ConnectionLost)
        yield wait_for(lambda: not self.proxy.clients(), timeout=5)  # and its connection is closed

    def test_close_between_reconnect_attempts_stops_them(self):
        return self.close_while_reconnecting("refusing")

    def test_close_during_reconnect_handshake_stops_it(self):
        return self.close_while_reconnecting("silent")  # the attempt hangs in the AMQP handshake

    @defer.inlineCallbacks
    def test_broker_named_queue_bound_again_under_new_name(self):
        conn = yield self.open()
        queue = yield conn.queue_declare("", exclusive=True)
        key = unique("key")
        yield conn.queue_bind(queue, "amq.topic", key)
        inbox = AckingInbox()
        consumer = yield conn.consume(queue, inbox)
        yield conn.publish("amq.topic", key, b"one")
        yield wait_for(lambda: inbox.bodies == [b"one"])
        cut_at = reactor.seconds()
        yield self.cut_and_wait_until_lost(conn)
        yield conn.publish("amq.topic", key, b"two")
        yield wait_for(lambda: inbox.bodies == [b"one", b"two"], timeout=RESUME_LIMIT)
        resumed = reactor.seconds() - cut_at
        self.assertNotEqual(consumer.queue, queue)
        self.assertTrue(consumer.queue.startswith("amq.gen-"), consumer.queue)
        # The old name still means the queue: calls and direct publishes follow it.
        self.assertEqual((yield conn.queue_declare(queue, passive=True)), consumer.queue)
        yield conn.publish("", queue, b"three")
        yield wait_for(lambda: inbox.bodies[-1:] == [b"three"])
        yield conn.queue_unbind(queue, "amq.topic", key)
        self.assertEqual(conn._topology.bindings, {})
        figures("broker-named queue renamed", events_sent=3, received=len(inbox.bodies),
                duplicates=len(inbox.bodies) - len(set(inbox.bodies)), resumed_after_cut_s="%.2f" % resumed)


class ReconnectTimeoutSettingTest(unittest.TestCase):
    """reconnect_timeout from URLs and twistd options (no broker needed)."""

    def test_default_url_and_option(self):
        from ion.core.cc.service import Options

        self.assertEqual(BrokerAddress.from_url("amqp://h/").reconnect_timeout, 30)
        self.assertEqual(BrokerAddress.from_url("amqp://h/?reconnect_timeout=2.5").reconnect_timeout, 2.5)
        self.assertEqual(BrokerAddress.from_url("endpoint:tcp:host=h:port=1?reconnect_timeout=0").reconnect_timeout, 0)
        options = Options()
        options.parseOptions(["-h", "rabbit", "--broker_reconnect_timeout", "7"])
        self.assertEqual(options["broker_address"].reconnect_timeout, 7)

    def test_bad_values_are_named(self):
        from ion.core.cc.service import OptionValueError, Options

        for value in ("soon", "-1", "nan", "inf"):
            error = self.assertRaises(ValueError, BrokerAddress.from_url, "amqp://h/?reconnect_timeout=" + value)
            self.assertIn(repr(value), str(error))
        error = self.assertRaises(OptionValueError, Options().parseOptions, ["--broker_reconnect_timeout", "-3"])
        self.assertIn("--broker_reconnect_timeout", str(error.code))
