"""
Acks sent in batches: one basic.ack multiple for many handled messages.

A receiver that batches (its subscriber's `ack_batch=N`) still acks a message
only after its handler finished; the ack just leaves later: when N acks are
waiting, or at the end of the reactor turn in which the first of them was
made, whichever comes first (no timer holds a lone ack back).  A multiple ack
covers only a run of messages that are all acked, in delivery order, so a
message still being handled (concurrency=N), waiting, or left for the broker
to take back is never acked by it; an acked message behind an unsettled one
is acked on its own.  A reject or requeue sends the waiting acks first.

What it changes: after a crash the broker delivers again every message whose
ack was still waiting, so up to N already-handled events can be handled twice
(with each ack sent at once, at most the ones being handled).
"""

from collections import deque

OPEN, ACKED, SENT = 0, 1, 2


class AckBatch:
    """The acks of one consumer's deliveries, in delivery order (see the module docstring)."""

    def __init__(self, size, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.size = size
        self._reactor = reactor
        self._entries = deque()  # [delivery, state] per message, oldest first, until it is acked at the broker
        self._waiting = 0  # entries ACKED, not yet sent
        self._call = None

    def track(self, delivery):
        """A new delivery, in the order the broker sent them; the entry its Message settles through."""
        entry = [delivery, OPEN]
        self._entries.append(entry)
        return entry

    def ack(self, entry):
        entry[1] = ACKED
        self._waiting += 1
        if self._waiting >= self.size:
            self.flush()
        elif self._call is None:
            self._call = self._reactor.callLater(0, self.flush)

    def settle_other(self, entry):
        """The message is rejected or requeued: the acks before it go first, then the caller settles it."""
        self.flush()
        entry[1] = SENT

    def flush(self):
        """Send the waiting acks: one multiple ack for the leading run, single acks behind an unsettled one."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        if not self._waiting:
            self._drop_leading_sent()
            return
        entries, last, run = self._entries, None, 0
        while entries and entries[0][1] != OPEN:
            entry = entries.popleft()
            if entry[1] == ACKED:
                last, run = entry[0], run + 1
        if last is not None:
            last.ack(multiple=run > 1)
        for entry in entries:
            if entry[1] == ACKED:
                entry[0].ack()
                entry[1] = SENT
        self._waiting = 0

    def _drop_leading_sent(self):
        entries = self._entries
        while entries and entries[0][1] == SENT:
            entries.popleft()
