"""
Backpressure on publishing (issue 8 item 3): at most max_in_flight unconfirmed publishes per
connection, publishes past it wait in call order, a full transport write buffer pauses
publishing, and the bound holds across a reconnect.  The tests print FIGURES lines.
"""

import dataclasses

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.trial import unittest

from ion.core.messaging.broker import connect
from ion.core.messaging.broker.address import DEFAULT_MAX_IN_FLIGHT, BrokerAddress
from ion.core.messaging.broker.interface import NotFound
from test.brokers import AckingInbox, BrokerTestMixin, for_each_broker, wait_for
from test.proxy import TcpProxy
from test.test_silent_peer import LogLines

log = Logger()

BOUND = 50
PUBLISHES = 3000


def figures(test, **values):
    line = "FIGURES %s: %s" % (test, ", ".join("%s=%s" % item for item in values.items()))
    log.info(line)
    print("\n" + line, flush=True)


class InFlightPeak:
    """
    The most publishes ever in flight on a connection: checked after every write (each goes
    through the connection's Pipeline.send) and every time a publish's Deferred fires.
    """

    def __init__(self, conn):
        self.conn = conn
        self.most = 0
        self.most_waiting = 0
        pipeline = getattr(conn, "_pipeline", None)
        if pipeline is not None:  # RabbitMQ; the embedded broker routes each publish at once
            send = pipeline.send

            def checked_send(message, done):
                confirmed = send(message, done)
                self.sample()
                return confirmed

            pipeline.send = checked_send

    def sample(self, result=None):
        self.most = max(self.most, self.conn.in_flight)
        self.most_waiting = max(self.most_waiting, self.conn.waiting)
        return result


class InFlightTests(BrokerTestMixin):
    timeout = 120

    @defer.inlineCallbacks
    def connect_with(self, url=None, **settings):
        address = dataclasses.replace(BrokerAddress.from_url(url or self.broker_url), **settings)
        conn = yield connect(address)
        self.addCleanup(conn.close)
        return conn

    @defer.inlineCallbacks
    def consumed_queue(self, conn, prefetch_count=200):
        queue = yield conn.queue_declare(self.unique_name("bp"), exclusive=True)
        inbox = AckingInbox()
        yield conn.consume(queue, inbox, prefetch_count=prefetch_count)
        return queue, inbox

    @defer.inlineCallbacks
    def test_publisher_that_never_waits_stays_under_its_bound(self):
        conn = yield self.connect_with(max_in_flight=BOUND)
        queue, inbox = yield self.consumed_queue(conn)
        warnings = LogLines(self)
        peak = InFlightPeak(conn)
        bodies = [b"%d" % i for i in range(PUBLISHES)]
        fired = []
        started = reactor.seconds()
        publishes = []
        for i, body in enumerate(bodies):
            d = conn.publish("", queue, body)
            peak.sample()
            publishes.append(d.addCallback(lambda _, i=i: fired.append(i)).addBoth(peak.sample))
        waiting_after_loop = conn.waiting
        yield defer.gatherResults(publishes)
        took = reactor.seconds() - started
        yield wait_for(lambda: len(inbox.bodies) == len(bodies), timeout=30)
        self.assertLessEqual(peak.most, BOUND)
        self.assertEqual(fired, list(range(PUBLISHES)))  # Deferreds fire in publish order
        self.assertEqual(inbox.bodies, bodies)  # and the messages went out in it
        self.assertEqual((conn.in_flight, conn.waiting), (0, 0))
        if self.on_rabbit:
            self.assertEqual(peak.most, BOUND)  # the bound was reached: publishes did wait
            self.assertEqual(waiting_after_loop, PUBLISHES - BOUND)
            self.assertEqual(len(warnings.matching("publishes and calls are waiting to be sent")), 1)  # once
        figures("publisher that never waits (%s)" % conn.description, publishes=PUBLISHES, max_in_flight=BOUND,
                in_flight_max_seen=peak.most, waiting_after_loop=waiting_after_loop, all_confirmed_s="%.2f" % took)

    @defer.inlineCallbacks
    def test_calls_wait_behind_earlier_publishes(self):
        conn = yield self.connect_with(max_in_flight=5)
        queue, inbox = yield self.consumed_queue(conn)
        later_queue = self.unique_name("bp-later")
        publishes = [conn.publish("", queue, b"%d" % i) for i in range(100)]
        declared = conn.queue_declare(later_queue, exclusive=True)  # made after the publishes, while they wait
        publishes.append(conn.publish("", later_queue, b"after the declare"))
        self.assertEqual((yield declared), later_queue)
        yield defer.gatherResults(publishes)
        later = AckingInbox()
        yield conn.consume(later_queue, later)
        yield wait_for(lambda: later.bodies == [b"after the declare"] and len(inbox.bodies) == 100)

    @defer.inlineCallbacks
    def test_publish_made_after_a_failing_call_still_goes(self):
        conn = yield self.connect_with(max_in_flight=5)
        queue, inbox = yield self.consumed_queue(conn)
        bodies = [b"%d" % i for i in range(20)] + [b"last"]
        publishes = [conn.publish("", queue, body) for body in bodies[:-1]]
        missing = conn.queue_declare(self.unique_name("missing"), passive=True)
        publishes.append(conn.publish("", queue, bodies[-1]))
        yield self.assertFailure(missing, NotFound)  # it closed the channel the publishes before it went on:
        yield defer.gatherResults(publishes)  # those not yet confirmed were sent again (at least once)
        yield wait_for(lambda: inbox.bodies[-1:] == [b"last"] and set(inbox.bodies) == set(bodies))


