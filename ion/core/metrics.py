"""
The container's Prometheus metrics, in one registry of their own.

A bottom-floor module (it imports only prometheus_client): every layer may
count here with one call.  The status server (ion.core.cc.status) serves
`REGISTRY`.  Subscribers are labelled by their binding key, publishers by
event id, so the number of series stays bounded by what the code uses.
"""

import bisect
import itertools
import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry(auto_describe=True)

events_published = Counter("ion_events_published", "Events handed to the broker", ["event_id"], registry=REGISTRY)
events_confirmed = Counter("ion_events_confirmed", "Events the broker confirmed", ["event_id"], registry=REGISTRY)
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



class DeliveryCounts:
    """
    What moves for every event a subscriber takes, as plain numbers: delivered, handled and the handler's
    time (Prometheus' default buckets).  A prometheus_client child takes a lock per update, three times an
    event; these are read when /metrics is scraped (DeliveryCollector), in the reactor thread that updates them.
    """

    __slots__ = ("delivered", "handled", "buckets", "seconds")
    BOUNDS = Histogram.DEFAULT_BUCKETS  # ends with +Inf: every time has its bucket

    def __init__(self):
        self.delivered = 0
        self.handled = 0
        self.buckets = [0] * len(self.BOUNDS)  # observations per bucket (not cumulative)
        self.seconds = 0.0

    def observe(self, seconds):
        """One handler call's time: in the first bucket whose bound it does not exceed (le), as Prometheus counts."""
        self.buckets[bisect.bisect_left(self.BOUNDS, seconds)] += 1
        self.seconds += seconds


# subscriber label (binding key) -> its DeliveryCounts; bounded like the labels themselves.
_delivery_counts = {}


def delivery_counts(subscriber):
    """The DeliveryCounts of a subscriber label, shared by every subscriber with that binding key."""
    label = str(subscriber)
    counts = _delivery_counts.get(label)
    if counts is None:
        counts = _delivery_counts[label] = DeliveryCounts()
    return counts


class DeliveryCollector:
    """ion_subscriber_delivered, _handled and _handler_seconds from the DeliveryCounts, at scrape time."""

    def collect(self):
        delivered = CounterMetricFamily("ion_subscriber_delivered", "Events delivered to a subscriber",
                                        labels=["subscriber"])
        handled = CounterMetricFamily("ion_subscriber_handled", "Events a subscriber's handler finished",
                                      labels=["subscriber"])
        seconds = HistogramMetricFamily("ion_subscriber_handler_seconds", "Time in a subscriber's handler",
                                        labels=["subscriber"])
        for label, counts in list(_delivery_counts.items()):
            delivered.add_metric([label], counts.delivered)
            handled.add_metric([label], counts.handled)
            cumulative = itertools.accumulate(counts.buckets)
            seconds.add_metric([label], [(floatToGoString(bound), count) for bound, count in
                                         zip(DeliveryCounts.BOUNDS, cumulative)], counts.seconds)
        return [delivered, handled, seconds]


REGISTRY.register(DeliveryCollector())

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


# event id label -> its (published, confirmed) counters; bounded like the labels themselves.
_publish_counters = {}


def observe_publish(d, event_id, fires_with=None):
    """
    Count a publish (a Deferred) under `event_id`: published now, then confirmed, returned or failed.
    One callback pair, no closure; a confirmed publish fires with `fires_with` if given (so a caller
    needs no callback of its own to change what it fires with).
    """
    label = str(event_id)
    counters = _publish_counters.get(label)
    if counters is None:  # labels() costs more than inc(): looked up once per event id
        counters = _publish_counters[label] = (events_published.labels(label), events_confirmed.labels(label))
    counters[0].inc()
    return d.addCallbacks(_publish_confirmed, _publish_failed, (counters[1], fires_with), None, (label,))


def _publish_confirmed(result, confirmed, fires_with):
    confirmed.inc()
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
    """The exception of a Failure (duck-typed: this module imports no Twisted), None for a result."""
    return result.value if hasattr(result, "trap") else None
