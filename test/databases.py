"""
One test class body, two databases: SQLite (a file of the test's own) and
the real PostgreSQL, each test in a database created for it and dropped
after it.

    class StoreTests(DatabaseTestMixin):
        def test_x(self):
            store = yield self.open_store()

    for_each_database(StoreTests, globals())

The PostgreSQL server comes from ION_TEST_POSTGRES_URL (default: the local
server, trust auth); the admin database `postgres` is where the test
databases are created and dropped.
"""

import os
import uuid

from twisted.internet import defer, threads
from twisted.trial import unittest

from test.brokers import for_each

PG_SERVER = os.environ.get("ION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
DATABASES = (("Sqlite", "sqlite"), ("Postgres", "postgresql"))


def _admin(statement):
    import psycopg

    with psycopg.connect(PG_SERVER + "/postgres", autocommit=True) as conn:
        conn.execute(statement)


class DatabaseTestMixin:
    """`open_store()`: an open EventStore in a fresh database, closed and dropped after the test."""

    database = None

    @defer.inlineCallbacks
    def store_url(self):
        """A URL of a fresh, empty database (dropped after the test)."""
        if self.database == "sqlite":
            return "sqlite:" + os.path.abspath(self.mktemp() + ".sqlite")
        name = "ion_test_%s" % (uuid.uuid4().hex[:12],)
        yield threads.deferToThread(_admin, "CREATE DATABASE %s" % (name,))
        self.addCleanup(threads.deferToThread, _admin, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % (name,))
        return "%s/%s" % (PG_SERVER, name)

    @defer.inlineCallbacks
    def open_store(self, url=None):
        from ion.services.dm.inventory.event_store import EventStore

        store = EventStore(url or (yield self.store_url()))
        yield store.open()
        self.addCleanup(store.close)
        return store


def for_each_database(mixin, namespace, base=unittest.TestCase):
    """Create `<Mixin>SqliteTest` and `<Mixin>PostgresTest` in `namespace`; return them."""
    return for_each(mixin, namespace, "database", DATABASES, base)
