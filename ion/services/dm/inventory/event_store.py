"""
The event store: every event of a system, as it came off the wire, in
PostgreSQL or SQLite, behind `twisted.enterprise.adbapi` so no query blocks
the reactor.

One table, `ion_events`, created on first use with the same columns on both
databases (only the id and binary column types differ):

  id            row number, the tie-breaker of the time order
  event_id      the first word of the routing key (1052, 3003, ...)
  name          the EventMessage's name
  origin        the rest of the routing key
  event_time    the EventMessage's `datetime` (seconds)
  received      when the persister took it (seconds)
  routing_key   `<event_id>.<origin>` as routed
  content_key   hex SHA-1 key of the IonMsg head (§6.4), UNIQUE: redeliveries
                and re-sends are the same row
  body          the exact R1 msgpack body, so a replay is byte-identical
  fields        the decoded fields as JSON, for display and ad-hoc queries

Queries are keyset-paged on (event_time, id), newest first by default, and
never count: a cursor says where the next page starts.  An origin pattern
uses the broker's topic rules (* one word, # zero or more): the literal
words before the first wildcard narrow the index range in SQL, and
`ion.core.messaging.broker.topic.matches` decides each row, so the rules
are exactly the broker's.

Where the store lives: a URL, `postgresql://...` (psycopg 3) or
`sqlite:PATH` (or a bare path; `sqlite::memory:` for tests).
"""

import json

from twisted.enterprise import adbapi
from twisted.internet import defer

from ion.core import ioninit
from ion.core.exception import ConfigurationError
from ion.core.messaging import envelope
from ion.core.messaging.broker.topic import matches, split_words

CONF = ioninit.config(__name__)
DEFAULT_URL = "sqlite:ion-events.sqlite"
MAX_LIMIT = 10000

COLUMNS = ("event_id", "name", "origin", "event_time", "received", "routing_key", "content_key", "body", "fields")