InFlightMemoryTest, InFlightRabbitTest = for_each_broker(InFlightTests, globals())


class RabbitBackpressureTest(BrokerTestMixin, unittest.TestCase):
    """What only a network connection has: a write buffer, confirms, reconnects."""

    broker_url = InFlightRabbitTest.broker_url
    timeout = 120
    connect_with = InFlightTests.connect_with
    consumed_queue = InFlightTests.consumed_queue

    @defer.inlineCallbacks
    def test_default_bound(self):
        conn = yield self.connect_with()
        self.assertEqual(conn.max_in_flight, DEFAULT_MAX_IN_FLIGHT)
        self.assertEqual(DEFAULT_MAX_IN_FLIGHT, 1000)

    @defer.inlineCallbacks
    def test_full_write_buffer_pauses_publishing(self):
        """Confirms off: 64 bodies of 512 KiB, published without waiting, go out as the socket takes them."""
        conn = yield self.connect_with(confirms=False)
        queue, inbox = yield self.consumed_queue(conn, prefetch_count=4)
        peak = InFlightPeak(conn)
        bodies = [bytes([i]) * (512 * 1024) for i in range(64)]
        fired = []
        publishes = [conn.publish("", queue, body).addCallback(lambda _, i=i: fired.append(i)).addBoth(peak.sample)
                     for i, body in enumerate(bodies)]
        waiting_after_loop = conn.waiting
        self.assertGreater(waiting_after_loop, 0)  # the first write filled the buffer: the rest wait for it
        self.assertLess(len(fired), len(bodies))
        yield defer.gatherResults(publishes)
        self.assertEqual(fired, list(range(len(bodies))))
        self.assertEqual(peak.most, 0)  # nothing is in flight without confirms
        yield wait_for(lambda: len(inbox.bodies) == len(bodies), timeout=30)
        self.assertEqual(inbox.bodies, bodies)
        figures("full write buffer, confirms off", publishes=len(bodies), body_kib=512,
                waiting_after_loop=waiting_after_loop, waiting_max_seen=peak.most_waiting)

    @defer.inlineCallbacks
    def test_bound_holds_across_a_reconnect(self):
        """Unconfirmed publishes cut off by a lost connection are sent again, still at most BOUND at a time."""
        proxy = TcpProxy()
        self.addCleanup(proxy.stop)
        conn = yield self.connect_with(proxy.url(), max_in_flight=BOUND)
        queue = yield conn.queue_declare(self.unique_name("bp-cut"), auto_delete=False)
        self.addCleanup(conn.queue_delete, queue)
        inbox = AckingInbox()
        yield conn.consume(queue, inbox, prefetch_count=200)
        peak = InFlightPeak(conn)
        bodies = [b"%d" % i for i in range(PUBLISHES)]
        publishes = [conn.publish("", queue, body).addBoth(peak.sample) for body in bodies]
        cut = {}

        def cut_now(_):
            cut.update(unconfirmed=conn.in_flight, waiting=conn.waiting, connections=proxy.cut())

        publishes[PUBLISHES // 3].addCallback(cut_now)
        yield defer.gatherResults(publishes)
        self.assertEqual(cut["connections"], 1)
        self.assertGreater(cut["unconfirmed"], 0)
        yield wait_for(lambda: set(inbox.bodies) == set(bodies), timeout=30)
        self.assertLessEqual(peak.most, BOUND)
        figures("bound across a cut", publishes=PUBLISHES, max_in_flight=BOUND, in_flight_max_seen=peak.most,
                unconfirmed_at_cut=cut["unconfirmed"], waiting_at_cut=cut["waiting"],
                duplicates=len(inbox.bodies) - len(set(inbox.bodies)))
