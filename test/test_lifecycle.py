"""
BasicLifecycleObject: the transitions of reference §3.2, the error handling
of §3.3, and R1's return values (§12.5): a synchronous action's value or
exception comes back directly, a Deferred action's as a Deferred.
"""

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from ion.core.exception import IllegalStateChange, IllegalStateError
from ion.util.state_object import BasicLifecycleObject, BasicStates as S


class Recorder(BasicLifecycleObject):
    """Records every action call; `results` maps an action name to what it returns or raises."""

    def __init__(self, **results):
        super().__init__()
        self.calls = []
        self.results = results

    def _act(self, name, args, kwargs):
        self.calls.append((name, args, kwargs))
        outcome = self.results.get(name)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome() if callable(outcome) else outcome

    def on_initialize(self, *a, **kw):
        return self._act("on_initialize", a, kw)

    def on_activate(self, *a, **kw):
        return self._act("on_activate", a, kw)

    def on_deactivate(self, *a, **kw):
        return self._act("on_deactivate", a, kw)

    def on_terminate(self, *a, **kw):
        return self._act("on_terminate", a, kw)

    def on_error(self, *a, **kw):
        return self._act("on_error", a, kw)


def drive(obj, *inputs):
    """Feed synchronous inputs in order (all must succeed)."""
    for name in inputs:
        getattr(obj, name)()


def force(obj, state):
    """Bring a Recorder to `state` the legal way."""
    path = {
        S.INIT: (),
        S.READY: ("initialize",),
        S.ACTIVE: ("initialize", "activate"),
        S.TERMINATED: ("initialize", "terminate"),
        S.ERROR: ("error",),
    }[state]
    drive(obj, *path)
    assert obj.state == state
    obj.calls.clear()


class Boom(Exception):
    pass


class LegalTransitionTest(unittest.TestCase):
    def test_starts_in_init(self):
        obj = Recorder()
        self.assertEqual(obj.state, "INIT")
        self.assertEqual(obj._get_state(), "INIT")

    def test_each_legal_transition(self):
        table = [
            (S.INIT, "initialize", "on_initialize", S.READY),
            (S.READY, "activate", "on_activate", S.ACTIVE),
            (S.ACTIVE, "deactivate", "on_deactivate", S.READY),
            (S.READY, "terminate", "on_terminate", S.TERMINATED),
            (S.ACTIVE, "terminate", "on_terminate", S.TERMINATED),
        ]
        for start, event, action, end in table:
            obj = Recorder(**{action: "result"})
            force(obj, start)
            self.assertEqual(getattr(obj, event)(1, key="v"), "result")
            self.assertEqual(obj.state, end, (start, event))
            self.assertEqual(obj.calls, [(action, (1,), {"key": "v"})])

    def test_terminate_active_uses_its_own_hook(self):
        class Special(Recorder):
            def on_terminate_active(self, *a, **kw):
                return self._act("on_terminate_active", a, kw)

        obj = Special()
        force(obj, S.ACTIVE)
        obj.terminate()
        self.assertEqual([c[0] for c in obj.calls], ["on_terminate_active"])
        self.assertEqual(obj.state, S.TERMINATED)

    def test_state_changes_synchronously_for_sync_actions(self):
        obj = Recorder(on_initialize=33)
        self.assertEqual(obj.initialize(), 33)
        self.assertEqual(obj.state, S.READY)

    def test_action_sees_the_old_state_until_it_commits(self):
        seen = []

        class Watcher(Recorder):
            def on_activate(self):
                seen.append(self._get_state())
                self._so_transition()
                seen.append(self._get_state())

        obj = Watcher()
        force(obj, S.READY)
        obj.activate()
        self.assertEqual(seen, [S.READY, S.ACTIVE])
        self.assertEqual(obj.state, S.ACTIVE)

    @inlineCallbacks
    def test_async_action_commits_when_it_fires(self):
        pending = Deferred()
        obj = Recorder(on_initialize=lambda: pending)
        d = obj.initialize()
        self.assertEqual(obj.state, S.INIT)
        self.assertNoResult(d)
        pending.callback("done")
        self.assertEqual((yield d), "done")
        self.assertEqual(obj.state, S.READY)

    def test_full_cycle(self):
        obj = Recorder()
        drive(obj, "initialize", "activate", "deactivate", "activate", "terminate")
        self.assertEqual(obj.state, S.TERMINATED)
        self.assertEqual(
            [c[0] for c in obj.calls],
            ["on_initialize", "on_activate", "on_deactivate", "on_activate", "on_terminate"],
        )


