"""
Peers that stop talking (issue 8 item 4, issue 9): a broker that goes silent is noticed within two
heartbeat intervals, and publishes in flight then go on or fail instead of stalling; a peer that
takes the TCP connection but never speaks AMQP is given up on after 10 s, and the log says meanwhile
what the connection waits for.
"""

import os
import time

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from ion.core.messaging.broker import amqp, connect
from ion.core.messaging.broker.address import BrokerAddress
from ion.core.messaging.broker.amqp_codec import HEARTBEAT_FRAME, PROTOCOL_HEADER
from ion.core.messaging.broker.amqp_protocol import Client, Delegate, load_spec
from ion.core.messaging.broker.interface import ConnectionLost
from test.brokers import RABBIT_URL, wait_for
from test.proxy import TcpProxy


def figures(test, **values):
    print("\nFIGURES %s: %s" % (test, ", ".join("%s=%s" % item for item in values.items())), flush=True)


class LogLines:
    """Every log line written while the test runs, formatted."""

    def __init__(self, test):
        self.lines = []
        globalLogPublisher.addObserver(self._observe)
        test.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        self.lines.append(formatEvent(event))

    def matching(self, *words):
        return [line for line in self.lines if all(word in line for word in words)]


class _Owner:
    """The AMQPConnection end a lone Client talks to."""

    description = "amqp://test-broker"

    def __init__(self):
        self.lost = []

    def _connection_lost(self, client, reason):
        self.lost.append(reason)

    def _writing_paused(self, client, paused):
        pass


class HeartbeatTimingTest(unittest.TestCase):
    """The heartbeat checks alone, on a fake clock: when a silent broker is given up on."""

    INTERVAL = 30

    def client(self, clock):
        client = Client(Delegate(_Owner()), "/", load_spec(), self.INTERVAL, clock)
        transport = StringTransport()
        client.makeConnection(transport)
        client.start_heartbeat(self.INTERVAL)
        self.addCleanup(lambda: client._heartbeat_loop.running and client._heartbeat_loop.stop())
        return client, transport

    def test_silence_is_noticed_within_two_intervals(self):
        for offset in (0.0, 0.1, 3.7, 7.4, 7.5, 11.2, 14.9):
            clock = task.Clock()
            client, transport = self.client(clock)
            for _ in range(8):  # a healthy broker: a heartbeat every interval / 2
                clock.advance(self.INTERVAL / 2)
                client.dataReceived(HEARTBEAT_FRAME)
            clock.advance(offset)
            client.dataReceived(HEARTBEAT_FRAME)
            last_heard = clock.seconds()
            while not transport.disconnecting and clock.seconds() < last_heard + 3 * self.INTERVAL:
                clock.advance(0.05)
            noticed = clock.seconds() - last_heard
            self.assertTrue(transport.disconnecting, "not noticed at offset %s" % offset)
            self.assertGreaterEqual(noticed, 1.5 * self.INTERVAL - 0.01, offset)
            self.assertLessEqual(noticed, 2 * self.INTERVAL, offset)

    def test_healthy_broker_keeps_the_connection_and_gets_heartbeats(self):
        clock = task.Clock()
        client, transport = self.client(clock)
        transport.clear()
        for _ in range(40):  # 10 minutes, the broker beating every interval / 2, us saying nothing else
            clock.advance(self.INTERVAL / 2)
            client.dataReceived(HEARTBEAT_FRAME)
        self.assertFalse(transport.disconnecting)
        beats = transport.value().count(HEARTBEAT_FRAME)
        self.assertEqual(len(transport.value()), beats * len(HEARTBEAT_FRAME))
        self.assertTrue(40 <= beats <= 41, beats)  # one per interval / 2 when idle



