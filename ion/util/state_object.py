"""
The ION lifecycle state machine shared by processes, receivers, publishers,
subscribers and the container (reference §3).

States INIT -> READY -> ACTIVE (and back to READY) -> TERMINATED, plus ERROR.
Subclasses implement the ``on_*`` actions; callers drive the object with
``initialize``, ``activate``, ``deactivate``, ``terminate`` and ``error``.

Decisions beyond R1, all deliberate:

* Every input returns a Deferred, so callers can always ``yield`` it.  When the
  action is synchronous the state changes before the input method returns.
* Inputs are serialized: an input that arrives while an earlier transition is
  still waiting on its Deferred is queued and runs once that one settles.  R1
  looked the transition up against the not-yet-committed state, so e.g. a
  ``terminate`` during a slow ``activate`` could end in ACTIVE.  Consequence:
  an action must not *wait* for another input on its own object (that would
  deadlock); firing one off without waiting is fine and runs afterwards.
* ``on_error`` receives the exception instance (not a Failure) of a failed
  action as its only positional argument, as in R1.
"""

from twisted.internet.defer import DeferredLock, inlineCallbacks, maybeDeferred
from twisted.logger import Logger

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


_S = BasicStates

# (input, current state) -> (action method, next state); anything else is an error.
TRANSITIONS = {
    (_S.INITIALIZE, _S.INIT): ("on_initialize", _S.READY),
    (_S.ACTIVATE, _S.READY): ("on_activate", _S.ACTIVE),
    (_S.DEACTIVATE, _S.ACTIVE): ("on_deactivate", _S.READY),
    (_S.TERMINATE, _S.READY): ("on_terminate", _S.TERMINATED),
    (_S.TERMINATE, _S.ACTIVE): ("on_terminate_active", _S.TERMINATED),
}
DEFAULT_TRANSITION = ("on_error", _S.ERROR)


class BasicLifecycleObject:
    """
    Base class for anything with the INIT/READY/ACTIVE/TERMINATED/ERROR lifecycle.

    Subclasses must call ``BasicLifecycleObject.__init__``.  A transition
    commits only when its action succeeds (returns, or its Deferred fires).
    When an action fails, ``on_error(exception)`` runs; if it succeeds the
    object moves to ERROR, if it fails too that is logged and the state stays
    as it was.  Either way the caller gets the action's original error.
    An illegal input (including ``error``) runs ``on_error`` with the input's
    own arguments and moves to ERROR, which has no way out.
    """

    def __init__(self):
        self._so_state = BasicStates.INIT
        self._so_lock = DeferredLock()

    @property
    def state(self):
        """The current state name, e.g. ``'READY'``."""
        return self._so_state

    def _get_state(self):
        """R1 accessor for the current state name."""
        return self._so_state

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

    def _so_process(self, event, *args, **kwargs):
        """Feed `event`, queued behind any transition still in progress."""
        return self._so_lock.run(self._so_transit, event, args, kwargs)

    @inlineCallbacks
    def _so_transit(self, event, args, kwargs):
        action, target = TRANSITIONS.get((event, self._so_state), DEFAULT_TRANSITION)
        try:
            result = yield maybeDeferred(getattr(self, action), *args, **kwargs)
        except Exception as cause:
            yield self._so_error(cause)
            raise
        self._so_state = target
        return result

    @inlineCallbacks
    def _so_error(self, cause):
        """Let on_error see a failed action's exception; reach ERROR only if it copes."""
        try:
            yield maybeDeferred(self.on_error, cause)
        except Exception:
            log.failure(
                "{obj!r}: on_error failed while handling {cause!r}; state stays {state}",
                obj=self,
                cause=cause,
                state=self._so_state,
            )
        else:
            self._so_state = BasicStates.ERROR

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

    def on_error(self, *args, **kwargs):
        raise NotImplementedError("on_error")
