"""
The embedded broker's delivery pump.

Deliveries and returned messages are handed out by a pump that runs from the
reactor, never from inside `publish`, so callers see the same asynchrony as
over a network; one pump turn moves many messages for throughput.
"""

from collections import deque

__all__ = ["DeliveryPump"]

# Deliveries handed out in one reactor turn before other events get a go.
_PUMP_BATCH = 2000


class DeliveryPump:
    """Queues that may have deliveries to make and returns to hand back, drained on `clock`."""

    def __init__(self, clock):
        self._clock = clock
        self.reset()

    def reset(self):
        """Forget what is pending; a turn already scheduled still runs, on the new state."""
        self._dirty = {}  # queues that may have deliveries to make, in order
        self._returns = deque()  # (connection, delivery) of unroutable mandatory messages
        self._call = None

    def wake(self, queue):
        """Note that `queue` may be able to deliver, and make sure the pump runs."""
        self._dirty[queue] = None
        self._schedule()

    def schedule_return(self, conn, delivery):
        """Hand an unroutable mandatory message back to `conn` on the next turn."""
        self._returns.append((conn, delivery))
        self._schedule()

    def forget(self, queue):
        """Drop a deleted queue from the pending work."""
        self._dirty.pop(queue, None)

    def stop(self):
        """Cancel the pending turn and drop all pending work, leaving nothing on the reactor."""
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._call = None
        self._dirty.clear()
        self._returns.clear()

    def _schedule(self):
        if self._call is None:
            self._call = self._clock.callLater(0, self._pump)

    def _pump(self):
        budget = _PUMP_BATCH
        try:
            while self._returns:
                conn, delivery = self._returns.popleft()
                conn.returned(delivery)
            while self._dirty and budget > 0:
                queue = next(iter(self._dirty))
                del self._dirty[queue]
                budget -= queue.deliver(budget)
                if budget <= 0:
                    self._dirty[queue] = None
        finally:
            self._call = None
            if self._dirty or self._returns:
                self._schedule()