class IllegalInputTest(unittest.TestCase):
    legal = {
        (S.INIT, "initialize"),
        (S.READY, "activate"),
        (S.READY, "terminate"),
        (S.ACTIVE, "deactivate"),
        (S.ACTIVE, "terminate"),
    }

    def test_every_illegal_input_calls_on_error_with_its_args(self):
        events = ["initialize", "activate", "deactivate", "terminate", "error"]
        states = [S.INIT, S.READY, S.ACTIVE, S.TERMINATED, S.ERROR]
        checked = 0
        for start in states:
            for event in events:
                if (start, event) in self.legal:
                    continue
                obj = Recorder(on_error="handled")
                force(obj, start)
                self.assertEqual(getattr(obj, event)("a", k=2), "handled")
                self.assertEqual(obj.calls, [("on_error", ("a",), {"k": 2})], (start, event))
                self.assertEqual(obj.state, S.ERROR, (start, event))
                checked += 1
        self.assertEqual(checked, 20)

    def test_error_is_a_trap(self):
        obj = Recorder()
        force(obj, S.ERROR)
        drive(obj, "initialize", "activate", "terminate", "error")
        self.assertEqual([c[0] for c in obj.calls], ["on_error"] * 4)
        self.assertEqual(obj.state, S.ERROR)

    def test_illegal_input_with_refusing_on_error(self):
        """The usual on_error raises when it has no cause: that error reaches the caller, state ERROR."""

        class Strict(Recorder):
            def on_error(self, cause=None, *a, **kw):
                self.calls.append(("on_error", (cause,) + a, kw))
                if cause is None:
                    raise RuntimeError("Illegal state change")

        obj = Strict()
        force(obj, S.READY)
        err = self.assertRaises(RuntimeError, obj.deactivate)
        self.assertEqual(obj.state, S.ERROR)
        self.assertEqual(obj.calls, [("on_error", (None,), {}), ("on_error", (err,), {})])


class DefaultActionTest(unittest.TestCase):
    def test_default_actions_raise_not_implemented(self):
        obj = BasicLifecycleObject()
        self.assertRaises(NotImplementedError, obj.initialize)
        # on_error is not implemented either, so the state cannot move to ERROR.
        self.assertEqual(obj.state, S.INIT)
        self.assertEqual(len(self.flushLoggedErrors(NotImplementedError)), 1)


class FailingActionTest(unittest.TestCase):
    def test_sync_failure(self):
        boom = Boom("sync")
        obj = Recorder(on_initialize=boom)
        self.assertIs(self.assertRaises(Boom, obj.initialize, 7), boom)
        self.assertEqual(obj.calls, [("on_initialize", (7,), {}), ("on_error", (boom,), {})])
        self.assertEqual(obj.state, S.ERROR)

    def test_async_failure(self):
        boom = Boom("async")
        pending = Deferred()
        obj = Recorder(on_activate=lambda: pending)
        force(obj, S.READY)
        d = obj.activate()
        self.assertEqual(obj.calls, [("on_activate", (), {})])
        self.assertEqual(obj.state, S.READY)
        pending.errback(boom)
        self.assertIs(self.failureResultOf(d, Boom).value, boom)
        # As in R1, on_error gets the Failure of a failed Deferred.
        name, (reason,), _ = obj.calls[1]
        self.assertEqual(name, "on_error")
        self.assertIs(reason.value, boom)
        self.assertEqual(obj.state, S.ERROR)

    def test_failure_of_terminate_active(self):
        obj = Recorder(on_terminate=lambda: fail(Boom()))
        force(obj, S.ACTIVE)
        self.failureResultOf(obj.terminate(), Boom)
        self.assertEqual(obj.state, S.ERROR)

    def test_async_on_error_is_waited_for(self):
        handled = Deferred()
        obj = Recorder(on_initialize=Boom(), on_error=lambda: handled)
        d = obj.initialize()
        self.assertNoResult(d)
        self.assertEqual(obj.state, S.INIT)
        handled.callback(None)
        self.failureResultOf(d, Boom)
        self.assertEqual(obj.state, S.ERROR)

    def test_on_error_failing_sync(self):
        boom = Boom("original")
        obj = Recorder(on_initialize=boom, on_error=RuntimeError("handler broke"))
        self.assertIs(self.assertRaises(Boom, obj.initialize), boom)
        self.assertEqual(obj.state, S.INIT)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_on_error_failing_async(self):
        obj = Recorder(on_activate=lambda: fail(Boom()), on_error=lambda: fail(RuntimeError("x")))
        force(obj, S.READY)
        self.failureResultOf(obj.activate(), Boom)
        self.assertEqual(obj.state, S.READY)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_object_usable_after_failed_on_error(self):
        """If on_error could not run, the state is unchanged and the input can be retried."""
        obj = Recorder(on_initialize=Boom(), on_error=RuntimeError())
        self.assertRaises(Boom, obj.initialize)
        self.flushLoggedErrors(RuntimeError)
        obj.results["on_initialize"] = "ok"
        self.assertEqual(obj.initialize(), "ok")
        self.assertEqual(obj.state, S.READY)


