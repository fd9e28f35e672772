"""
A watch on a subscriber's queue: a queue that keeps growing means its
subscriber is not keeping up, and the broker's memory grows with it.

Every `interval` seconds the watch reads the queue's ready-message count
(ExchangeManager.queue_depth).  Past `threshold` it logs one warning with
the depth; it warns again only after the depth fell below half the threshold
(logged too) and grew past it once more, so a queue hovering at the
threshold does not fill the log.
"""

from twisted.internet import task
from twisted.logger import Logger

from ion.core.messaging.broker.interface import BrokerError

__all__ = ["DepthWatch"]

log = Logger()


class DepthWatch:
    """
    Checks the depth of the queue `queue()` names (it can change: a
    broker-named queue is renamed after a reconnect) through `broker()` (the
    container's ExchangeManager), on `clock`.  Nothing is checked while the
    connection is down, and a check never waits for a reconnect, so stopping
    is immediate.
    """

    def __init__(self, broker, queue, threshold, interval, clock, who):
        self._broker = broker
        self._queue = queue
        self.threshold = threshold
        self.interval = interval
        self._clock = clock
        self._who = who
        self._loop = None
        self._checking = False
        self.checks = 0  # completed, failed ones included
        self.warned = False

    @property
    def running(self):
        return self._loop is not None

    def start(self):
        """Check every `interval` seconds from now on (a no-op if already running)."""
        if self._loop is None:
            self._loop = task.LoopingCall(self.check)
            self._loop.clock = self._clock
            self._loop.start(self.interval, now=False)

    def stop(self):
        """Stop checking; leaves nothing scheduled (a check in flight is ignored when it comes back)."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def check(self):
        """One check, unless one is still in flight or the broker is away."""
        broker, queue = self._broker(), self._queue()
        if self._checking or queue is None or not broker.connected:
            return
        self._checking = True
        d = broker.queue_depth(queue)
        d.addCallbacks(self._seen, self._failed, callbackArgs=(queue,), errbackArgs=(queue,))
        d.addBoth(self._checked)

    def _checked(self, _):
        self._checking = False
        self.checks += 1

    def _seen(self, depth, queue):
        if self._loop is None:
            return
        if not self.warned and depth > self.threshold:
            self.warned = True
            log.warn(
                "{who}: queue {queue} holds {depth} ready messages, over the warning threshold of {threshold}: "
                "the subscriber is not keeping up (max_length= bounds its queue)",
                who=self._who, queue=queue, depth=depth, threshold=self.threshold,
            )
        elif self.warned and depth < self.threshold / 2:
            self.warned = False
            log.info("{who}: queue {queue} is down to {depth} ready messages", who=self._who, queue=queue, depth=depth)

    def _failed(self, failure, queue):
        if failure.check(BrokerError):
            # Lost the broker or the queue meanwhile: the next check tries again.
            log.debug("{who}: cannot read the depth of {queue}: {e}", who=self._who, queue=queue, e=failure.value)
        else:
            log.failure("{who}: checking the depth of {queue} failed", failure, who=self._who, queue=queue)
