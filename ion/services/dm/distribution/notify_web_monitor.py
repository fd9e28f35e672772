"""
R1's notification web monitor (§9.2), a `twisted.web` site in a process.

R1's endpoints are kept, so an R1 page or script still works: `/data/<ts>`
(getdata of the browser's session on the event monitor service),
`/ctl/sub/<event_id>[/<origin>]` and `/ctl/unsub[/<id>]`.  New: `/stream`,
Server-Sent Events of every event as it arrives, filtered by `event` (an
event id) and `origin` (a topic pattern: `*` one word, `#` any), resuming
after `Last-Event-ID` from a bounded buffer; `/types`, the known event ids.

The page (res/web/) is self-contained and puts every value from an event
into the document as text; the Content-Security-Policy allows no inline
script, so even markup that got through would not run.  The port (9999,
bound to 127.0.0.1, unless the spawn args say otherwise) is closed with the
process, as are the open streams.
"""

import collections
import json
import time
import uuid

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web import resource, server

from ion.core import ioninit
from ion.core.messaging.broker.topic import matches
from ion.core.process.process import Process, ProcessFactory
from ion.core.resources import resource_path
from ion.services.dm.distribution import events
from ion.services.dm.distribution.eventmonitor import (
    GETDATA_MESSAGE_TYPE,
    SUBSCRIBE_MESSAGE_TYPE,
    UNSUBSCRIBE_MESSAGE_TYPE,
    EventMonitorServiceClient,
)
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory

log = Logger()
CONF = ioninit.config(__name__)

PAGE = "res/web/notify_web_monitor.html"
SCRIPT = "res/web/notify_web_monitor.js"
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
KEEPALIVE_SECONDS = 15

# Event ids and the names the page shows (R1's select had the first ones).
EVENT_TYPES = {
    events.RESOURCE_LIFECYCLE_EVENT_ID: "Resource Lifecycle",
    events.CONTAINER_LIFECYCLE_EVENT_ID: "Container Lifecycle",
    events.PROCESS_LIFECYCLE_EVENT_ID: "Process Lifecycle",
    events.APP_LOADER_EVENT_ID: "App Loader",
    events.CONTAINER_STARTUP_EVENT_ID: "Container Startup",
    events.DATASOURCE_UPDATE_EVENT_ID: "Datasource Update",
    events.DATASOURCE_UNAVAILABLE_EVENT_ID: "Datasource Unavailable",
    events.DATASET_SUPPLEMENT_ADDED_EVENT_ID: "Dataset Modification",
    events.BUSINESS_STATE_MODIFICATION_EVENT_ID: "Business State Modification",
    events.DATASET_CHANGE_EVENT_ID: "Dataset Change",
    events.DATASOURCE_CHANGE_EVENT_ID: "Datasource Change",
    events.INGESTION_PROCESSING_EVENT_ID: "Ingestion Processing",
    events.NEW_SUBSCRIPTION_EVENT_ID: "Subscription New/Mod",
    events.DEL_SUBSCRIPTION_EVENT_ID: "Subscription Deleted",
    events.SCHEDULE_EVENT_ID: "Schedule Event",
    events.LOGGING_CRITICAL_EVENT_ID: "Critical Log",
    events.LOGGING_ERROR_EVENT_ID: "Error Log",
    events.LOGGING_INFO_EVENT_ID: "Info Log",
    events.DATABLOCK_EVENT_ID: "Data Block",
}


def field_text(obj, name):
    """A field's value as text: enum numbers by name, repeated fields joined, links by the linked type."""
    value = getattr(obj, name)
    prop = obj._Properties.get(name)
    if prop is not None and prop.field_enum is not None:
        return prop.field_enum.lookup.get(value, str(value))
    if hasattr(value, "ObjectClass"):
        return "<%s>" % (value.ObjectClass.DESCRIPTOR.name,)
    if isinstance(value, (str, int, float)):
        return str(value)
    try:
        return ", ".join(str(v) for v in value)
    except TypeError:
        return str(value)


def event_fields(event):
    """[(name, text)] for the set fields of the EventMessage (but additional_data), then of its payload."""
    shown = [(name, field_text(event, name)) for name in event.ListSetFields() if name != "additional_data"]
    payload = event.additional_data
    if payload is not None:
        shown += [(name, field_text(payload, name)) for name in payload.ListSetFields()]
    return shown


def describe_event(seq, data):
    """What the stream sends for one event: its route, type and every field as text."""
    event = data["content"].MessageObject
    routing_key = str(data.get("receiver", ""))
    event_id, _, origin = routing_key.partition(".")
    try:
        event_id = int(event_id)
    except ValueError:
        event_id = None
    payload = event.additional_data
    return {
        "seq": seq,
        "event_id": event_id,
        "event_name": EVENT_TYPES.get(event_id, "Event %s" % (event_id,)),
        "origin": origin,
        "routing_key": routing_key,
        "sender": str(data.get("sender", "")),
        "type": payload.ObjectClass.DESCRIPTOR.name if payload is not None else "EventMessage",
        "received": time.time(),
        "fields": event_fields(event),
    }


