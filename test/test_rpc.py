"""
PendingCalls, the RPC correlation of a process, alone on a task.Clock: no
broker, no container, and every timer fires exactly when the test says.
"""

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from ion.core.exception import (
    NoSuchService,
    ProcessError,
    ReceivedApplicationError,
    ReceivedContainerError,
    ReceivedError,
)
from ion.core.process.rpc import PendingCalls

OWNER = "host_1.7"


class Delivery:
    """A received reply: its payload and whether it was acked."""

    def __init__(self, payload):
        self.payload = payload
        self.acked = 0

    def ack(self):
        self.acked += 1


class Returns:
    """The watch_returns / unwatch_returns half of an ExchangeManager: who watches which conversation."""

    def __init__(self):
        self.watchers = {}

    def watch_returns(self, conv_id, watcher):
        self.watchers[conv_id] = watcher

    def unwatch_returns(self, conv_id):
        self.watchers.pop(conv_id, None)

    def hand_back(self, conv_id, why="NO_ROUTE"):
        self.watchers.pop(conv_id)(why)


class IonMsg:
    """Just the response fields of an IonMsg the error mapping reads."""

    def __init__(self, code, body):
        self.MessageResponseCode = code
        self.MessageResponseBody = body


def reply(conv_id, status="OK", content=None, performative="inform_result", protocol="rpc"):
    payload = {"conv-id": conv_id, "status": status, "content": content, "performative": performative,
               "protocol": protocol, "op": "result", "sender": "host_1.9"}
    return payload, Delivery(payload)


class PendingCallsTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.calls = PendingCalls(OWNER, self.clock)
        self.returns = Returns()
        self.sent = []  # conversation ids of the requests sent
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def send(self, conv_id):
        self.sent.append(conv_id)
        return defer.succeed(None)

    def call(self, timeout=15, send=None):
        d = self.calls.call("sys.svc", "ping", send or self.send, timeout, returns=self.returns)
        return d, self.sent[-1] if self.sent else None

    def warnings(self):
        return [e for e in self.logged if e.get("log_level") == LogLevel.warn]

    def assertNothingLeft(self):
        self.assertEqual(self.calls.pending, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.returns.watchers, {})

    def test_conversation_ids_are_the_owners(self):
        first, second = self.calls.new_conversation_id(), self.calls.new_conversation_id()
        self.assertTrue(first.startswith(OWNER + "#"))
        self.assertLess(int(first.rpartition("#")[2]), int(second.rpartition("#")[2]))
        self.assertTrue(self.calls.is_ours(first))
        self.assertFalse(self.calls.is_ours("host_1.70#1"))
        self.assertFalse(self.calls.is_ours(None))

    def test_default_clock_is_the_reactor(self):
        self.assertIs(PendingCalls(OWNER).clock, reactor)

    def test_timeout_fires_at_exactly_the_clock_time(self):
        d, conv_id = self.call(timeout=15)
        self.assertEqual(self.calls.pending, {conv_id: ("ping", "sys.svc")})
        self.assertIn(conv_id, self.returns.watchers)
        self.clock.advance(14.999)
        self.assertFalse(d.called)
        self.clock.advance(0.001)
        error = self.failureResultOf(d, defer.TimeoutError).value
        self.assertEqual(str(error), "rpc %s op=ping to sys.svc: no reply within 15s" % (conv_id,))
        self.assertNothingLeft()

    def test_timeout_zero_arms_no_timer(self):
        d, conv_id = self.call(timeout=0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10**6)
        self.assertNoResult(d)
        payload, msg = reply(conv_id, content={"pong": "pong"})
        self.assertTrue(self.calls.settle(payload, msg))
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), ({"pong": "pong"}, payload, msg))

    def test_reply_is_acked_and_fires_one_clock_turn_later(self):
        d, conv_id = self.call()
        payload, msg = reply(conv_id, content="hi")
        self.assertTrue(self.calls.settle(payload, msg))
        self.assertEqual(msg.acked, 1)
        self.assertNoResult(d)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), ("hi", payload, msg))
        self.assertNothingLeft()

    def test_error_replies_by_response_code(self):
        for code, kind in ((400, ReceivedApplicationError), (503, ReceivedContainerError), (-1, ReceivedError)):
            d, conv_id = self.call()
            payload, msg = reply(conv_id, status="ERROR", content=IonMsg(code, "no"), performative="failure")
            self.assertTrue(self.calls.settle(payload, msg))
            self.clock.advance(0)
            error = self.failureResultOf(d, kind).value
            self.assertIs(type(error), kind)
            self.assertEqual((error.response_code, error.reason), (code, "no"))
        # Content that is no IonMsg: a plain ReceivedError whose reason is the text.
        d, conv_id = self.call()
        self.calls.settle(*reply(conv_id, status="ERROR", content="broken", performative="failure"))
        self.clock.advance(0)
        self.assertEqual(self.failureResultOf(d, ReceivedError).value.reason, "broken")
        self.assertNothingLeft()

    def test_late_reply_after_timeout_is_ignored_and_logged(self):
        d, conv_id = self.call(timeout=1)
        self.clock.advance(1)
        self.failureResultOf(d, defer.TimeoutError)
        payload, msg = reply(conv_id, content="too late")
        self.assertTrue(self.calls.settle(payload, msg))
        self.assertEqual(msg.acked, 1)
        self.clock.advance(0)
        self.assertNothingLeft()
        (warning,) = self.warnings()
        self.assertEqual(warning["conv"], conv_id)
        self.assertIn("already ended", warning["log_format"])

    def test_reply_after_return_failure_is_ignored(self):
        d, conv_id = self.call()
        self.returns.hand_back(conv_id, "NO_ROUTE")
        self.assertEqual(self.calls.pending, {})
        self.clock.advance(0)  # not failed from inside the broker's return dispatch
        error = self.failureResultOf(d, NoSuchService).value
        self.assertEqual(str(error), "rpc %s op=ping to sys.svc: no such service (NO_ROUTE)" % (conv_id,))
        payload, msg = reply(conv_id, content="after all")
        self.assertTrue(self.calls.settle(payload, msg))
        self.clock.advance(0)
        self.assertNothingLeft()
        self.assertEqual(len(self.warnings()), 1)

    def test_terminate_fails_pending_calls(self):
        d1, conv1 = self.call()
        d2, conv2 = self.call(timeout=0)
        self.calls.fail_all("process host_1.7 terminated")
        for d, conv_id in ((d1, conv1), (d2, conv2)):
            error = self.failureResultOf(d, ProcessError).value
            self.assertEqual(str(error), "rpc %s op=ping to sys.svc: process host_1.7 terminated" % (conv_id,))
        self.assertNothingLeft()

    def test_messages_that_are_not_replies_to_our_calls_are_left_alone(self):
        d, conv_id = self.call()
        for payload, msg in (
            reply(conv_id, performative="request"),  # a request in our conversation: the owner dispatches it
            reply("host_1.9#5"),  # someone else's conversation
            reply(self.calls.new_conversation_id(), protocol="none"),  # not an rpc
        ):
            self.assertFalse(self.calls.settle(payload, msg))
            self.assertEqual(msg.acked, 0)
        self.assertEqual(list(self.calls.pending), [conv_id])
        self.assertEqual(self.warnings(), [])

    def test_failed_send_raises_the_sends_error(self):
        d = self.calls.call("sys.svc", "ping", lambda conv_id: defer.fail(ValueError("bad content")), 15,
                            returns=self.returns)
        self.failureResultOf(d, ValueError)
        self.assertNothingLeft()

    def test_request_returned_while_its_send_fails(self):
        def send(conv_id):
            self.returns.hand_back(conv_id)
            return defer.fail(ValueError("connection lost"))

        d = self.calls.call("sys.svc", "ping", send, 15, returns=self.returns)
        self.clock.advance(0)  # the NoSuchService is swallowed: the send's error is the one raised
        self.failureResultOf(d, ValueError)
        self.assertNothingLeft()

    def test_reply_while_the_send_is_still_in_flight(self):
        in_flight = defer.Deferred()
        d = self.calls.call("sys.svc", "ping", lambda conv_id: in_flight, 15, returns=self.returns)
        (conv_id,) = self.calls.pending
        payload, msg = reply(conv_id, content="fast")
        self.assertTrue(self.calls.settle(payload, msg))
        self.clock.advance(0)
        self.assertNoResult(d)
        in_flight.callback(None)
        self.assertEqual(self.successResultOf(d), ("fast", payload, msg))
        self.assertNothingLeft()


class ClockPassedDownTests(unittest.TestCase):
    """A process's clock reaches what it owns: its RPCs, its receivers' log limits, its subscribers."""

    def test_process_clock(self):
        from ion.core.process.process import Process
        from ion.core.process.service_process import ServiceProcess
        from ion.services.dm.distribution.publisher_subscriber import Subscriber

        clock = task.Clock()
        clock.advance(7)
        proc = ServiceProcess(spawnargs={"proc-name": "clocked"}, clock=clock)
        self.assertIs(proc.clock, clock)
        self.assertIs(proc.rpc.clock, clock)
        self.assertEqual(proc.proc_init_time, 7000)
        self.assertEqual(len(proc.receivers), 3)
        for receiver in proc.receivers.values():
            self.assertIs(receiver.handler_failures.clock, clock)
        subscriber = Subscriber(xp_name="events.topic", binding_key="#", process=proc)
        self.assertIs(subscriber._recv.handler_failures.clock, clock)
        self.assertIs(subscriber._depth_watch._clock, clock)
        self.assertIs(Process().clock, reactor)
