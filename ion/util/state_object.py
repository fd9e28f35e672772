"""
The ION lifecycle state machine shared by processes, receivers, publishers,
subscribers and the container (reference §3, §12.5).

States INIT -> READY -> ACTIVE (and back to READY) -> TERMINATED, plus ERROR.
Subclasses implement the ``on_*`` actions; callers drive the object with
``initialize``, ``activate``, ``deactivate``, ``terminate`` and ``error``.

As in R1, an input returns what its action returns: a synchronous action's
value (or exception) comes back directly, and an action returning a Deferred
makes the input return a Deferred that fires once the state is committed.
``yield`` works on both.  Code that needs a Deferred either way wraps the call
in ``maybeDeferred``.

One decision beyond R1: inputs are serialized.  An input arriving while an
earlier transition still waits on its Deferred (or while an action is
running) is queued, returns a Deferred, and is judged against the state the
earlier one committed.  R1 looked it up against the stale state, so e.g. a
``terminate`` during a slow ``activate`` could end in ACTIVE.  An action must
therefore not *wait* for another input on its own object (that deadlocks);
firing one off is fine and runs after the commit.
"""

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ion.core.exception import IllegalStateChange
from ion.util.fsm import FSM

log = Logger()


class BasicStates:
    """State and input names of the basic lifecycle."""

    INIT = "INIT"
    READY = "READY"
    ACTIVE = "ACTIVE"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"

    INITIALIZE = "initialize"
    ACTIVATE = "activate"
    DEACTIVATE = "deactivate"
    TERMINATE = "terminate"
    ERROR_INPUT = "error"

    # R1 spellings, so code ported from R1 reads unchanged.
    S_INIT, S_READY, S_ACTIVE, S_TERMINATED, S_ERROR = INIT, READY, ACTIVE, TERMINATED, ERROR
    E_INITIALIZE, E_ACTIVATE, E_DEACTIVATE, E_TERMINATE, E_ERROR = (
        INITIALIZE,
        ACTIVATE,
        DEACTIVATE,
        TERMINATE,
        ERROR_INPUT,
    )
    # Action names: inputs, plus the one action an input names differently.
    A_ACTIVE_TERMINATE = "terminate_active"


class Actionable:
    """An object whose state machine's actions are names of its own methods."""

    def _so_action(self, action):
        """The callable for `action`: a method name, or already a callable."""
        return getattr(self, action) if isinstance(action, str) else action


class FSMFactory:
    """Builds the state machine of a StateObject; this base one is empty (subclasses add transitions)."""

    def create_fsm(self, target, memory=None):
        return FSM(BasicStates.INIT, memory)


class BasicFSMFactory(FSMFactory):
    """The basic lifecycle: each input runs the target's ``on_<action>``; anything illegal runs on_error."""

    action_prefix = "on_"

    def create_fsm(self, target, memory=None):
        fsm = super().create_fsm(target, memory)
        s = BasicStates
        for event, state, action, next_state in (
            (s.INITIALIZE, s.INIT, s.INITIALIZE, s.READY),
            (s.ACTIVATE, s.READY, s.ACTIVATE, s.ACTIVE),
            (s.DEACTIVATE, s.ACTIVE, s.DEACTIVATE, s.READY),
            (s.TERMINATE, s.READY, s.TERMINATE, s.TERMINATED),
            (s.TERMINATE, s.ACTIVE, s.A_ACTIVE_TERMINATE, s.TERMINATED),
        ):
            fsm.add_transition(event, state, self.action_prefix + action, next_state)
        fsm.set_default_transition(self.action_prefix + s.ERROR_INPUT, s.ERROR)
        return fsm