class EventBuffer:
    """The last `size` events with sequence numbers, and the streams waiting for new ones."""

    def __init__(self, size):
        self.run = uuid.uuid4().hex[:8]  # ids of another run are unknown: a resume from them replays all
        self.events = collections.deque(maxlen=size)
        self.streams = set()
        self._seq = 0

    def add(self, data):
        self._seq += 1
        described = describe_event(self._seq, data)
        self.events.append(described)
        for stream in list(self.streams):
            stream.offer(described)

    def after(self, last_event_id):
        """Buffered events after the id `<run>-<seq>` (all of them for an unknown or other-run id)."""
        run, _, seq = (last_event_id or "").partition("-")
        after = int(seq) if run == self.run and seq.isdigit() else 0
        return [e for e in self.events if e["seq"] > after]

    def event_id(self, described):
        return "%s-%d" % (self.run, described["seq"])


class Stream:
    """One open /stream request: sends the events its filter takes."""

    def __init__(self, request, buffer, event_filter, origin_pattern):
        self.request = request
        self.buffer = buffer
        self.event_filter = event_filter
        self.origin_pattern = origin_pattern

    def wants(self, described):
        if self.event_filter is not None and described["event_id"] != self.event_filter:
            return False
        return matches(self.origin_pattern, described["origin"])

    def offer(self, described):
        if self.wants(described):
            body = json.dumps(described)
            self.request.write(("id: %s\ndata: %s\n\n" % (self.buffer.event_id(described), body)).encode())

    def keepalive(self):
        self.request.write(b": keepalive\n\n")


def _json(request, body, code=200):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode()


class MonitorRoot(resource.Resource):
    """Dispatches by the first path segment; anything unknown serves the page (as in R1)."""

    def __init__(self, monitor):
        super().__init__()
        self.monitor = monitor

    def getChild(self, path, request):
        return self

    def render_GET(self, request):
        parts = [p.decode("utf-8", "replace") for p in request.prepath + request.postpath if p]
        head = parts[0] if parts else ""
        if head == "data":
            return self._deferred(request, self.monitor.data(request, parts[1] if len(parts) > 1 else "0"))
        if head == "ctl":
            return self._deferred(request, self.monitor.control(request, parts[1:]))
        if head == "stream":
            return self.monitor.stream(request)
        if head == "types":
            return _json(request, [{"id": k, "name": v} for k, v in sorted(EVENT_TYPES.items())])
        if parts == ["notify_web_monitor.js"]:
            return self._file(request, SCRIPT, b"text/javascript; charset=utf-8")
        return self._file(request, PAGE, b"text/html; charset=utf-8")

    def _file(self, request, name, content_type):
        with open(resource_path(name), "rb") as f:  # re-read each time, as R1 did: edits show on reload
            body = f.read()
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-security-policy", PAGE_POLICY.encode())
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        return body

    def _deferred(self, request, d):
        gone = []
        request.notifyFinish().addBoth(gone.append)

        def answer(result):
            body, code = result
            if not gone:
                request.write(_json(request, body, code))
                request.finish()

        def failed(failure):
            log.failure("Web monitor: {uri} failed", failure, uri=request.uri)
            answer(({"status": "bad", "reason": failure.getErrorMessage()}, 502))

        d.addCallback(answer).addErrback(failed)
        return server.NOT_DONE_YET


