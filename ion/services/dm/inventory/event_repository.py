"""
The event repository service: history queries and replay over RPC, and its
Python client.

`find_events` answers with one page and a cursor (see event_store); bodies
travel base64-encoded, so no msgpack text conversion can touch them, and
the client hands back EventRecords whose `.event` is the decoded event
instance a subscriber would get.  Bad arguments are a 400 reply naming them.

Spawn arg `store`: the store URL (else the `event_store` container arg,
else ion.config).  A persister in the same system fills that store.
"""

import base64

from twisted.internet import defer

from ion.core.exception import ApplicationError
from ion.core.process.process import ProcessFactory
from ion.core.process.service_process import ServiceClient, ServiceProcess
from ion.services.dm.inventory import event_replay
from ion.services.dm.inventory.event_store import EventRecord, EventStore, StoreError

QUERY_ARGS = ("event_id", "origin", "start", "end", "limit", "descending", "after")


def _query(content, extra=()):
    if not isinstance(content, dict):
        raise ApplicationError("event_repository: the request must be a map of query arguments", 400)
    unknown = sorted(set(content) - set(QUERY_ARGS) - set(extra))
    if unknown:
        raise ApplicationError("event_repository: unknown arguments %s" % (", ".join(map(str, unknown)),), 400)
    return {k: v for k, v in content.items() if k in QUERY_ARGS}


def _wire(record):
    return dict(record, body=base64.b64encode(record["body"]).decode("ascii"))


def _from_wire(item):
    record = EventRecord(item)
    record["body"] = base64.b64decode(item["body"])
    return record


class EventRepositoryService(ServiceProcess):
    """Answers find_events and replay from the event store."""

    declare = ServiceProcess.service_declare(name="event_repository", version="0.1.0", dependencies=[])

    def __init__(self, *args, store=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.store = store if store is not None else EventStore(self.spawn_args.get("store"))

    def slc_init(self):
        return self.store.open()

    def slc_terminate(self):
        self.store.close()

    @defer.inlineCallbacks
    def op_find_events(self, content, headers, msg):
        try:
            records, cursor = yield self.store.find_events(**_query(content))
        except StoreError as e:
            raise ApplicationError(str(e), 400) from None
        yield self.reply_ok(msg, {"events": [_wire(r) for r in records], "cursor": cursor})

    @defer.inlineCallbacks
    def op_replay(self, content, headers, msg):
        extra = ("to_queue", "rate", "max_events", "dry_run")
        query = _query(content, extra)
        options = {k: content[k] for k in extra if k in content}
        try:
            count = yield event_replay.replay(
                self.store, self.container.exchange_manager, query, clock=self.clock, **options
            )
        except StoreError as e:
            raise ApplicationError(str(e), 400) from None
        yield self.reply_ok(msg, {"replayed": count})


class EventRepositoryClient(ServiceClient):
    """find_events and replay, over RPC to the event_repository service."""

    def __init__(self, proc=None, **kwargs):
        kwargs.setdefault("targetname", "event_repository")
        super().__init__(proc=proc, **kwargs)

    @defer.inlineCallbacks
    def find_events(self, event_id=None, origin=None, start=None, end=None, limit=100, descending=True, after=None):
        """Fires with (records, cursor): a page of events (newest first by default); cursor None at the end."""
        query = {"event_id": event_id, "origin": origin, "start": start, "end": end, "limit": limit,
                 "descending": descending, "after": after}
        content, _headers, _msg = yield self.rpc_send("find_events", {k: v for k, v in query.items() if v is not None})
        return [_from_wire(item) for item in content["events"]], content["cursor"]

    @defer.inlineCallbacks
    def replay(self, to_queue=None, rate=100.0, max_events=10000, dry_run=False, timeout=None, **query):
        """Republish the events matching `query` (find_events arguments); fires with how many."""
        request = dict({k: v for k, v in query.items() if v is not None}, rate=rate, max_events=max_events,
                       dry_run=dry_run)
        if to_queue is not None:
            request["to_queue"] = to_queue
        if timeout is None:
            timeout = 15 + max_events / float(rate)
        content, _headers, _msg = yield self.rpc_send("replay", request, timeout=timeout)
        return content["replayed"]


factory = ProcessFactory(EventRepositoryService)
