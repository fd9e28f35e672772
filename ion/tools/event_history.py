"""
The event history on the command line: `ion-events history`, `replay`
and the history part of `tail --since`, reading the event store straight
(a PostgreSQL URL or a SQLite path, as the container's `event_store`
option), so `history` needs no broker and no running service.

Times are an age (30s, 10m, 2h, 1d: that long before now) or an ISO 8601
time (UTC unless it says otherwise).
"""

import datetime
import json
import math
import os
import re
import time

from twisted.internet import defer
from twisted.python import usage

from ion.services.dm.inventory import event_replay
from ion.services.dm.inventory.event_store import MAX_LIMIT, EventStore
from ion.tools import event_catalog

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text, now=None):
    """Seconds since the epoch for an age (`10m`: ten minutes before `now`) or an ISO 8601 time."""
    now = time.time() if now is None else now
    age = _AGE.match(text)
    if age:
        return now - float(age.group(1)) * _UNITS[age.group(2)]
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise usage.UsageError("%r is neither an age (30s, 10m, 2h, 1d) nor an ISO 8601 time" % (text,)) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def format_record(record, as_json=False):
    """One `history` line for a stored event: ISO time, id, origin, name and payload (or JSON without the body)."""
    when = datetime.datetime.fromtimestamp(record["event_time"], datetime.timezone.utc).isoformat()
    if as_json:
        shown = {k: v for k, v in record.items() if k != "body"}
        shown["time"] = when
        return json.dumps(shown, sort_keys=True)
    return "%s %s %s %s %s" % (when, record["event_id"], record["origin"], record["name"],
                               json.dumps(record["fields"].get("additional_data", {}), sort_keys=True))


def tail_line(routing_key, content, options):
    """An event (its message instance) as `tail` prints it, live or stored, in tail's format options."""
    shown = event_catalog.event_record(routing_key, content, full=options["full"])
    if options["json"]:
        return event_catalog.json_line(shown)
    return event_catalog.full_text(shown) if options["full"] else event_catalog.one_line(shown)


def query(options):
    """find_events arguments from history/replay/tail options: one query per named event (one for all)."""
    kinds = options["events"] or [None]
    return [{"event_id": kind.event_id if kind else None, "origin": options["origin"],
             "start": options["since"], "end": options.get("until")} for kind in kinds]


@defer.inlineCallbacks
def pages(store, one, limit, descending, each):
    """Calls each(records) per page of the first `limit` events matching the query `one`, paged by cursor."""
    seen, after = 0, None
    while seen < limit:
        records, after = yield store.find_events(limit=min(MAX_LIMIT, limit - seen), descending=descending,
                                                 after=after, **one)
        seen += len(records)
        each(records)
        if after is None:
            break


@defer.inlineCallbacks
def find(store, queries, limit, descending):
    """The `limit` first (in the order asked) of the events matching any of `queries`."""
    found = []
    for one in queries:
        yield pages(store, one, limit, descending, found.extend)
    found.sort(key=lambda r: (r["event_time"], r["row"]), reverse=descending)
    return found[:limit]


@defer.inlineCallbacks
def opened(options):
    """The store --store names, open; a usage error for a SQLite file that is not there (opening would make it)."""
    store = EventStore(options["store"])
    path = store.sqlite_path
    if path is not None and path != ":memory:" and not os.path.exists(path):
        raise usage.UsageError("no event store at %s (name one with --store: a postgresql:// URL or a SQLite path)"
                               % (path,))
    yield store.open()
    return store


@defer.inlineCallbacks
def history(options, output):
    """`history`: the newest --limit events that match, newest first."""
    store = yield opened(options)
    try:
        records = yield find(store, query(options), options["limit"], descending=True)
    finally:
        store.close()
    for record in records:
        output.line(format_record(record, options["json"]))
    if not records:
        output.notice("no stored events match (store %s)" % (store.url,))
    return 0


@defer.inlineCallbacks
def replay(options, output, broker):
    """`replay`: the matching events republished, oldest first, at --rate per second (listed with --dry-run)."""
    one = {k: v for k, v in query(options)[0].items() if v is not None}
    dry = options["dry-run"]
    target = "queue %s" % (options["to-queue"],) if options["to-queue"] else "their routing keys"
    if options["to-queue"] and not dry and not (yield broker.queue_exists(options["to-queue"])):
        # The default exchange drops what is sent to no queue: say so before sending anything.
        raise usage.UsageError("replay --to-queue: there is no queue %r on the broker" % (options["to-queue"],))
    store = yield opened(options)
    try:
        count = yield event_replay.replay(
            store, broker, one, to_queue=options["to-queue"], max_events=options["limit"], dry_run=dry,
            rate=math.inf if dry else options["rate"],  # a dry run sends nothing: nothing to pace, it lists at once
            each=(lambda record: output.line(format_record(record))) if dry else None,
        )
    finally:
        store.close()
    output.line("%s %d events to %s" % ("would replay" if dry else "replayed", count, target))
    return 0