class ReentrancyTest(unittest.TestCase):
    def test_input_waits_for_pending_transition(self):
        pending = Deferred()
        obj = Recorder(on_activate=lambda: pending, on_terminate="gone")
        force(obj, S.READY)
        activating = obj.activate()
        terminating = obj.terminate()
        self.assertNoResult(terminating)
        self.assertEqual([c[0] for c in obj.calls], ["on_activate"])
        pending.callback("up")
        self.assertEqual(self.successResultOf(activating), "up")
        self.assertEqual(self.successResultOf(terminating), "gone")
        # terminate was judged against ACTIVE, not the stale READY.
        self.assertEqual(obj.state, S.TERMINATED)

    def test_queued_input_after_failed_transition_sees_error(self):
        pending = Deferred()
        obj = Recorder(on_initialize=lambda: pending, on_error="handled")
        first = obj.initialize()
        second = obj.activate()
        pending.errback(Boom())
        self.failureResultOf(first, Boom)
        self.assertEqual(self.successResultOf(second), "handled")
        self.assertEqual([c[0] for c in obj.calls], ["on_initialize", "on_error", "on_error"])
        self.assertEqual(obj.state, S.ERROR)

    def test_inputs_run_in_arrival_order(self):
        gates = [Deferred(), Deferred()]
        order = []

        class Slow(Recorder):
            def on_initialize(self):
                order.append("init")
                return gates[0]

            def on_activate(self):
                order.append("activate")
                return gates[1]

            def on_deactivate(self):
                order.append("deactivate")

        obj = Slow()
        results = [obj.initialize(), obj.activate(), obj.deactivate()]
        self.assertEqual(order, ["init"])
        gates[0].callback(None)
        self.assertEqual(order, ["init", "activate"])
        gates[1].callback(None)
        self.assertEqual(order, ["init", "activate", "deactivate"])
        for d in results:
            self.successResultOf(d)
        self.assertEqual(obj.state, S.READY)

    def test_action_may_queue_input_on_itself(self):
        """An action firing off (not waiting for) its own next input: it runs after the commit."""

        class SelfStarting(Recorder):
            def on_initialize(self):
                self.follow_up = self.activate()

        obj = SelfStarting()
        obj.initialize()
        self.successResultOf(obj.follow_up)
        self.assertEqual(obj.state, S.ACTIVE)

    def test_succeeded_deferred_result_passes_through(self):
        obj = Recorder(on_initialize=lambda: succeed({"x": 1}))
        self.assertEqual(self.successResultOf(obj.initialize()), {"x": 1})