class StateObject(Actionable):
    """
    Drives a state machine whose actions are methods of this object.

    A transition commits only when its action succeeds (returns, or its
    Deferred fires); an action may commit early with ``_so_transition()``.
    When an action fails, ``on_error`` runs with the exception (a synchronous
    raise) or the Failure (a failed Deferred); if on_error succeeds the object
    moves to ERROR, if it fails too that is logged and the state stays as it
    was.  Either way the caller gets the action's original error.
    """

    def __init__(self, fsm_factory=None):
        self._so_fsm = None
        self._so_busy = False
        self._so_draining = False
        self._so_queue = []  # (event, args, kwargs, Deferred) waiting for the current transition
        self._so_idle = []  # Deferreds fired once no transition is under way or queued
        self._so_set_fsm((fsm_factory or FSMFactory()).create_fsm(self))

    def _so_set_fsm(self, fsm):
        self._so_fsm = fsm

    @property
    def state(self):
        """The current state name, e.g. ``'READY'``."""
        return self._so_fsm.current_state

    def _get_state(self):
        """R1 accessor for the current state name."""
        return self._so_fsm.current_state

    def _so_transition(self):
        """Commit the transition in progress now (an action may call this before it is done)."""
        if self._so_fsm.next_state is not None:
            self._so_fsm.current_state = self._so_fsm.next_state

    def _so_process(self, event, *args, **kwargs):
        """Feed `event`: run its action now, or queue it behind the transition in progress."""
        if self._so_busy:
            waiting = Deferred()
            self._so_queue.append((event, args, kwargs, waiting))
            return waiting
        return self._so_run(event, args, kwargs)

    def _so_run(self, event, args, kwargs):
        fsm = self._so_fsm
        action, fsm.next_state = fsm.get_transition(event, fsm.current_state)
        fsm.input_symbol, fsm.action = event, action
        self._so_busy = True
        try:
            result = self._so_action(action)(*args, **kwargs)
        except Exception as cause:
            return self._so_failed_now(cause)
        if isinstance(result, Deferred):
            return self._so_wait(result)
        self._so_done()
        return result

    def _so_done(self):
        self._so_transition()
        self._so_fsm.next_state = None
        self._so_release()

    def _so_wait(self, pending):
        """The action returned a Deferred: commit when it fires, handle the error if it fails."""
        outcome = Deferred()

        def succeeded(value):
            self._so_done()
            outcome.callback(value)

        def failed(reason):
            handled = self._so_call_on_error(reason)
            if isinstance(handled, Deferred):
                handled.addBoth(lambda _: outcome.errback(reason))
            else:
                outcome.errback(reason)

        pending.addCallbacks(succeeded, failed)
        return outcome

    def _so_failed_now(self, cause):
        """The action raised: on_error now; raise the original now, unless on_error went asynchronous."""
        handled = self._so_call_on_error(cause)
        if isinstance(handled, Deferred):
            outcome = Deferred()
            handled.addBoth(lambda _: outcome.errback(Failure(cause, type(cause), cause.__traceback__)))
            return outcome
        raise cause

    def _so_call_on_error(self, cause):
        """Run on_error(cause); ERROR if it copes.  Returns a Deferred only if on_error did."""
        try:
            handled = self._so_error(cause)
        except Exception:
            self._so_on_error_failed(Failure(), cause)
            return None
        if isinstance(handled, Deferred):
            handled.addCallbacks(lambda _: self._so_entered_error(), self._so_on_error_failed, errbackArgs=(cause,))
            return handled
        self._so_entered_error()
        return None

    def _so_error(self, cause):
        """R1 hook: let on_error see a failed action's exception or Failure."""
        return self.on_error(cause)

    def _so_entered_error(self):
        self._so_fsm.current_state = BasicStates.ERROR
        self._so_fsm.next_state = None
        self._so_release()

    def _so_on_error_failed(self, reason, cause):
        log.failure(
            "{obj!r}: on_error failed while handling {cause!r}; state stays {state}",
            reason,
            obj=self,
            cause=cause.value if isinstance(cause, Failure) else cause,
            state=self._so_fsm.current_state,
        )
        self._so_fsm.next_state = None
        self._so_release()

    def _so_release(self):
        """The transition is over: run the queued inputs, in order, until one goes asynchronous."""
        self._so_busy = False
        if self._so_draining:
            return
        self._so_draining = True
        try:
            while self._so_queue and not self._so_busy:
                event, args, kwargs, waiting = self._so_queue.pop(0)
                try:
                    result = self._so_run(event, args, kwargs)
                except Exception:
                    waiting.errback()
                    continue
                if isinstance(result, Deferred):
                    result.chainDeferred(waiting)
                else:
                    waiting.callback(result)
        finally:
            self._so_draining = False
        if not self._so_busy and self._so_idle:
            idle, self._so_idle = self._so_idle, []
            for waiting in idle:
                waiting.callback(None)

    def on_error(self, *args, **kwargs):
        raise NotImplementedError("on_error")


