"""
The RPCs a process has in flight (R1 §4.5): the initiator's side of the
`rpc` conversation, kept apart from the process so it can be tested alone
on a `task.Clock`.

A call gets a conversation id `<owner>#<n>`, a Deferred and (unless its
timeout is 0) a timer on the injected clock.  It ends exactly once: by the
reply (`settle`), by the broker handing the mandatory request back because
no queue took it (`NoSuchService`), by the timer (`defer.TimeoutError`), or
by `fail_all` when the process terminates.  A reply to one of our calls
that has already ended is logged and dropped, as in R1.
"""

import itertools

from twisted.internet import defer
from twisted.logger import Logger

from ion.core.exception import (
    NoSuchService,
    ProcessError,
    ReceivedApplicationError,
    ReceivedContainerError,
    ReceivedError,
)

__all__ = ["PendingCalls"]

log = Logger()

REPLY_PERFORMATIVES = ("inform_result", "failure")

# Conversation numbers are container-wide in R1: one counter for every owner.
_conversation_counter = itertools.count(1)


class _Call:
    """One RPC in flight: what it asked, who answers it, and what ends it."""

    def __init__(self, conv_id, recv, operation, timeout):
        self.conv_id = conv_id
        self.recv = recv
        self.operation = operation
        self.timeout = timeout
        self.reply = defer.Deferred()
        self.timer = None
        self.returns = None  # the ExchangeManager watching for the request's return, if any

    def __str__(self):
        return "rpc %s op=%s to %s" % (self.conv_id, self.operation, self.recv)


class PendingCalls:
    """
    The RPCs of the owner `owner_id` (a process id string) not answered yet,
    by conversation id, timed on `clock` (an IReactorTime; the reactor by
    default).
    """

    def __init__(self, owner_id, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.owner_id = owner_id
        self.clock = clock
        self._calls = {}

    def __len__(self):
        return len(self._calls)

    def __contains__(self, conv_id):
        return conv_id in self._calls

    @property
    def pending(self):
        """conversation id -> (operation, recipient) of each call not ended yet (a copy)."""
        return {conv_id: (call.operation, call.recv) for conv_id, call in self._calls.items()}

    def new_conversation_id(self):
        return "%s#%d" % (self.owner_id, next(_conversation_counter))

    def is_ours(self, conv_id):
        """True for a conversation id this owner made, pending or not."""
        return isinstance(conv_id, str) and conv_id.startswith(self.owner_id + "#")

    @defer.inlineCallbacks
    def call(self, recv, operation, send_request, timeout, returns=None):
        """
        Start a call: `send_request(conv_id)` sends the request (a Deferred).
        Fires with (content, headers, msg) of the reply, or fails as the
        module docstring says; a failed send fails it with the send's error.
        `returns` (an ExchangeManager) reports the request if it comes back.
        """
        call = _Call(self.new_conversation_id(), recv, operation, timeout)
        self._calls[call.conv_id] = call
        # timeout=0 waits as long as it takes (R1 armed no timer and then crashed on the reply).
        if timeout:
            call.timer = self.clock.callLater(timeout, self._timed_out, call.conv_id)
        if returns is not None:
            call.returns = returns
            returns.watch_returns(call.conv_id, lambda why: self._returned(call.conv_id, why))
        try:
            yield send_request(call.conv_id)
        except Exception:
            if self._forget(call.conv_id) is None:
                call.reply.addErrback(lambda _: None)  # it ended meanwhile: the send's error is the one raised
            raise
        result = yield call.reply
        return result

    def settle(self, payload, msg):
        """
        Take the reply `payload` if it answers one of our calls (pending or
        ended); False leaves it to the owner's dispatch.  The reply is acked
        and the call's Deferred fires one clock turn later, as in R1.
        """
        conv_id = payload.get("conv-id")
        if payload.get("performative") not in REPLY_PERFORMATIVES:
            return False
        call = self._forget(conv_id)
        if call is None:
            if payload.get("protocol") != "rpc" or not self.is_ours(conv_id):
                return False
            log.warn(
                "{owner}: dropped a reply to rpc {conv} op={op} from {sender}: the call had already ended",
                owner=self.owner_id,
                conv=conv_id,
                op=payload.get("op"),
                sender=payload.get("sender"),
            )
            msg.ack()
            return True
        msg.ack()
        if payload.get("status", "OK") == "OK":
            self.clock.callLater(0, call.reply.callback, (payload.get("content"), payload, msg))
        else:
            self.clock.callLater(0, call.reply.errback, error_of_reply(payload))
        return True

    def fail_all(self, why):
        """End every pending call with a ProcessError saying `why` (the owner is going away)."""
        for conv_id in list(self._calls):
            call = self._forget(conv_id)
            call.reply.errback(ProcessError("%s: %s" % (call, why)))

    def _forget(self, conv_id):
        """Remove the call `conv_id` with its timer and return watch; the call, or None if it had ended."""
        call = self._calls.pop(conv_id, None) if isinstance(conv_id, str) else None
        if call is None:
            return None
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        if call.returns is not None:
            call.returns.unwatch_returns(conv_id)
        return call

    def _returned(self, conv_id, why):
        call = self._forget(conv_id)
        if call is not None:
            error = NoSuchService("%s: no such service (%s)" % (call, why))
            self.clock.callLater(0, call.reply.errback, error)  # not from inside the broker's return dispatch

    def _timed_out(self, conv_id):
        call = self._forget(conv_id)
        if call is not None:
            call.reply.errback(defer.TimeoutError("%s: no reply within %ss" % (call, call.timeout)))


def error_of_reply(payload):
    """The exception an error reply raises at the caller, chosen by its response code (R1 §4.5)."""
    content = payload.get("content")
    code = getattr(content, "MessageResponseCode", None)
    reason = getattr(content, "MessageResponseBody", None) or (content if isinstance(content, str) else None)
    if isinstance(code, int) and 400 <= code < 500:
        kind = ReceivedApplicationError
    elif isinstance(code, int) and 500 <= code < 600:
        kind = ReceivedContainerError
    else:
        kind = ReceivedError
    return kind(payload, content, code, reason)