class SilentBrokerTest(unittest.TestCase):
    """RabbitMQ behind a TCP proxy that goes silent, with a 1 s heartbeat."""

    timeout = 60
    HEARTBEAT = 1
    SLACK = 0.3  # timer and scheduling jitter on a shared machine

    @defer.inlineCallbacks
    def silenced_connection(self, reconnect_timeout):
        self.log = LogLines(self)
        self.proxy = TcpProxy()
        self.addCleanup(self.proxy.stop)
        query = "?heartbeat=%d&reconnect_timeout=%g" % (self.HEARTBEAT, reconnect_timeout)
        conn = yield connect(BrokerAddress.from_url(self.proxy.url(query)))
        self.addCleanup(conn.close)
        queue = yield conn.queue_declare("silent-%s" % os.urandom(6).hex(), exclusive=True)
        self.inbox = []
        yield conn.consume(queue, lambda d: (self.inbox.append(d.body), d.ack()))
        yield conn.publish("", queue, b"before")
        yield wait_for(lambda: self.inbox == [b"before"])  # the exclusive queue goes with the connection
        self.proxy.silent = True
        self.went_silent = reactor.seconds()
        in_flight = [conn.publish("", queue, b"during %d" % i) for i in range(5)]
        yield wait_for(lambda: not conn.connected, timeout=10 * self.HEARTBEAT)
        self.noticed = reactor.seconds() - self.went_silent
        self.assertLessEqual(self.noticed, 2 * self.HEARTBEAT + self.SLACK)
        [line] = self.log.matching("nothing from the AMQP broker for", "heartbeat %d s" % self.HEARTBEAT)
        said = float(line.split("nothing from the AMQP broker for ")[1].split(" s")[0])
        self.assertTrue(1.5 * self.HEARTBEAT <= said <= 2 * self.HEARTBEAT + self.SLACK, line)
        return conn, in_flight

    @defer.inlineCallbacks
    def test_noticed_within_two_heartbeats_and_in_flight_publishes_sent_again(self):
        conn, in_flight = yield self.silenced_connection(reconnect_timeout=30)
        self.proxy.silent = False
        self.proxy.cut()  # a reconnect attempt that went into the silence
        yield defer.gatherResults(in_flight)
        confirmed = reactor.seconds() - self.went_silent
        expected = [b"before"] + [b"during %d" % i for i in range(5)]
        yield wait_for(lambda: set(self.inbox) == set(expected))
        figures("silent broker (heartbeat=1)", noticed_after_s="%.2f" % self.noticed,
                in_flight_confirmed_after_s="%.2f" % confirmed, received=len(self.inbox))

    @defer.inlineCallbacks
    def test_busy_reactor_does_not_drop_a_live_broker(self):
        """
        A delivery handler that keeps the reactor busy for longer than the give-up time: when the
        heartbeat check runs next, before the reactor reads again, the broker's heartbeats are still
        unread in the socket.  They are read before the check decides.
        """
        self.log = LogLines(self)
        # Straight to RabbitMQ: a proxy in this process would be as busy as we are.
        conn = yield connect(BrokerAddress.from_url(RABBIT_URL + "?heartbeat=%d" % self.HEARTBEAT))
        self.addCleanup(conn.close)
        queue = yield conn.queue_declare("busy-%s" % os.urandom(6).hex(), exclusive=True)
        handled = defer.Deferred()

        def slow_handler(delivery):
            conn.publish("amq.topic", "busy", b"x")  # RabbitMQ hears from us just before we block
            time.sleep(1.6 * self.HEARTBEAT)  # longer than DEAD_AFTER heartbeats, shorter than RabbitMQ's 2
            delivery.ack()
            reactor.callLater(3 * self.HEARTBEAT / 4, handled.callback, None)  # after the next checks

        yield conn.consume(queue, slow_handler)
        yield task.deferLater(reactor, self.HEARTBEAT, lambda: None)  # the checks are running
        yield conn.publish("", queue, b"slow")
        yield handled
        self.assertTrue(conn.connected)
        self.assertEqual(self.log.matching("nothing from the AMQP broker"), [])
        yield conn.publish("amq.topic", "busy", b"still connected")

    @defer.inlineCallbacks
    def test_in_flight_publishes_fail_after_reconnect_timeout_while_it_stays_silent(self):
        conn, in_flight = yield self.silenced_connection(reconnect_timeout=2)
        for d in in_flight:
            error = yield self.assertFailure(d, ConnectionLost)
            self.assertIn("reconnect_timeout", str(error))
        failed = reactor.seconds() - self.went_silent
        self.assertLessEqual(failed, self.noticed + 2 + 1)
        figures("silent broker stays silent (heartbeat=1, reconnect_timeout=2)", noticed_after_s="%.2f" % self.noticed,
                in_flight_failed_after_s="%.2f" % failed)


class _Mute(protocol.Protocol):
    """Takes the connection and never answers."""

    def connectionMade(self):
        self.factory.connections.append(self)
        self.received = b""

    def dataReceived(self, data):
        self.received += data


class MutePeerTest(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_peer_that_never_speaks_amqp_is_reported_within_10_s(self):
        log = LogLines(self)
        factory = protocol.Factory.forProtocol(_Mute)
        factory.connections = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        clock = task.Clock()
        address = BrokerAddress.from_url("endpoint:tcp:host=127.0.0.1:port=%d" % number)
        connecting = amqp.connect(address, clock=clock)
        yield wait_for(lambda: factory.connections and factory.connections[0].received == PROTOCOL_HEADER)
        clock.advance(amqp.HANDSHAKE_NOTICE)
        [waiting] = log.matching("waiting for AMQP connection.start", "127.0.0.1:%d" % number)
        self.assertFalse(connecting.called)
        clock.advance(amqp.HANDSHAKE_TIMEOUT - amqp.HANDSHAKE_NOTICE - 0.01)
        self.assertFalse(connecting.called)
        clock.advance(0.01)
        while not connecting.called:  # the failure is reported from the next turns of the clock
            clock.advance(0)
            yield task.deferLater(reactor, 0, lambda: None)
        error = yield self.assertFailure(connecting, ConnectionLost)
        self.assertEqual(amqp.HANDSHAKE_TIMEOUT, 10)
        self.assertIn("no AMQP connection.start from 127.0.0.1:%d within 10 s" % number, str(error))
        yield wait_for(lambda: not factory.connections[0].transport.connected)  # and it hung up
