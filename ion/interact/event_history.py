"""
`python -m ion.interact.event_history` (ion-history): the event history from the command line, read straight from
the store (no broker needed).

    ion-history [EVENT_ID] [--origin PATTERN] [--since 10m|ISO] [--until 10m|ISO]
                [--limit N] [--json] [--store URL]

Newest first; `--since`/`--until` take an age (30s, 10m, 2h, 1d) or an ISO
8601 time (UTC unless it says otherwise).  --store defaults to the
`event_store` location of ion.config.  Meant to become `ion-events history`.
"""

import argparse
import datetime
import json
import re
import sys
import time

from twisted.internet import defer, task

from ion.services.dm.inventory.event_store import EventStore, StoreError

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
        raise argparse.ArgumentTypeError("%r is neither an age (30s, 10m, 2h, 1d) nor an ISO 8601 time" % (text,))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def format_record(record, as_json=False):
    """One output line for a stored event."""
    when = datetime.datetime.fromtimestamp(record["event_time"], datetime.timezone.utc).isoformat()
    if as_json:
        shown = {k: v for k, v in record.items() if k != "body"}
        shown["time"] = when
        return json.dumps(shown, sort_keys=True)
    return "%s %s %s %s %s" % (when, record["event_id"], record["origin"], record["name"],
                               json.dumps(record["fields"].get("additional_data", {}), sort_keys=True))


def parser():
    p = argparse.ArgumentParser(prog="ion-history", description="Show stored ION events, newest first.")
    p.add_argument("event_id", nargs="?", type=int, help="only events of this id (e.g. 3003)")
    p.add_argument("--origin", help="origin pattern, topic rules (* one word, # any)")
    p.add_argument("--since", type=parse_time, help="age (10m) or ISO time")
    p.add_argument("--until", type=parse_time, help="age (10m) or ISO time")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--store", help="store URL (postgresql://... or sqlite:PATH)")
    return p


@defer.inlineCallbacks
def show(args, out):
    """Write the events `args` asks for to `out`; fires with how many."""
    store = EventStore(args.store)
    yield store.open()
    try:
        records, _cursor = yield store.find_events(
            event_id=args.event_id, origin=args.origin, start=args.since, end=args.until, limit=args.limit
        )
    finally:
        store.close()
    for record in records:
        out.write(format_record(record, args.json) + "\n")
    return len(records)


def main(argv=None):
    args = parser().parse_args(argv)

    def run(_reactor):
        return show(args, sys.stdout).addErrback(_fail)

    def _fail(failure):
        failure.trap(StoreError)
        sys.stderr.write("ion-history: %s\n" % (failure.value,))
        raise SystemExit(2)

    task.react(run)


if __name__ == "__main__":
    main()
