"""
The container's Prometheus metrics, in one registry of their own.

A bottom-floor module (it imports only prometheus_client and Twisted's
Deferred): every layer may count here with one call.  The status server
(ion.core.cc.status) serves `REGISTRY`.  Subscribers are labelled by their
binding key, publishers by event id, so the number of series stays bounded by
what the code uses.

What moves for every event (published, confirmed, delivered, handled, the
handler's time) is kept as plain numbers in a Tallies and turned into metric
families when /metrics is scraped: a prometheus_client child takes a lock per
update, several times an event.  Only the reactor's thread updates them.
"""

import bisect
import itertools
import time
import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from twisted.internet.defer import succeed
from twisted.python.failure import Failure

REGISTRY = CollectorRegistry(auto_describe=True)


class Tallies:
    """A collector of per-label counts objects (made by `make` on first use), exported by `families`."""

    def __init__(self, make, families):
        self._make, self._families, self._by_label = make, families, {}

    def get(self, label):
        """The counts of `label`, shared by everything counted under it."""
        counts = self._by_label.get(label)
        if counts is None:
            counts = self._by_label[label] = self._make()
        return counts

    def collect(self):
        return self._families(list(self._by_label.items()))


class PublishCounts:
    """ion_events_published and ion_events_confirmed of one event id."""

    __slots__ = ("published", "confirmed", "created")

    def __init__(self):
        self.published = self.confirmed = 0
        self.created = time.time()


def _publish_families(items):
    published = CounterMetricFamily("ion_events_published", "Events handed to the broker", labels=["event_id"])
    confirmed = CounterMetricFamily("ion_events_confirmed", "Events the broker confirmed", labels=["event_id"])
    for label, counts in items:
        published.add_metric([label], counts.published, created=counts.created)
        confirmed.add_metric([label], counts.confirmed, created=counts.created)
    return [published, confirmed]


class DeliveryCounts:
    """Delivered, handled and the handler's time (Prometheus' default buckets) of one subscriber label."""

    __slots__ = ("delivered", "handled", "buckets", "seconds", "created")
    BOUNDS = Histogram.DEFAULT_BUCKETS  # ends with +Inf: every time has its bucket

    def __init__(self):
        self.delivered = self.handled = 0
        self.buckets = [0] * len(self.BOUNDS)  # observations per bucket (not cumulative)
        self.seconds = 0.0
        self.created = time.time()

    def observe(self, seconds):
        """One handler call's time: in the first bucket whose bound it does not exceed (le), as Prometheus counts."""
        self.buckets[bisect.bisect_left(self.BOUNDS, seconds)] += 1
        self.seconds += seconds


def _delivery_families(items):
    delivered = CounterMetricFamily("ion_subscriber_delivered", "Events delivered to a subscriber",
                                    labels=["subscriber"])
    handled = CounterMetricFamily("ion_subscriber_handled", "Events a subscriber's handler finished",
                                  labels=["subscriber"])
    seconds = HistogramMetricFamily("ion_subscriber_handler_seconds", "Time in a subscriber's handler",
                                    labels=["subscriber"])
    for label, counts in items:
        delivered.add_metric([label], counts.delivered, created=counts.created)
        handled.add_metric([label], counts.handled, created=counts.created)
        buckets = zip(map(floatToGoString, DeliveryCounts.BOUNDS), itertools.accumulate(counts.buckets))
        seconds.add_metric([label], list(buckets), counts.seconds)
    return [delivered, handled, seconds]


publish_tallies = Tallies(PublishCounts, _publish_families)
delivery_tallies = Tallies(DeliveryCounts, _delivery_families)
REGISTRY.register(publish_tallies)
REGISTRY.register(delivery_tallies)


def delivery_counts(subscriber):
    """The DeliveryCounts of a subscriber label (its binding key), shared by every subscriber with that key."""
    return delivery_tallies.get(str(subscriber))

events_returned = Counter(
    "ion_events_returned", "Events the broker returned (no queue took them) or a full queue refused", ["event_id"],
    registry=REGISTRY,
)
events_failed = Counter("ion_events_failed", "Events whose publish failed otherwise", ["event_id"], registry=REGISTRY)

handler_failed = Counter("ion_subscriber_failed", "Events a subscriber's handler failed on", ["subscriber"],
                         registry=REGISTRY)
retried = Counter("ion_subscriber_retried", "Events republished for another attempt", ["subscriber"],
                  registry=REGISTRY)
dead_lettered = Counter("ion_subscriber_dead_lettered", "Events moved to the dead letters", ["subscriber"],
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


# event id -> (its PublishCounts, its label); bounded like the labels themselves.
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
        counters = _publish_counters[event_id] = (publish_tallies.get(label), label)
    counts = counters[0]
    counts.published += 1
    if d.called and fires_with is not None and not isinstance(d.result, Failure):
        counts.confirmed += 1
        return succeed(fires_with)
    return d.addCallbacks(_publish_confirmed, _publish_failed, (counts, fires_with), None, (counters[1],))


def _publish_confirmed(result, counts, fires_with):
    counts.confirmed += 1
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
