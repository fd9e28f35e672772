"""
The event monitor service (R1 §9.1): clients open sessions, subscribe to
events by id and origin, and poll for what arrived since a timestamp.

R1's defects are fixed (§10.4): an empty subscription id unsubscribes all,
terminated subscribers are awaited and forgotten by the process, each
subscription keeps at most `max_events` events (the oldest are dropped and
counted), and a session nobody asked about for `session_timeout` seconds
expires with its subscribers.  Both come from the spawn args, else ion.config.
"""

import collections
import time
import uuid

from twisted.internet import defer, task
from twisted.logger import Logger

from ion.core import ioninit, metrics
from ion.core.object import codec
from ion.core.object.object_utils import create_type_identifier
from ion.core.process.process import ProcessFactory
from ion.core.process.service_process import ServiceClient, ServiceProcess
from ion.services.dm.distribution.events import EventSubscriber
from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory

log = Logger()
CONF = ioninit.config(__name__)

SUBSCRIBE_MESSAGE_TYPE = create_type_identifier(object_id=2335, version=1)
SUBSCRIBE_RESPONSE_TYPE = create_type_identifier(object_id=2336, version=1)
UNSUBSCRIBE_MESSAGE_TYPE = create_type_identifier(object_id=2337, version=1)
GETDATA_MESSAGE_TYPE = create_type_identifier(object_id=2338, version=1)
DATA_MESSAGE_TYPE = create_type_identifier(object_id=2339, version=1)
SUBDATA_MESSAGE_TYPE = create_type_identifier(object_id=2340, version=1)


class Subscription:
    """One subscriber of a session and the events it stored: (datetime, packed event) pairs, bounded."""

    def __init__(self, subscription_id, max_events):
        self.subscription_id = subscription_id
        self.subscriber = None  # set once built; it may store events before that
        self.events = collections.deque(maxlen=max_events)
        self.dropped = 0

    @property
    def description(self):
        """R1's subscription_desc: the binding key."""
        return self.subscriber.consumer_config["routing_key"]

    def store(self, data):
        """Keep the event as bytes (no live objects), dropping the oldest when full."""
        event = data["content"].MessageObject
        if len(self.events) == self.events.maxlen:
            self.dropped += 1
            metrics.event_monitor_dropped.inc()
        self.events.append((event.datetime, codec.pack(event)))

    def since(self, timestamp):
        """The stored events with datetime >= timestamp, unpacked, oldest first."""
        return [codec.unpack(packed) for when, packed in self.events if when >= timestamp]


class Session:
    """A client's subscriptions; `last_request_time` is wall time (compared with event datetimes)."""

    def __init__(self, session_id, now):
        self.session_id = session_id
        self.subscriptions = {}
        self.last_request_time = time.time()
        self.last_seen = now


