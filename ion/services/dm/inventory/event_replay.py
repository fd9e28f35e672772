"""
Replay: stored events published again, oldest first, at a bounded rate,
with their exact bodies, so R1 peers read them as ordinary events.

Each copy carries the AMQP header `x-ion-replay` (the content key of the
stored event), so a subscriber that cares can tell a replay from a live
event.  It goes to its original routing key on the system's events
exchange, or to one named queue through the default exchange.
"""

from twisted.internet import defer, task

from ion.core.messaging import envelope
from ion.services.dm.distribution.events import get_events_exchange_point
from ion.services.dm.distribution.publisher_subscriber import EXCHANGE_FLAGS
from ion.services.dm.inventory.event_store import StoreError

REPLAY_HEADER = "x-ion-replay"
PAGE = 500


def replay_properties(record):
    """The AMQP properties of the replayed copy of `record`: R1's, marked as a replay."""
    properties = envelope.message_properties(delivery_mode=2)
    properties["headers"] = {REPLAY_HEADER: record["content_key"]}
    return properties


@defer.inlineCallbacks
def replay(store, exchange_manager, query=None, to_queue=None, rate=100.0, max_events=10000, clock=None,
           dry_run=False, each=None):
    """
    Publish the events matching `query` (find_events arguments; order is
    always oldest first) at most `rate` per second, up to `max_events`.
    Fires with the number published (or that would be, when `dry_run`).
    `each(record)`, if given, is called for every event as it goes (or
    would go).
    """
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0:
        raise StoreError("replay rate must be a number > 0 (events per second), not %r" % (rate,))
    if not isinstance(max_events, int) or isinstance(max_events, bool) or max_events < 1:
        raise StoreError("replay max_events must be an int >= 1, not %r" % (max_events,))
    if clock is None:
        from twisted.internet import reactor as clock
    query = dict(query or {}, descending=False)
    query.pop("after", None)
    exchange = get_events_exchange_point()
    if not dry_run and to_queue is None:
        yield exchange_manager.declare_for(dict(EXCHANGE_FLAGS, exchange=exchange))
    sent, after, started = 0, None, clock.seconds()
    while sent < max_events:
        records, after = yield store.find_events(limit=min(PAGE, max_events - sent), after=after, **query)
        for record in records:
            # Paced from the start: event n goes no earlier than n / rate seconds in.
            wait = started + sent / rate - clock.seconds()
            if wait > 0:
                yield task.deferLater(clock, wait, lambda: None)
            if not dry_run:
                if to_queue is None:
                    yield exchange_manager.publish_raw(exchange, record["routing_key"], record["body"],
                                                       replay_properties(record))
                else:
                    yield exchange_manager.publish_raw("", to_queue, record["body"], replay_properties(record))
            if each is not None:
                each(record)
            sent += 1
        if after is None:
            break
    return sent
