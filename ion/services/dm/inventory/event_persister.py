"""
The event persister: every event of its system, from a durable named queue
into the event store, in batches.

Events are taken as they come and written `batch_size` at a time, or
whatever has arrived once the first of a batch has waited `batch_interval`
seconds (on the process's clock).  One batch is one transaction; an event
whose content key is stored already (a redelivery, a publisher re-sending
after a reconnect) is skipped.  Its messages are acked only once the
transaction has committed, so a persister that dies loses nothing: the
broker hands the unacked events to the next one, and the content key makes
the second copy a no-op.

A store that is down or refuses a batch: the batch's events are held for a
backoff delay (doubling from `backoff` up to `max_backoff` seconds), then
requeued, so they stay in the queue (another persister sharing it may take
them) and nothing is acked that is not stored.  The failure is logged once
per outage, and its end once with how many attempts failed.

Spawn args (all optional): `store` (the store URL; else the `event_store`
container arg, else ion.config), `queue` (`event_persister`, scoped by the
sysname), `event_id` and `origin` (the binding; every event by default),
`batch_size` (500), `batch_interval` (0.2 s), `backoff` (0.5 s),
`max_backoff` (30 s), and retention: `retention_age` (seconds; events whose
time is older are deleted; None keeps everything), `retention_interval`
(60 s) and `retention_batch` (10,000 rows per run at most).
"""

from twisted.internet import defer, task
from twisted.logger import Logger

from ion.core.exception import ConfigurationError
from ion.core.object.codec import ION_R1_GPB, CodecError
from ion.core.process.process import Process, ProcessFactory
from ion.services.dm.distribution import dead_letters
from ion.services.dm.distribution.events import EventSubscriber
from ion.services.dm.inventory.event_rows import parse_raw_event, raw_event_row
from ion.services.dm.inventory.event_store import EventStore

log = Logger()

DEFAULTS = {
    "queue": "event_persister",
    "event_id": None,
    "origin": None,
    "batch_size": 500,
    "batch_interval": 0.2,
    "backoff": 0.5,
    "max_backoff": 30.0,
    "retention_age": None,
    "retention_interval": 60.0,
    "retention_batch": 10000,
}


class _PersistingSubscriber(EventSubscriber):
    """
    Hands each event with its delivery to the persister, which settles it
    after the commit.  Its receiver is raw: the msgpack header is decoded,
    the GPB content stays the Structure bytes, which event_rows parses only
    as far as the row needs (no repository, wrappers or message instance).
    """

    def __init__(self, take, **kwargs):
        super().__init__(**kwargs)
        self._take = take
        self._recv.raw = True

    def check_content(self, data):
        """
        Parses the content once, here, into the RawEvent the row is made
        of: what is not an event goes the receiver's undecodable way (a
        rate-limited warning, rejected or dead-lettered), as for any subscriber.
        """
        if data.get("encoding") != ION_R1_GPB:
            raise CodecError("not an event: encoding %r is not %r" % (data.get("encoding"), ION_R1_GPB))
        data["content"] = parse_raw_event(data["content"])

    def _receive_handler(self, data, msg):
        return self._take(data, msg)


def _number(settings, name, minimum, integer=False, optional=False):
    value = settings[name]
    if value is None and optional:
        return None
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or value < minimum:
        raise ConfigurationError(
            "EventPersister: %s must be %s >= %s%s, not %r"
            % (name, "an int" if integer else "a number", minimum, " or None" if optional else "", value)
        )
    return value


