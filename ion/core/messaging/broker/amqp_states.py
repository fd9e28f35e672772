"""
The state of an AMQPConnection as one named state and a table of the
transitions allowed, after Twisted's ClientService machine: every change of
state goes through `ConnectionState.to`, and one the table does not declare
is a bug, reported at once.

    CONNECTING   --ready-->  READY         first login, topology declared
    CONNECTING   --failed--> CLOSED        the first connection did not work
    READY        --lost-->   RECONNECTING  the TCP connection dropped
    RECONNECTING --ready-->  READY         logged in again, topology replayed
    CONNECTING, READY, RECONNECTING --close--> CLOSING
    CLOSING      --closed--> CLOSED
"""

from twisted.internet import defer

from ion.core.messaging.broker.interface import ConnectionLost

CONNECTING = "CONNECTING"
READY = "READY"
RECONNECTING = "RECONNECTING"
CLOSING = "CLOSING"
CLOSED = "CLOSED"

TRANSITIONS = {
    (CONNECTING, "ready"): READY,
    (CONNECTING, "failed"): CLOSED,
    (READY, "lost"): RECONNECTING,
    (RECONNECTING, "ready"): READY,
    (CONNECTING, "close"): CLOSING,
    (READY, "close"): CLOSING,
    (RECONNECTING, "close"): CLOSING,
    (CLOSING, "closed"): CLOSED,
}


class ConnectionState:
    """
    Where the connection is (`state`), the txamqp client of the current TCP
    connection (`client`, from TCP connect until it is lost; one may be
    logging in while CONNECTING or RECONNECTING), and the calls waiting for
    READY.
    """

    def __init__(self, description, clock):
        self.description = description
        self.state = CONNECTING
        self.client = None
        self.lost_at = None  # when READY was left for RECONNECTING
        self._clock = clock
        self._waiters = []  # Deferreds of calls waiting for READY

    def to(self, event):
        """Take the declared transition for `event`; the new state."""
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise RuntimeError("%s: no transition from %s on %r" % (self.description, self.state, event)) from None
        if event == "lost":
            self.lost_at = self._clock.seconds()
        elif event == "ready":
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)
        elif event == "close":
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.errback(self.not_connected())
        return self.state

    @property
    def ready(self):
        return self.state is READY

    @property
    def closing(self):
        """close() was called: CLOSING or CLOSED."""
        return self.state is CLOSING or self.state is CLOSED

    def not_connected(self):
        return ConnectionLost("connection to %s is %s" % (self.description, "closed" if self.closing else "lost"))

    def not_reconnected(self, timeout):
        if timeout <= 0:
            return self.not_connected()
        return ConnectionLost("not reconnected to %s within %g s (reconnect_timeout)" % (self.description, timeout))

    def check_open(self):
        """Raise ConnectionLost unless there is a TCP connection to use and close() was not called."""
        if self.client is None or self.closing:
            raise self.not_connected()

    def when_ready(self, timeout):
        """Fires once READY; fails with ConnectionLost after `timeout` s or on close()."""
        if self.state is READY:
            return defer.succeed(None)
        if self.closing or timeout <= 0:
            return defer.fail(self.not_connected())
        d = defer.Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        d.addTimeout(timeout, self._clock)

        def timed_out(failure):
            failure.trap(defer.TimeoutError)
            raise self.not_reconnected(timeout)

        return d.addErrback(timed_out)