class BasicStatesTest(unittest.TestCase):
    def test_names(self):
        self.assertEqual(
            [S.INIT, S.READY, S.ACTIVE, S.TERMINATED, S.ERROR],
            ["INIT", "READY", "ACTIVE", "TERMINATED", "ERROR"],
        )
        self.assertEqual(
            [S.INITIALIZE, S.ACTIVATE, S.DEACTIVATE, S.TERMINATE, S.ERROR_INPUT],
            ["initialize", "activate", "deactivate", "terminate", "error"],
        )
        self.assertEqual((S.S_ACTIVE, S.E_ERROR), ("ACTIVE", "error"))


class Widget(Recorder):
    """A Recorder with the base class's usual on_error, naming itself."""

    lifecycle_noun = "widget"
    on_error = BasicLifecycleObject.on_error

    def _lifecycle_name(self):
        return "w1"


class UsualOnErrorTest(unittest.TestCase):
    def test_illegal_input_raises_illegal_state_change(self):
        obj = Widget()
        err = self.assertRaises(RuntimeError, obj.activate)
        self.assertIsInstance(err, IllegalStateChange)
        self.assertIsInstance(err, IllegalStateError)
        self.assertEqual(str(err), "Illegal widget state change")
        self.assertEqual(obj.state, S.ERROR)

    def test_failed_action_logs_the_cause_naming_the_object(self):
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        boom = ValueError("broken")
        obj = Widget(on_initialize=boom)
        self.assertRaises(ValueError, obj.initialize)
        self.assertEqual(obj.state, S.ERROR)
        (event,) = [e for e in seen if e.get("log_level") == LogLevel.error]
        self.assertEqual(formatEvent(event), "Widget w1 error: %r" % (boom,))

    def test_without_a_noun_on_error_stays_unimplemented(self):
        self.assertIsNone(BasicLifecycleObject.lifecycle_noun)
        self.assertRaises(NotImplementedError, BasicLifecycleObject().on_error, None)

    def test_nouns_of_the_lifecycle_classes(self):
        """The words of R1's "Illegal ... state change" messages."""
        from ion.core.cc.container import Container
        from ion.core.messaging.receiver import Receiver
        from ion.core.process.process import Process, ProcessDesc
        from ion.services.dm.distribution.publisher_subscriber import Publisher, Subscriber

        nouns = {
            cls.__name__: cls.lifecycle_noun for cls in (Receiver, Publisher, Subscriber, Process, ProcessDesc, Container)
        }
        self.assertEqual(
            nouns,
            {
                "Receiver": "receiver",
                "Publisher": "publisher",
                "Subscriber": "subscriber",
                "Process": "process",
                "ProcessDesc": "ProcessDesc",
                "Container": "container",
            },
        )


class TerminateUnlessOverTest(unittest.TestCase):
    def test_terminates_ready_and_active(self):
        for start in (S.READY, S.ACTIVE):
            obj = Recorder(on_terminate="bye")
            force(obj, start)
            self.assertEqual(obj.terminate_unless_over(5), "bye")
            self.assertEqual(obj.state, S.TERMINATED)
            self.assertEqual(obj.calls[-1], ("on_terminate", (5,), {}))

    def test_skips_what_is_over_or_never_started(self):
        for start in (S.INIT, S.TERMINATED, S.ERROR):
            obj = Recorder()
            force(obj, start)
            before = list(obj.calls)
            self.assertIsNone(obj.terminate_unless_over())
            self.assertEqual((obj.state, obj.calls), (start, before), start)

    def test_waits_for_an_initialize_under_way(self):
        pending = Deferred()
        obj = Recorder(on_initialize=lambda: pending)
        obj.initialize()
        done = obj.terminate_unless_over()
        self.assertIsInstance(done, Deferred)
        self.assertNoResult(done)
        pending.callback(None)
        self.successResultOf(done)
        self.assertEqual(obj.state, S.TERMINATED)

    def test_a_terminate_under_way_is_not_repeated(self):
        """Two parties stopping one object (a session expiring as its process stops): no illegal terminate."""
        pending = Deferred()
        obj = Recorder(on_terminate=lambda: pending)
        force(obj, S.ACTIVE)
        first = obj.terminate()
        second = obj.terminate_unless_over()
        self.assertNoResult(second)
        pending.callback(None)
        self.successResultOf(first)
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual(obj.state, S.TERMINATED)
        self.assertEqual([c for c in obj.calls if c[0] == "on_terminate"], [("on_terminate", (), {})])