class BasicLifecycleObject(StateObject):
    """
    Base class for anything with the INIT/READY/ACTIVE/TERMINATED/ERROR lifecycle.

    Subclasses must call ``BasicLifecycleObject.__init__``.  An illegal input
    (including ``error``) runs ``on_error`` with the input's own arguments and
    no cause, and moves to ERROR, which has no way out.

    A subclass that names itself in ``lifecycle_noun`` (e.g. ``"receiver"``)
    gets the usual ``on_error``: an illegal input raises IllegalStateChange
    (a RuntimeError, as in R1), a failed action's cause is logged naming the
    object (``_lifecycle_name``).  Without a noun on_error stays unimplemented,
    as in R1.
    """

    lifecycle_noun = None

    def __init__(self):
        super().__init__(BasicFSMFactory())

    def initialize(self, *args, **kwargs):
        return self._so_process(BasicStates.INITIALIZE, *args, **kwargs)

    def activate(self, *args, **kwargs):
        return self._so_process(BasicStates.ACTIVATE, *args, **kwargs)

    def deactivate(self, *args, **kwargs):
        return self._so_process(BasicStates.DEACTIVATE, *args, **kwargs)

    def terminate(self, *args, **kwargs):
        return self._so_process(BasicStates.TERMINATE, *args, **kwargs)

    def error(self, *args, **kwargs):
        return self._so_process(BasicStates.ERROR_INPUT, *args, **kwargs)

    def on_initialize(self, *args, **kwargs):
        raise NotImplementedError("on_initialize")

    def on_activate(self, *args, **kwargs):
        raise NotImplementedError("on_activate")

    def on_deactivate(self, *args, **kwargs):
        raise NotImplementedError("on_deactivate")

    def on_terminate(self, *args, **kwargs):
        raise NotImplementedError("on_terminate")

    def on_terminate_active(self, *args, **kwargs):
        """Terminating from ACTIVE; most objects need no special case."""
        return self.on_terminate(*args, **kwargs)

    def on_error(self, cause=None, *args, **kwargs):
        if self.lifecycle_noun is None:
            raise NotImplementedError("on_error")
        if cause is None:
            raise IllegalStateChange("Illegal %s state change" % (self.lifecycle_noun,))
        log.error(
            "{noun} {name} error: {cause!r}",
            noun=self.lifecycle_noun[:1].upper() + self.lifecycle_noun[1:],
            name=self._lifecycle_name(),
            cause=cause,
        )

    def _lifecycle_name(self):
        """What tells this object from others of its kind in a log line."""
        return hex(id(self))

    def terminate_unless_over(self, *args, **kwargs):
        """
        Terminate, unless there is nothing to stop: already TERMINATED or in
        ERROR, or still INIT.  Returns what terminate returns, or None when
        skipped.  While a transition is under way (an initialize, or a
        terminate someone else asked for) it decides once that is over, so
        two parties stopping one object never make an illegal terminate.
        """
        if self._so_busy:
            # Decide once the transition under way is over: it may be a terminate itself.
            idle = Deferred()
            self._so_idle.append(idle)
            return idle.addCallback(lambda _: self.terminate_unless_over(*args, **kwargs))
        if self.state in (BasicStates.TERMINATED, BasicStates.ERROR, BasicStates.INIT):
            return None
        return self.terminate(*args, **kwargs)