class EventPersister(Process):
    """Stores every event of the system (or of its binding) in the event store; see the module docstring."""

    def __init__(self, *args, store=None, **kwargs):
        super().__init__(*args, **kwargs)
        settings = dict(DEFAULTS)
        settings.update({k: v for k, v in self.spawn_args.items() if k in DEFAULTS})
        self.batch_size = _number(settings, "batch_size", 1, integer=True)
        self.batch_interval = _number(settings, "batch_interval", 0)
        self.backoff = _number(settings, "backoff", 0)
        self.max_backoff = _number(settings, "max_backoff", self.backoff)
        self.retention_age = _number(settings, "retention_age", 0, optional=True)
        self.retention_interval = _number(settings, "retention_interval", 0.001)
        self.retention_batch = _number(settings, "retention_batch", 1, integer=True)
        self.store = store if store is not None else EventStore(self.spawn_args.get("store"))
        self._settings = settings
        self._subscriber = None
        self._pending = []  # (row, msg, Deferred fired once msg is settled)
        self._timer = None
        self._writing = False
        self._written = None  # fires when the batch being written is settled
        self._stopping = False
        self._delay = self.backoff
        self._failed_attempts = 0  # in the current outage; 0 when the store is fine
        self._retention = None
        self._retention_run = None
        self.stats = {"stored": 0, "duplicates": 0, "requeued": 0, "failed_batches": 0, "retention_deleted": 0}

    @defer.inlineCallbacks
    def plc_init(self):
        yield self.store.open()
        self._subscriber = _PersistingSubscriber(
            self._take,
            process=self,
            event_id=self._settings["event_id"],
            origin=self._settings["origin"],
            queue_name=self._settings["queue"],
            durable=True,
            auto_delete=False,
            prefetch_count=2 * self.batch_size,
            # Each event's handler call ends with its batch's commit: every event held must be handed over.
            concurrency=2 * self.batch_size,
        )
        yield self._subscriber.initialize()

    @defer.inlineCallbacks
    def plc_activate(self):
        yield self._subscriber.activate()
        if self.retention_age is not None:
            self._retention = task.LoopingCall(self.run_retention)
            self._retention.clock = self.clock
            self._retention.start(self.retention_interval, now=False)

    @defer.inlineCallbacks
    def plc_terminate(self):
        """Write what is held (or requeue it if the store fails), then stop consuming and close the store."""
        self._stopping = True
        if self._retention is not None and self._retention.running:
            self._retention.stop()
        if self._retention_run is not None:
            yield self._retention_run
        # The receiver stops taking deliveries at once and waits for the held ones, which the flushes settle.
        stopped = None
        if self._subscriber is not None:
            stopped = defer.maybeDeferred(self._subscriber.terminate_unless_over)
        while self._writing or self._pending:
            yield self._flush()
        if stopped is not None:
            yield stopped
        self.store.close()

    @property
    def queue(self):
        """The durable queue's name on the broker."""
        return self._subscriber.queue if self._subscriber is not None else None

    # --- batching ---------------------------------------------------------
    def _take(self, data, msg):
        _exchange, routing_key = dead_letters.first_route(msg.delivery)
        try:
            row = raw_event_row(data["content"], msg.body, routing_key, self.clock.seconds())
        except (CodecError, AttributeError, TypeError, ValueError) as e:
            log.warn("EventPersister: rejected an event it cannot store ({e})", e=e)
            msg.reject()
            return None
        settled = defer.Deferred()
        self._pending.append((row, msg, settled))
        if len(self._pending) >= self.batch_size:
            self._flush()
        elif self._timer is None and not self._writing:
            self._timer = self.clock.callLater(self.batch_interval, self._flush)
        return settled

    def _flush(self):
        """Write the next batch unless one is being written; fires when that write (and its settling) is done."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._writing:
            return self._written
        if not self._pending:
            return defer.succeed(None)
        batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
        self._writing = True
        self._written = defer.Deferred()
        done = self._written
        self._write(batch).addBoth(done.callback)
        return done

    @defer.inlineCallbacks
    def _write(self, batch):
        try:
            try:
                added = yield self.store.insert([row for row, _msg, _d in batch])
            except Exception as e:
                yield self._refused(batch, e)
            else:
                self._stored(batch, added)
        finally:
            self._writing = False
        if self._pending:
            if len(self._pending) >= self.batch_size or self._stopping:
                self._flush()
            elif self._timer is None:
                self._timer = self.clock.callLater(self.batch_interval, self._flush)

    def _stored(self, batch, added):
        if self._failed_attempts:
            log.info(
                "EventPersister: the event store takes events again after {n} failed attempts",
                n=self._failed_attempts,
            )
        self._failed_attempts = 0
        self._delay = self.backoff
        self.stats["stored"] += added
        self.stats["duplicates"] += len(batch) - added
        for _row, msg, settled in batch:
            msg.ack()
            settled.callback(None)

    @defer.inlineCallbacks
    def _refused(self, batch, error):
        self.stats["failed_batches"] += 1
        if not self._failed_attempts:
            log.error(
                "EventPersister: the event store {url} refused a batch of {n} events ({e}); they stay in the queue "
                "and are retried with a backoff; the store's recovery will be logged",
                url=self.store.url,
                n=len(batch),
                e="%s: %s" % (type(error).__name__, error),
            )
        self._failed_attempts += 1
        if not self._stopping:
            yield task.deferLater(self.clock, self._delay, lambda: None)
            self._delay = min(self._delay * 2 or self.backoff, self.max_backoff)
        for _row, msg, settled in batch:
            msg.requeue()
            settled.callback(None)
        self.stats["requeued"] += len(batch)

    # --- retention --------------------------------------------------------
    @defer.inlineCallbacks
    def run_retention(self):
        """Delete at most `retention_batch` events older than `retention_age`; fires with how many went."""
        if self._retention_run is not None:
            return 0
        self._retention_run = self.store.delete_older_than(
            self.clock.seconds() - self.retention_age, self.retention_batch
        )
        try:
            deleted = yield self._retention_run
        except Exception as e:
            log.warn("EventPersister: retention run failed ({e}); the next run tries again", e=e)
            return 0
        finally:
            self._retention_run = None
        self.stats["retention_deleted"] += deleted
        return deleted


factory = ProcessFactory(EventPersister)
