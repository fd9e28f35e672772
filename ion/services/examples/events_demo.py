"""
Events demo: one process publishes sample events every second, another
subscribes to every event of the system and logs each in one line.

    twistd -n cc --no_shell res/deploy/events-demo.rel                 (embedded broker)
    twistd -n cc --no_shell -h 127.0.0.1 res/deploy/events-demo.rel    (RabbitMQ)

The logger also shows the events the container itself publishes: process
lifecycle (1052), app loader (1075) and container startup (1076).
"""

import collections
import time

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ion.core.messaging.message_client import MessageInstance
from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.services.dm.distribution.publisher_subscriber import PublisherFactory, SubscriberFactory

log = Logger()

# 3003 -> "LOGGING_INFO", from the module's *_EVENT_ID constants.
EVENT_NAMES = {
    value: name.removesuffix("_EVENT_ID") for name, value in vars(events).items() if name.endswith("_EVENT_ID")
}
_State = events.ResourceLifecycleEventPublisher.State
STATES = (_State.NEW, _State.READY, _State.ACTIVE, _State.TERMINATED, _State.ERROR)


class EventsDemoPublisher(Process):
    """
    Every `interval` seconds (spawn arg, default 1): an info log event
    "tick N", a dataset change and a resource lifecycle event whose state
    cycles through NEW, READY, ACTIVE, TERMINATED and ERROR.
    """

    @defer.inlineCallbacks
    def plc_init(self):
        self.interval = float(self.spawn_args.get("interval", 1.0))
        self.ticks = 0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop_done = None
        build = PublisherFactory(process=self).build
        self.info = yield build(publisher_type=events.InfoLoggingEventPublisher, origin=self.proc_name)
        self.dataset = yield build(publisher_type=events.DatasetChangeEventPublisher, origin="demo-dataset")
        self.resource = yield build(publisher_type=events.ResourceLifecycleEventPublisher, origin="demo-resource")

    def plc_activate(self):
        self._loop_done = self._loop.start(self.interval, now=True)

    @defer.inlineCallbacks
    def plc_terminate(self):
        if self._loop.running:
            self._loop.stop()
        if self._loop_done is not None:
            yield self._loop_done  # fires once a tick in progress has finished

    @defer.inlineCallbacks
    def _tick(self):
        self.ticks += 1
        n = self.ticks
        try:
            yield self.info.create_and_publish_event(name="tick %d" % n, description="events demo heartbeat")
            yield self.dataset.create_and_publish_event(
                name="dataset changed", description="version %d" % n, dataset_id="demo-dataset"
            )
            yield self.resource.create_and_publish_event(name="resource state", state=STATES[(n - 1) % len(STATES)])
        except Exception:
            log.failure("Events demo: tick {n} not published", n=n)


class EventsDemoLogger(Process):
    """
    Logs every event (`*.#`).  `received` counts them, `by_event_id` counts
    them per event id, and `when_received(n)` waits for the n-th.
    """

    @defer.inlineCallbacks
    def plc_init(self):
        self.received = 0
        self.by_event_id = collections.Counter()
        self._waiters = []  # (count, Deferred)
        self.subscriber = yield SubscriberFactory(process=self).build(
            subscriber_type=events.EventSubscriber, handler=self.on_event
        )

    def on_event(self, data):
        self.received += 1
        self.by_event_id[str(data.get("receiver", "")).partition(".")[0]] += 1
        log.info("{line}", line=describe_event(data))
        waiting, self._waiters = self._waiters, []
        for count, d in waiting:
            if self.received >= count:
                d.callback(self.received)
            else:
                self._waiters.append((count, d))

    def when_received(self, count):
        """A Deferred firing (with the count) once `count` events have arrived in all."""
        if self.received >= count:
            return defer.succeed(self.received)
        d = defer.Deferred()
        self._waiters.append((count, d))
        return d


def describe_event(data):
    """One line: event id and name, origin, the EventMessage fields, the payload type and fields, the sender."""
    event_id, _, origin = str(data.get("receiver", "")).partition(".")
    name = EVENT_NAMES.get(int(event_id)) if event_id.isdigit() else None
    head = "%s %s from %s" % (event_id, name or "?", origin)
    sender = "(sender %s)" % (data.get("sender-name") or data.get("sender"),)
    content = data.get("content")
    if not isinstance(content, MessageInstance):
        return "%s: %r %s" % (head, content, sender)
    parts = [head + ":", _fields(content.MessageObject)]
    payload = getattr(content, "additional_data", None)
    if payload is not None:
        parts += ["|", type(payload).__name__, _fields(payload)]
    parts.append(sender)
    return " ".join(p for p in parts if p)


def _fields(obj):
    """`name=value` for each set field; enums by name, times readable, links left out."""
    shown = []
    for name in obj.ListSetFields() if obj is not None else ():
        field = obj._Properties[name]
        value = getattr(obj, name)
        if field.field_type == "TYPE_MESSAGE":
            continue
        if field.field_type == "TYPE_ENUM":
            text = field.field_enum.lookup.get(value, str(value))
        elif name == "datetime":
            text = time.strftime("%H:%M:%S", time.localtime(value)) + ("%.3f" % (value % 1))[1:]
        elif isinstance(value, (str, int, float)):
            text = repr(value)
        else:
            text = repr(list(value))  # a repeated field
        shown.append("%s=%s" % (name, text))
    return " ".join(shown)
