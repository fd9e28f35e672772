"""
The container's Prometheus metrics, in one registry of their own.

A bottom-floor module (it imports only prometheus_client and Twisted's
Deferred): every layer may count here with one call.  The status server (ion.core.cc.status) serves
`REGISTRY`.  Subscribers are labelled by their binding key, publishers by
event id, so the number of series stays bounded by what the code uses.
"""

import time
import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from twisted.internet.defer import succeed
from twisted.python.failure import Failure

REGISTRY = CollectorRegistry(auto_describe=True)


class _PublishTally:
    """
    ion_events_published and ion_events_confirmed by event id, as counters.  The publish path counts
    both for every event: plain ints here, where a Counter child takes a lock per inc.  Only the
    reactor's thread publishes, so they need none.
    """

    def __init__(self):
        self.counts = {}  # event id label -> [published, confirmed, created (epoch seconds)]

    def counter(self, label):
        """The [published, confirmed, created] list of `label`, made on first use."""
        counts = self.counts.get(label)
        if counts is None:
            counts = self.counts[label] = [0, 0, time.time()]
        return counts

    def collect(self):
        published = CounterMetricFamily("ion_events_published", "Events handed to the broker", labels=["event_id"])
        confirmed = CounterMetricFamily("ion_events_confirmed", "Events the broker confirmed", labels=["event_id"])
        for label, (sent, settled, created) in list(self.counts.items()):
            published.add_metric([label], sent, created=created)
            confirmed.add_metric([label], settled, created=created)
        return [published, confirmed]


publish_tally = _PublishTally()
REGISTRY.register(publish_tally)

events_returned = Counter(
    "ion_events_returned", "Events the broker returned (no queue took them) or a full queue refused", ["event_id"],
    registry=REGISTRY,
)
events_failed = Counter("ion_events_failed", "Events whose publish failed otherwise", ["event_id"], registry=REGISTRY)

delivered = Counter("ion_subscriber_delivered", "Events delivered to a subscriber", ["subscriber"], registry=REGISTRY)
handled = Counter("ion_subscriber_handled", "Events a subscriber's handler finished", ["subscriber"], registry=REGISTRY)
handler_failed = Counter("ion_subscriber_failed", "Events a subscriber's handler failed on", ["subscriber"],
                         registry=REGISTRY)
retried = Counter("ion_subscriber_retried", "Events republished for another attempt", ["subscriber"],
                  registry=REGISTRY)
dead_lettered = Counter("ion_subscriber_dead_lettered", "Events moved to the dead letters", ["subscriber"],
                        registry=REGISTRY)
handler_seconds = Histogram("ion_subscriber_handler_seconds", "Time in a subscriber's handler", ["subscriber"],
                            registry=REGISTRY)

rpcs = Counter("ion_rpc", "RPCs made, by outcome (ok, error, timeout, failed)", ["outcome"], registry=REGISTRY)
rpc_seconds = Histogram("ion_rpc_seconds", "RPC latency, request to reply", registry=REGISTRY)

broker_connected = Gauge("ion_broker_connected", "1 while the broker connection is up", registry=REGISTRY)
broker_reconnects = Counter("ion_broker_reconnects", "Reconnects to the broker", registry=REGISTRY)

event_monitor_dropped = Counter("ion_event_monitor_dropped", "Stored events the event monitor dropped (bound)",
                                registry=REGISTRY)

# Every live subscriber, for the readiness check (weak: a dropped subscriber just goes).
subscribers = weakref.WeakSet()


def track_subscriber(subscriber):
    subscribers.add(subscriber)


def message_returned(exchange, routing_key):
    """A basic.return: counted as an event's when it came back from an events exchange (`<sys>.events.topic`)."""
    if str(exchange).endswith(".events.topic"):
        events_returned.labels(str(routing_key).partition(".")[0]).inc()


def rpc_finished(outcome, seconds):
    rpcs.labels(outcome).inc()
    rpc_seconds.observe(seconds)


# event id -> its publish_tally counts and label; bounded like the labels themselves.
_publish_counters = {}


def observe_publish(d, event_id, fires_with=None):
    """
    Count a publish (a Deferred) under `event_id`: published now, then confirmed, returned or failed.
    One callback pair, no closure; a confirmed publish fires with `fires_with` if given (so a caller
    needs no callback of its own to change what it fires with).  A publish confirmed already (the
    embedded broker's) is counted at once and answered with a new fired Deferred: cheaper than
    running a callback on a fired one.
    """
    counters = _publish_counters.get(event_id)
    if counters is None:
        label = str(event_id)
        counters = _publish_counters[event_id] = (publish_tally.counter(label), label)
    counts = counters[0]
    counts[0] += 1
    if d.called and fires_with is not None and not isinstance(d.result, Failure):
        counts[1] += 1
        return succeed(fires_with)
    return d.addCallbacks(_publish_confirmed, _publish_failed, (counts, fires_with), None, (counters[1],))


def _publish_confirmed(result, counts, fires_with):
    counts[1] += 1
    return result if fires_with is None else fires_with


def _publish_failed(failure, label):
    if type(failure.value).__name__ in ("MessageRefused", "Unroutable"):
        events_returned.labels(label).inc()
    else:
        events_failed.labels(label).inc()
    return failure


def observe_rpc(d, clock):
    """Count an RPC (a Deferred) by outcome and time it on `clock`."""
    started = clock.seconds()

    def settled(result):
        error = _error_of(result)
        name = type(error).__name__
        if error is None:
            outcome = "ok"
        elif name == "TimeoutError":
            outcome = "timeout"
        elif name.startswith("Received"):
            outcome = "error"
        else:
            outcome = "failed"
        rpc_finished(outcome, clock.seconds() - started)
        return result

    return d.addBoth(settled)


def _error_of(result):
    """The exception of a Failure, None for a result."""
    return result.value if hasattr(result, "trap") else None