class EventMonitorService(ServiceProcess):
    """Subscribe, unsubscribe and getdata on behalf of sessions."""

    declare = ServiceProcess.service_declare(name="event_monitor", version="0.1.0", dependencies=["pubsub"])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_events = _positive(self, "max_events", 1000, int)
        self.session_timeout = _positive(self, "session_timeout", 3600.0, (int, float))
        self.sessions = {}
        self._factory = SubscriberFactory(process=self, subscriber_type=EventSubscriber)
        self._expiry = task.LoopingCall(self._expire_idle_sessions)
        self._expiry.clock = self.clock

    def slc_activate(self):
        # Checked twice per timeout: an idle session goes within 1.5 timeouts.
        self._expiry.start(self.session_timeout / 2.0, now=False)

    @defer.inlineCallbacks
    def slc_terminate(self):
        if self._expiry.running:
            self._expiry.stop()
        for session_id in list(self.sessions):
            yield self._end_session(session_id)

    def _session(self, session_id, create=False):
        session = self.sessions.get(session_id)
        if session is None and create:
            session = self.sessions[session_id] = Session(session_id, self.clock.seconds())
        if session is not None:
            session.last_seen = self.clock.seconds()
        return session

    @defer.inlineCallbacks
    def op_subscribe(self, content, headers, msg):
        """Start a subscriber for event_id/origin (unset: any) and answer its subscription id."""
        session = self._session(content.session_id, create=True)
        subscription_id = str(uuid.uuid4())[:6]
        while subscription_id in session.subscriptions:
            subscription_id = str(uuid.uuid4())[:6]
        subscription = Subscription(subscription_id, self.max_events)
        subscription.subscriber = yield self._factory.build(
            event_id=content.event_id or None, origin=content.origin or None, handler=subscription.store
        )
        session.subscriptions[subscription_id] = subscription
        session.last_request_time = time.time()
        reply = yield self.message_client.create_instance(SUBSCRIBE_RESPONSE_TYPE)
        reply.session_id = content.session_id
        reply.subscription_id = subscription_id
        yield self.reply_ok(msg, reply)

    @defer.inlineCallbacks
    def op_unsubscribe(self, content, headers, msg):
        """End one subscription, or (empty subscription_id) the whole session."""
        session = self._session(content.session_id)
        if session is not None:
            if not content.subscription_id:
                yield self._end_session(content.session_id)
            else:
                subscription = session.subscriptions.pop(content.subscription_id, None)
                if subscription is not None:
                    yield self._end_subscription(subscription)
        yield self.reply_ok(msg)

    @defer.inlineCallbacks
    def op_getdata(self, content, headers, msg):
        """The events each subscription (all, or those named) stored since the timestamp."""
        reply = yield self.message_client.create_instance(DATA_MESSAGE_TYPE)
        reply.session_id = content.session_id
        session = self._session(content.session_id)
        if session is not None:
            timestamp = content.timestamp
            if not timestamp:
                timestamp = session.last_request_time
                session.last_request_time = time.time()
            timestamp = _as_float(timestamp)
            wanted = set(content.subscriber_id)
            for subscription_id, subscription in session.subscriptions.items():
                if wanted and subscription_id not in wanted:
                    continue
                subdata = reply.data.add()
                subdata.subscription_id = subscription_id
                subdata.subscription_desc = subscription.description
                for event in subscription.since(timestamp):
                    subdata.events.append(event)
        yield self.reply_ok(msg, reply)

    @defer.inlineCallbacks
    def _end_session(self, session_id):
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        for subscription in session.subscriptions.values():
            yield self._end_subscription(subscription)

    @defer.inlineCallbacks
    def _end_subscription(self, subscription):
        """Terminate the subscriber, wait for it, and take it off the process's lifecycle objects."""
        try:
            yield subscription.subscriber.terminate_unless_over()
        except Exception:
            log.failure("Event monitor: subscriber {key} did not terminate", key=subscription.description)
        self.remove_life_cycle_object(subscription.subscriber)

    @defer.inlineCallbacks
    def _expire_idle_sessions(self):
        deadline = self.clock.seconds() - self.session_timeout
        for session_id, session in list(self.sessions.items()):
            if session.last_seen <= deadline:
                log.info("Event monitor: session {id} idle for {t} s, expired", id=session_id, t=self.session_timeout)
                yield self._end_session(session_id)


def _positive(process, name, default, types):
    value = process.spawn_args.get(name, CONF.getValue(name, default))
    if not isinstance(value, types) or isinstance(value, bool) or not value > 0:
        raise ValueError("EventMonitorService: %s must be a number > 0, not %r" % (name, value))
    return value


def _as_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class EventMonitorServiceClient(ServiceClient):
    """R1's client: each call is an RPC that fires with the reply content."""

    def __init__(self, proc=None, **kwargs):
        kwargs.setdefault("targetname", "event_monitor")
        super().__init__(proc=proc, **kwargs)

    @defer.inlineCallbacks
    def _call(self, operation, message):
        content, _headers, _msg = yield self.rpc_send(operation, message)
        return content

    def subscribe(self, msg):
        return self._call("subscribe", msg)

    def unsubscribe(self, msg):
        return self._call("unsubscribe", msg)

    def getdata(self, msg):
        return self._call("getdata", msg)


factory = ProcessFactory(EventMonitorService)