class NotificationWebMonitorService(Process):
    """The web monitor process: the site, a client of the event monitor, and one subscriber for the stream."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.port = self.spawn_args.get("port", CONF.getValue("port", 9999))
        self.interface = self.spawn_args.get("interface", CONF.getValue("interface", "127.0.0.1"))
        size = self.spawn_args.get("buffer", CONF.getValue("buffer", 1000))
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port < 65536:
            raise ValueError("NotificationWebMonitorService: port must be 0..65535, not %r" % (self.port,))
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError("NotificationWebMonitorService: buffer must be an int >= 1, not %r" % (size,))
        self.buffer = EventBuffer(size)
        self.listening = None
        self._sessions = set()
        self._keepalive = task.LoopingCall(self._keep_streams_alive)
        self._keepalive.clock = self.clock

    @defer.inlineCallbacks
    def plc_init(self):
        from twisted.internet import reactor

        self.ems_client = EventMonitorServiceClient(proc=self)
        self.site = server.Site(MonitorRoot(self))
        self.site.noisy = False
        self.site.displayTracebacks = False
        self.listening = reactor.listenTCP(self.port, self.site, interface=self.interface)
        host = self.listening.getHost()
        log.info("Listening on http://{host}:{port}", host=host.host, port=host.port)
        yield SubscriberFactory(process=self, subscriber_type=events.EventSubscriber).build(handler=self.buffer.add)

    def plc_activate(self):
        self._keepalive.start(KEEPALIVE_SECONDS, now=False)

    @defer.inlineCallbacks
    def plc_terminate(self):
        if self._keepalive.running:
            self._keepalive.stop()
        for stream in list(self.buffer.streams):
            stream.request.finish()
        self.buffer.streams.clear()
        if self.listening is not None:
            yield self.listening.stopListening()
            self._sessions.clear()
            for session in list(self.site.sessions.values()):
                session.expire()  # their subscriptions expire on the event monitor as idle sessions

    @property
    def url(self):
        host = self.listening.getHost()
        return "http://%s:%d" % (host.host, host.port)

    def _keep_streams_alive(self):
        for stream in list(self.buffer.streams):
            stream.keepalive()

    def session_id(self, request):
        """The browser's session (a cookie) names its event monitor session; when it expires, so do they."""
        session = request.getSession()
        session_id = session.uid.decode()
        if session_id not in self._sessions:
            self._sessions.add(session_id)
            session.notifyOnExpire(lambda: self._session_expired(session_id))
        return session_id

    def _session_expired(self, session_id):
        if session_id not in self._sessions:
            return  # the process is terminating
        self._sessions.discard(session_id)
        d = self.message_client.create_instance(UNSUBSCRIBE_MESSAGE_TYPE)

        def unsubscribe_all(msg):
            msg.session_id = session_id
            return self.ems_client.unsubscribe(msg)

        d.addCallback(unsubscribe_all)
        d.addErrback(lambda f: log.warn("Web monitor: could not end session {id}: {e}", id=session_id, e=f.value))

    @defer.inlineCallbacks
    def data(self, request, timestamp):
        """R1's /data/<timestamp>: getdata for the session, as JSON lists of {class, content, id}."""
        msg = yield self.message_client.create_instance(GETDATA_MESSAGE_TYPE)
        msg.session_id = self.session_id(request)
        try:
            msg.timestamp = str(float(timestamp))
        except ValueError:
            msg.timestamp = "0.0"
        reply = yield self.ems_client.getdata(msg)
        data = []
        for sub in reply.data:
            shown = [[{"class": "", "content": text, "id": name} for name, text in event_fields(e)] for e in sub.events]
            data.append({"subscription_id": sub.subscription_id, "subscription_desc": sub.subscription_desc,
                         "events": shown})
        return {"data": data, "lasttime": time.time()}, 200

    @defer.inlineCallbacks
    def control(self, request, parts):
        """R1's /ctl/sub/<event_id>[/<origin>] and /ctl/unsub[/<subscription_id>]."""
        if parts[:1] == ["sub"] and len(parts) in (2, 3):
            try:
                event_id = int(parts[1])
            except ValueError:
                return {"status": "bad", "reason": "event id %r is not a number" % (parts[1],)}, 400
            msg = yield self.message_client.create_instance(SUBSCRIBE_MESSAGE_TYPE)
            msg.session_id = self.session_id(request)
            msg.event_id = event_id
            if len(parts) == 3 and parts[2] not in ("", "*"):
                msg.origin = parts[2]
            reply = yield self.ems_client.subscribe(msg)
            return {"status": "ok", "subscription_id": reply.subscription_id}, 200
        if parts[:1] == ["unsub"] and len(parts) in (1, 2):
            msg = yield self.message_client.create_instance(UNSUBSCRIBE_MESSAGE_TYPE)
            msg.session_id = self.session_id(request)
            if len(parts) == 2:
                msg.subscription_id = parts[1]
            yield self.ems_client.unsubscribe(msg)
            return {"status": "ok"}, 200
        log.info("Web monitor: unknown control request {parts}", parts=parts)
        return {"status": "bad"}, 400

    def stream(self, request):
        """/stream?event=<id>&origin=<pattern>: the buffered events after Last-Event-ID, then each new one."""
        args = {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items()}
        event = args.get("event", "")
        try:
            event_filter = int(event) if event not in ("", "*") else None
        except ValueError:
            return _json(request, {"status": "bad", "reason": "event %r is not an event id" % (event,)}, 400)
        origin = args.get("origin", "") or "#"
        stream = Stream(request, self.buffer, event_filter, origin)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.write(b"retry: 2000\n\n")
        last = request.getHeader(b"last-event-id") or args.get("last_event_id")
        for described in self.buffer.after(last.decode() if isinstance(last, bytes) else last):
            stream.offer(described)
        self.buffer.streams.add(stream)
        request.notifyFinish().addBoth(lambda _: self.buffer.streams.discard(stream))
        return server.NOT_DONE_YET


factory = ProcessFactory(NotificationWebMonitorService)