_TYPES = {
    "postgresql": {"id": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA", "text": 'TEXT COLLATE "C"', "real": "DOUBLE PRECISION"},
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB", "text": "TEXT", "real": "REAL"},
}

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ion_events (
        id {id},
        event_id INTEGER NOT NULL,
        name {text} NOT NULL,
        origin {text} NOT NULL,
        event_time {real} NOT NULL,
        received {real} NOT NULL,
        routing_key {text} NOT NULL,
        content_key {text} NOT NULL UNIQUE,
        body {blob} NOT NULL,
        fields {text} NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS ion_events_origin_time ON ion_events (origin, event_time, id)",
    "CREATE INDEX IF NOT EXISTS ion_events_time ON ion_events (event_time, id)",
    "CREATE INDEX IF NOT EXISTS ion_events_id_time ON ion_events (event_id, event_time, id)",
)


class StoreError(ConfigurationError):
    """The store location or a query argument is not usable; the message says which."""


def store_url(spawn_value=None):
    """The store location: the given value, else the `event_store` container arg, else ion.config, else SQLite."""
    return spawn_value or ioninit.cont_args.get("event_store") or CONF.getValue("url", DEFAULT_URL)


def _connect_args(url):
    """(dialect, adbapi ConnectionPool args, kwargs) for a store URL."""
    if not isinstance(url, str) or not url:
        raise StoreError("event store location must be a non-empty str, not %r" % (url,))
    if url.startswith(("postgresql://", "postgres://")):
        # One connection: batches are written one transaction at a time, in order.
        return "postgresql", ("psycopg", url), {"cp_min": 1, "cp_max": 2, "cp_reconnect": True, "cp_noisy": False}
    path = url[len("sqlite:"):] if url.startswith("sqlite:") else url
    if not path:
        raise StoreError("event store %r names no SQLite file" % (url,))
    # SQLite allows one writer; one pool thread keeps it so, and ':memory:' one database.
    return "sqlite", ("sqlite3", path), {"cp_min": 1, "cp_max": 1, "check_same_thread": False, "cp_noisy": False}


class EventRecord(dict):
    """One stored event: its columns by name (`body` bytes, `fields` a dict)."""

    @property
    def message(self):
        """The message dict a subscriber gets for this event (content: the event's message instance)."""
        return envelope.decode(self["body"])

    @property
    def event(self):
        """The event's message instance (its EventMessage fields read as its own)."""
        return self.message["content"]


class EventStore:
    """The table of events at `url`; `open()` creates it on first use, `close()` lets the pool go."""

    def __init__(self, url=None):
        self.url = store_url(url)
        self.dialect, self._args, self._kwargs = _connect_args(self.url)
        self._pool = None

    @property
    def sqlite_path(self):
        """The SQLite file (None for PostgreSQL): a reader can tell a missing store from an empty one."""
        return self._args[1] if self.dialect == "sqlite" else None

    @defer.inlineCallbacks
    def open(self):
        if self._pool is not None:
            return self
        self._pool = adbapi.ConnectionPool(*self._args, **self._kwargs)
        try:
            yield self._pool.runInteraction(self._create)
        except Exception:
            self.close()
            raise
        return self

    def close(self):
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _sql(self, text):
        return text.replace("?", "%s") if self.dialect == "postgresql" else text

    def _create(self, cursor):
        types = _TYPES[self.dialect]
        for statement in SCHEMA:
            cursor.execute(statement.format(**types))

    def _run(self, interaction, *args):
        if self._pool is None:
            return defer.fail(StoreError("event store %s is not open" % (self.url,)))
        return self._pool.runInteraction(interaction, *args)

    # --- writing ----------------------------------------------------------
    def insert(self, rows):
        """
        Store `rows` (dicts with COLUMNS; `fields` a dict) in one transaction,
        skipping any whose content key is already stored.  Fires with how
        many were new.
        """
        return self._run(self._insert, list(rows))

    def _insert(self, cursor, rows):
        values = []
        for row in rows:
            value = [row[c] for c in COLUMNS]
            value[-1] = json.dumps(row["fields"], default=str, sort_keys=True)
            values.append(value)
        if not values:
            return 0
        if self.dialect == "postgresql":
            return _copy_insert(cursor, values)
        # sqlite3 sums the rows each statement inserted; a skipped duplicate inserts none.
        cursor.executemany(
            "INSERT INTO ion_events (%s) VALUES (%s) ON CONFLICT (content_key) DO NOTHING"
            % (", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))),
            values,
        )
        return max(cursor.rowcount, 0)

    def delete_older_than(self, cutoff, limit=1000):
        """Remove at most `limit` of the oldest events whose event time is before `cutoff`; fires with how many."""
        return self._run(self._delete_older, float(cutoff), int(limit))

    def _delete_older(self, cursor, cutoff, limit):
        cursor.execute(
            self._sql(
                "DELETE FROM ion_events WHERE id IN "
                "(SELECT id FROM ion_events WHERE event_time < ? ORDER BY event_time, id LIMIT ?)"
            ),
            (cutoff, limit),
        )
        return max(cursor.rowcount, 0)

    # --- reading ----------------------------------------------------------
    def find_events(self, event_id=None, origin=None, start=None, end=None, limit=100, descending=True, after=None):
        """
        Fires with (records, cursor): at most `limit` events of `event_id`
        whose origin matches the pattern `origin`, with start <= event time
        < end, newest first unless `descending` is false; `cursor` (None at
        the end) is the `after` that gives the next page.
        """
        query = _Query(event_id, origin, start, end, limit, descending, after)
        return self._run(self._find, query)

    def _find(self, cursor, query):
        records = []
        position = query.after
        while len(records) < query.limit:
            sql, params = query.sql(position, self._sql)
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            for row in rows:
                position = (row[4], row[0])
                record = _record(row)
                if query.pattern is None or matches(query.pattern, record["origin"]):
                    records.append(record)
                    if len(records) == query.limit:
                        break
            if len(rows) < query.chunk:
                return records, None
        return records, _cursor(position)


def _copy_insert(cursor, values):
    """
    PostgreSQL: COPY the batch into a temporary table (emptied at commit),
    then one INSERT ... SELECT that skips stored content keys (and repeats
    within the batch): half the client CPU per row of executemany.  The
    fresh heap reads back in COPY order, so row ids keep the batch's order.
    """
    columns = ", ".join(COLUMNS)
    cursor.execute(
        "CREATE TEMP TABLE IF NOT EXISTS ion_events_batch ON COMMIT DELETE ROWS AS SELECT %s FROM ion_events "
        "WITH NO DATA" % (columns,)
    )
    with cursor.copy("COPY ion_events_batch (%s) FROM STDIN" % (columns,)) as copy:
        for value in values:
            copy.write_row(value)
    cursor.execute(
        "INSERT INTO ion_events (%s) SELECT %s FROM ion_events_batch ON CONFLICT (content_key) DO NOTHING"
        % (columns, columns)
    )
    return max(cursor.rowcount, 0)


def _record(row):
    record = EventRecord(zip(("row",) + COLUMNS, row))
    record["body"] = bytes(record["body"])
    record["fields"] = json.loads(record["fields"])
    return record


def _cursor(position):
    return "%r:%d" % position


def _parse_cursor(after):
    try:
        when, row = after.rsplit(":", 1)
        return float(when), int(row)
    except (AttributeError, ValueError):
        raise StoreError("after must be a cursor returned by find_events, not %r" % (after,)) from None


class _Query:
    """A checked find_events query and the SQL of its next chunk."""

    def __init__(self, event_id, origin, start, end, limit, descending, after):
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
            raise StoreError("limit must be an int from 1 to %d, not %r" % (MAX_LIMIT, limit))
        if origin is not None and not isinstance(origin, str):
            raise StoreError("origin must be a str pattern, not %r" % (origin,))
        self.event_id = None if event_id is None else int(event_id)
        self.start = None if start is None else float(start)
        self.end = None if end is None else float(end)
        self.limit = limit
        self.descending = bool(descending)
        self.after = None if after is None else _parse_cursor(after)
        self.exact, self.low, self.pattern = _origin_range(origin)
        # Rows are read in chunks when a pattern may turn some away.
        self.chunk = limit if self.pattern is None else max(limit, 200)

    def sql(self, position, dialect):
        where, params = [], []
        if self.event_id is not None:
            where.append("event_id = ?")
            params.append(self.event_id)
        if self.exact is not None:
            where.append("origin = ?")
            params.append(self.exact)
        elif self.low is not None:
            # Every origin the pattern can match is the literal words alone or them and '.' plus more.
            where.append("origin >= ? AND origin < ?")
            params += [self.low, self.low + "/"]
        if self.start is not None:
            where.append("event_time >= ?")
            params.append(self.start)
        if self.end is not None:
            where.append("event_time < ?")
            params.append(self.end)
        if position is not None:
            where.append("(event_time, id) %s (?, ?)" % ("<" if self.descending else ">"))
            params += list(position)
        order = "DESC" if self.descending else "ASC"
        sql = "SELECT id, %s FROM ion_events%s ORDER BY event_time %s, id %s LIMIT %d" % (
            ", ".join(COLUMNS),
            (" WHERE " + " AND ".join(where)) if where else "",
            order,
            order,
            self.chunk,
        )
        return dialect(sql), params


def _origin_range(origin):
    """(exact origin, low bound of the literal prefix, pattern to check per row) for an origin pattern."""
    if origin is None or origin == "#":
        return None, None, None
    words = split_words(origin)
    if "*" not in words and "#" not in words:
        return origin, None, None
    literal = []
    for word in words:
        if word in ("*", "#"):
            break
        literal.append(word)
    return None, (".".join(literal) if literal else None), origin
