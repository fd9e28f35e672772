"""
The container's Prometheus metrics, in one registry of their own.

A bottom-floor module (it imports only prometheus_client and Twisted's
Deferred): every layer may count here with one call.  The status server (ion.core.cc.status) serves
`REGISTRY`.  Subscribers are labelled by their binding key, publishers by
event id, so the number of series stays bounded by what the code uses.
"""

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.defer import succeed
from twisted.python.failure import Failure

REGISTRY = CollectorRegistry(auto_describe=True)

events_published = Counter("ion_events_published", "Events handed to the broker", ["event_id"], registry=REGISTRY)
events_confirmed = Counter("ion_events_confirmed", "Events the broker confirmed", ["event_id"], registry=REGISTRY)
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


# event id -> its (published, confirmed) counters and label; bounded like the labels themselves.
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
    if counters is None:  # labels() costs more than inc(): looked up once per event id
        label = str(event_id)
        counters = _publish_counters[event_id] = (events_published.labels(label), events_confirmed.labels(label), label)
    counters[0].inc()
    if d.called and fires_with is not None and not isinstance(d.result, Failure):
        counters[1].inc()
        return succeed(fires_with)
    return d.addCallbacks(_publish_confirmed, _publish_failed, (counters[1], fires_with), None, (counters[2],))


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
    """The exception of a Failure, None for a result."""
    return result.value if hasattr(result, "trap") else None
