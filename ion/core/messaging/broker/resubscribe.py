"""
Consuming again after the broker cancelled a consumer (both broker kinds).

RabbitMQ tells a consumer it stopped delivering to it (a server-sent
basic.cancel, which clients that announce `consumer_cancel_notify` get) when
its queue was deleted, when the node holding a classic queue went down, or
when a quorum queue's leader moved.  Nothing is wrong with the connection,
so no reconnect will start it again: the connection does, declaring the
queue again as recorded (with the bindings and exchanges that route to it)
and consuming from it, FIRST_DELAY after the cancel (a quorum queue's new
leader is elected meanwhile; a connection closing right after deleting its
queues is gone by then and declares nothing) and again after a wait that
doubles up to MAX_DELAY while the broker refuses (a queue whose node is
still down, say).  Closing the connection stops the tries (`Resubscriptions`).
"""

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from ion.core.messaging.broker.interface import BrokerError

log = Logger()

FIRST_DELAY = 0.25
MAX_DELAY = 5.0


class Gone(BrokerError):
    """The queue is gone and this connection cannot make it again (it did not declare it): stop trying."""


class Resubscriptions:
    """The consumers of one connection subscribing again, each a `resubscribe` loop; `stop()` ends them all."""

    def __init__(self, clock):
        self._clock = clock
        self._running = set()

    def start(self, attempt, wanted, what):
        """resubscribe(...) on this clock; fires with its result, or False when stopped."""
        d = resubscribe(attempt, wanted, self._clock, what)
        self._running.add(d)

        def ended(result):
            self._running.discard(d)
            if isinstance(result, Failure):
                result.trap(defer.CancelledError)
                return False
            return result

        return d.addBoth(ended)

    def stop(self):
        for d in list(self._running):
            d.cancel()


@defer.inlineCallbacks
def resubscribe(attempt, wanted, clock, what):
    """
    Call `attempt()` (a Deferred) until it succeeds, after waiting on `clock`
    FIRST_DELAY and then twice as long each time up to MAX_DELAY, as long as
    `wanted()`; fires with True once it did, False when it was no longer
    wanted or raised Gone.  Failures are logged at debug level: the caller
    logged the cancel.
    """
    delay, tries = FIRST_DELAY, 0
    while True:
        yield task.deferLater(clock, delay, lambda: None)
        if not wanted():
            return False
        tries += 1
        try:
            yield attempt()
        except Gone:
            return False
        except Exception as e:
            delay = min(delay * 2, MAX_DELAY)
            log.debug("{what}: subscribing again failed ({e}); next try in {delay} s", what=what, e=e, delay=delay)
            continue
        if tries > 1:
            log.info("{what}: consuming again after {tries} tries", what=what, tries=tries)
        return True


@defer.inlineCallbacks
def redeclare_queue(connection, topology, queue):
    """
    Declare `queue` again through `connection` (an IBrokerConnection that
    records into `topology`) as it was declared, with the exchanges and
    exchange bindings that route to it and its bindings; fires with its
    name, a new one for a broker-named queue.
    """
    exchanges, routes = topology.route_to(queue)
    for name, flags in exchanges:
        yield connection.exchange_declare(name, **flags)
    for destination, source, key in routes:
        yield connection.exchange_bind(destination, source, key)
    flags, broker_named = topology.queues[queue]
    bindings = [(x, key) for q, x, key in topology.bindings if q == queue]
    name = yield connection.queue_declare("" if broker_named else queue, **flags)
    if name != queue:
        topology.rename(queue, name)
    for exchange, key in bindings:
        yield connection.queue_bind(name, exchange, key)
    return name
