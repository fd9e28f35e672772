"""
The AMQP connection's named states and declared transitions, and the waits
that hang on them, on a fake clock (no broker: nothing here is connected).
"""

from twisted.internet import task
from twisted.trial import unittest

from ion.core.messaging.broker.address import BrokerAddress
from ion.core.messaging.broker.amqp_publishing import Pipeline
from ion.core.messaging.broker.amqp_states import (
    CLOSED,
    CLOSING,
    CONNECTING,
    READY,
    RECONNECTING,
    TRANSITIONS,
    ConnectionState,
)
from ion.core.messaging.broker.amqp_topology import Topology
from ion.core.messaging.broker.interface import ConnectionLost


class ConnectionStateTest(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.state = ConnectionState("amqp://test", self.clock)

    def test_a_connection_lost_and_regained_then_closed(self):
        self.assertEqual(self.state.state, CONNECTING)
        path = [self.state.to(event) for event in ("ready", "lost", "ready", "close", "closed")]
        self.assertEqual(path, [READY, RECONNECTING, READY, CLOSING, CLOSED])

    def test_lost_at_is_on_the_clock(self):
        self.state.to("ready")
        self.clock.advance(7)
        self.state.to("lost")
        self.assertEqual(self.state.lost_at, 7)

    def test_every_state_is_reachable_and_closed_is_final(self):
        self.assertEqual({new for new in TRANSITIONS.values()} | {CONNECTING},
                         {CONNECTING, READY, RECONNECTING, CLOSING, CLOSED})
        self.assertFalse([event for (state, event) in TRANSITIONS if state == CLOSED])

    def test_an_undeclared_transition_is_an_error(self):
        self.state.to("ready")
        error = self.assertRaises(RuntimeError, self.state.to, "ready")
        self.assertIn("no transition from READY on 'ready'", str(error))
        self.assertEqual(self.state.state, READY)
        self.assertRaises(RuntimeError, ConnectionState("x", self.clock).to, "lost")  # never was READY

    def test_when_ready_times_out_on_the_clock(self):
        waiting = self.state.when_ready(5)
        self.clock.advance(4.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.1)
        error = self.failureResultOf(waiting, ConnectionLost).value
        self.assertIn("not reconnected to amqp://test within 5 s", str(error))

    def test_when_ready_fires_on_ready_and_fails_on_close(self):
        readied, closed = self.state.when_ready(5), ConnectionState("y", self.clock)
        self.state.to("ready")
        self.successResultOf(readied)
        self.successResultOf(self.state.when_ready(5))
        on_close = closed.when_ready(5)
        closed.to("close")
        self.assertIn("is closed", str(self.failureResultOf(on_close, ConnectionLost).value))
        self.failureResultOf(closed.when_ready(5), ConnectionLost)


class PipelineWaitTest(unittest.TestCase):
    """Calls and publishes made while not READY wait reconnect_timeout on the injected clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.state = ConnectionState("amqp://test", self.clock)
        address = BrokerAddress.from_url("amqp://guest:guest@127.0.0.1:1/?reconnect_timeout=5")
        self.pipeline = Pipeline(self.state, address, Topology(), self.clock)

    def test_waiting_turns_give_up_after_reconnect_timeout(self):
        call = self.pipeline.call("queue_purge", dict(queue="q"))
        self.clock.advance(2)
        publish = self.pipeline.publish(("", "q", b"x", {}, False))
        self.assertEqual(self.pipeline.waiting, 2)
        self.clock.advance(3)
        self.assertIn("within 5 s", str(self.failureResultOf(call, ConnectionLost).value))
        self.assertNoResult(publish)  # made 2 s later: its own deadline
        self.clock.advance(2)
        self.failureResultOf(publish, ConnectionLost)
        self.assertEqual(self.pipeline.waiting, 0)

    def test_waiting_turns_fail_on_close(self):
        call = self.pipeline.call("queue_purge", dict(queue="q"))
        self.state.to("close")
        self.pipeline.closing()
        self.assertIn("is closed", str(self.failureResultOf(call, ConnectionLost).value))
