"""
ION events: typed messages published to `<sys_name>.events.topic` under the
routing key `<event_id>.<origin>` (R1 §1).

A publisher class fixes the event id and the payload type; a subscriber class
fixes the event id and binds `<event_id|*>.<origin|#>`.  Every event is an
IonMsg whose content is an EventMessage (2322) linking, through
`additional_data`, to the payload of the publisher's `msg_type`.

Fixed from R1 (§10.1): a kwarg named like a wrapper member is "unused", not a
KeyError; errors name the offending value; named subscriber queues get the
`<sys_name>.` prefix exactly once and work without a sysname.

A publishing origin is checked before anything is sent: no origin is R1's
AssertionError, one that is not a str a TypeError, one with `*` or `#` in it
a ValueError (to subscribers those are wildcards: such an origin would read
as a pattern, not a name), and so is one that makes the routing key longer
than AMQP's 255 bytes.  Subscriber origins may of course contain wildcards.  An
event nobody subscribes to is normal and not an error.

An event subscriber's handler gets only events (fixed from R1, which handed
it whatever arrived): a message whose `encoding` is not exactly 'ION R1 GPB',
or whose content is not an IonMsg holding an EventMessage, is undecodable
for it -- rejected, or dead-lettered by a subscriber that has dead letters,
counted in `stats['undecodable']` and logged rate-limited.
"""

import time

from twisted.internet import defer
from twisted.logger import Logger

from ion.core import ioninit, metrics
from ion.core.exception import IonError, UsageError
from ion.core.messaging.message_client import MessageClient, MessageInstance, new_message_instance
from ion.core.messaging.envelope import check_routing_key
from ion.core.object.codec import ION_R1_GPB, CodecError
from ion.core.object.gpb_wrapper import Wrapper
from ion.core.object.object_utils import create_type_identifier
from ion.services.dm.distribution import event_plan
from ion.services.dm.distribution.publisher_subscriber import Publisher, Subscriber

log = Logger()


class UnknownEventFields(IonError):
    """create_event got keyword arguments that neither the event message nor its payload has (R1: Exception)."""


def get_events_exchange_point():
    """`<sys_name>.events.topic`, read when a publisher or subscriber is made."""
    return "%s.events.topic" % (ioninit.sys_name,)


EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2322, version=1)
# How many origins' routing keys a publisher remembers (a publisher naming endless origins stays bounded).
MAX_REMEMBERED_TOPICS = 1000
RESOURCE_LIFECYCLE_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2323, version=1)
TRIGGER_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2324, version=1)
RESOURCE_MODIFICATION_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2325, version=1)
LOGGING_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2326, version=1)
NEW_SUBSCRIPTION_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2327, version=1)
DEL_SUBSCRIPTION_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2328, version=1)
DATA_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2329, version=1)
DATASOURCE_UNAVAILABLE_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2330, version=1)
DATASET_SUPPLEMENT_ADDED_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2331, version=1)
APP_LOADER_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2332, version=1)
CONTAINER_STARTUP_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2333, version=1)
DATASET_CHANGE_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2341, version=1)
DATASOURCE_CHANGE_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2342, version=1)
INGESTION_PROCESSING_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=2343, version=1)
INSTRUMENT_SAMPLE_DATA_EVENT_MESSAGE_TYPE = create_type_identifier(object_id=4303, version=1)

# Event ids ("CIAD DM SV Notifications and Events").
RESOURCE_LIFECYCLE_EVENT_ID = 1001
CONTAINER_LIFECYCLE_EVENT_ID = 1051
PROCESS_LIFECYCLE_EVENT_ID = 1052
APP_LOADER_EVENT_ID = 1075
CONTAINER_STARTUP_EVENT_ID = 1076
DATASOURCE_UPDATE_EVENT_ID = 1101
DATASOURCE_UNAVAILABLE_EVENT_ID = 1102
DATASET_SUPPLEMENT_ADDED_EVENT_ID = 1111
BUSINESS_STATE_MODIFICATION_EVENT_ID = 1112
DATASET_CHANGE_EVENT_ID = 1113
DATASOURCE_CHANGE_EVENT_ID = 1114
INGESTION_PROCESSING_EVENT_ID = 1115
DATASET_STREAMING_EVENT_ID = 1116
NEW_SUBSCRIPTION_EVENT_ID = 1201
DEL_SUBSCRIPTION_EVENT_ID = 1202
SCHEDULE_EVENT_ID = 2001
LOGGING_CRITICAL_EVENT_ID = 3001
LOGGING_ERROR_EVENT_ID = 3002
LOGGING_INFO_EVENT_ID = 3003
DATABLOCK_EVENT_ID = 4001


class EventPublisher(Publisher):
    """Creates and publishes events of one kind; subclasses set `event_id` and `msg_type`."""

    msg_type = None
    event_id = None
    _plan = (None, None)  # (msg_type, its EventPlan) once an event was made, see _new_packed_event

    class Status:
        """Names of EventMessage.Status, usable as `status=` values."""

        IN_PROGRESS = "IN_PROGRESS"
        CACHED = "CACHED"
        ERROR = "ERROR"
        NO_CACHE = "NO_CACHE"

    def __init__(self, xp_name=None, routing_key=None, process=None, origin="unknown", *args, **kwargs):
        if origin is not None:
            self._check_origin(origin)
        self._origin = origin
        self._mc = MessageClient(proc=process)
        self._topics = {}  # origin -> routing key, see _topic_of
        super().__init__(
            xp_name=xp_name or get_events_exchange_point(),
            routing_key=routing_key or "unknown",
            process=process,
            *args,
            **kwargs
        )

    def topic(self, origin):
        """The routing key `<event_id>.<origin>`; raises if the origin cannot be published under."""
        if not self.event_id:
            raise UsageError("%s has no event_id: it cannot publish" % (type(self).__name__,))
        if origin is None or origin == "":
            raise UsageError("%s: no origin for the topic" % (type(self).__name__,))
        self._check_origin(origin)
        return check_routing_key("%s.%s" % (self.event_id, origin))

    def _check_origin(self, origin):
        if not isinstance(origin, str):
            raise TypeError(
                "%s: origin must be a str, not %s (%r)" % (type(self).__name__, type(origin).__name__, origin)
            )
        if "*" in origin or "#" in origin:
            raise ValueError(
                "%s: origin %r contains a wildcard (* or #); only subscribers may use them"
                % (type(self).__name__, origin)
            )

    @staticmethod
    def _set_msg_fields(msg, msgargs):
        """Set the fields of `msg` named in `msgargs`, removing them from it; enum names become numbers."""
        properties = msg._Properties
        for key, value in list(msgargs.items()):
            field = properties.get(key)
            if field is None:
                continue
            if field.field_type == "TYPE_ENUM" and isinstance(value, str):
                if not hasattr(field.field_enum, value):
                    raise UsageError(
                        "%s=%r is not a name of %s (known: %s)"
                        % (key, value, key, ", ".join(sorted(field.field_enum.lookup.values())))
                    )
                value = getattr(field.field_enum, value)
            try:
                if isinstance(value, (list, tuple)):
                    getattr(msg, key).extend(value)  # repeated fields are filled, not assigned
                else:
                    setattr(msg, key, value)
            except (TypeError, ValueError) as e:
                raise TypeError(_field_type_error(msg, key, field, value, e)) from e
            del msgargs[key]

    def create_event(self, **kwargs):
        """
        A new event instance: fields of the EventMessage first, the rest on a
        payload of `msg_type` linked as `additional_data`.  `datetime`
        defaults to now; a kwarg neither message has is an error.
        """
        return defer.maybeDeferred(self._new_event, kwargs)

    def _new_event(self, kwargs):
        """create_event's work, synchronous: the publish path calls it without a Deferred between."""
        return self._new_packed_event(kwargs)[0]

    def _new_packed_event(self, kwargs):
        """(event, its packed content) by the event's plan; (event, None) when only _build_event can make it."""
        if not self.msg_type:
            raise UsageError("%s has no msg_type: it cannot create events" % (type(self).__name__,))
        remaining = dict(kwargs)
        remaining.setdefault("datetime", time.time())
        msg_type, plan = self._plan
        if msg_type is not self.msg_type:  # the first event, or msg_type was changed since
            msg_type, plan = self._plan = (self.msg_type, _plan_of(self.msg_type))
        built = plan.build(remaining) if plan is not None else None
        if built is not None:
            return built
        return self._build_event(remaining), None

    def _build_event(self, remaining):
        """The event through the general object machinery (the reference the plans are tested against)."""
        event_msg = new_message_instance(EVENT_MESSAGE_TYPE)
        self._set_msg_fields(event_msg, remaining)
        payload = event_msg.CreateObject(self.msg_type)
        self._set_msg_fields(payload, remaining)
        if remaining:
            raise UnknownEventFields(
                "create_event: unused kwargs remaining (%s), unused by base event message and msg type id %s"
                % (remaining, self.msg_type.object_id)
            )
        event_msg.additional_data = payload
        return event_msg

    def publish_event(self, event_msg, origin=None, **kwargs):
        """
        Publish a created event under `<event_id>.<origin>` (the constructor's
        origin by default).  A bad origin fails the Deferred before anything is sent.
        """
        try:
            routing_key = self._origin_topic(origin, event_msg)
        except (AssertionError, TypeError, ValueError):
            return defer.fail()
        return metrics.observe_publish(self.publish(event_msg, routing_key=routing_key), self.event_id)

    def _origin_topic(self, origin, event_msg):
        """The routing key of `origin`, or of the constructor's; R1's AssertionError if neither names one."""
        if origin is None or origin == "":
            origin = self._origin
            if origin is None or origin in ("", "unknown"):
                raise AssertionError("Error - No origin publishing event message: %s" % (event_msg,))
        return self._topic_of(origin)

    def create_and_publish_event(self, **kwargs):
        """create_event then publish_event; an `origin` kwarg is both a field and the routing origin."""
        origin = kwargs.get("origin")
        try:
            # A bad origin fails here, before the event is made; the key is worked out once per origin.
            routing_key = self._topic_of(origin) if origin not in (None, "") else None
            event_msg, packed = self._new_packed_event(kwargs)
            if routing_key is None:
                routing_key = self._origin_topic(None, event_msg)
        except Exception:
            return defer.fail()
        if packed is None or not self._stock_publish():
            return metrics.observe_publish(self.publish(event_msg, routing_key=routing_key), self.event_id, event_msg)
        # Publisher's own publish is skipped for the packed bytes, and its header map with it.
        try:
            sent = self._send_packed(packed, routing_key)
        except Exception:  # no container, or one not connected yet: counted as a failed publish
            sent = defer.fail()
        # The metrics' callback is the only one this layer adds: it makes the Deferred fire with the event.
        return metrics.observe_publish(sent, self.event_id, event_msg)

    def _stock_publish(self):
        """True unless a subclass or the instance replaced publish (which then gets the event, as in R1)."""
        return type(self).publish is Publisher.publish and "publish" not in self.__dict__

    def _topic_of(self, origin):
        """topic(origin), remembered for each origin (a str) that passed its checks."""
        key = self._topics.get(origin) if isinstance(origin, str) else None
        if key is None:
            key = self.topic(origin)
            if len(self._topics) < MAX_REMEMBERED_TOPICS:
                self._topics[origin] = key
        return key


def _plan_of(msg_type):
    """The EventPlan of a payload type, None if it has none (the general path then says what is wrong)."""
    try:
        return event_plan.plan_for(EVENT_MESSAGE_TYPE, msg_type)
    except Exception:
        return None


# What a Python caller passes for each protobuf scalar type.
_PYTHON_TYPES = {
    "TYPE_STRING": "str",
    "TYPE_BYTES": "bytes",
    "TYPE_BOOL": "bool",
    "TYPE_DOUBLE": "float",
    "TYPE_FLOAT": "float",
}


def _field_type_error(msg, key, field, value, error):
    """`name=12345` -> "EventMessage field 'name' takes str (protobuf TYPE_STRING), not int 12345"."""
    if field.field_type == "TYPE_ENUM":
        expected = "a name of %s or its number" % (key,)
    else:
        expected = _PYTHON_TYPES.get(field.field_type, "int" if "INT" in field.field_type else field.field_type)
    if isinstance(value, (list, tuple)):
        expected = "a list of " + expected
    text = "%s field %r takes %s (protobuf %s), not %s %r" % (
        type(msg).__name__.removesuffix("Instance"),
        key,
        expected,
        field.field_type,
        type(value).__name__,
        value,
    )
    # protobuf's TypeError says nothing the line above does not; a ValueError (out of range) does.
    return text + (": %s" % (error,) if isinstance(error, ValueError) else "")


class ResourceLifecycleEventPublisher(EventPublisher):
    """Resource lifecycle changes; origin: the resource id."""

    event_id = RESOURCE_LIFECYCLE_EVENT_ID
    msg_type = RESOURCE_LIFECYCLE_EVENT_MESSAGE_TYPE

    class State:
        NEW = "NEW"
        READY = "READY"
        ACTIVE = "ACTIVE"
        TERMINATED = "TERMINATED"
        ERROR = "ERROR"


class ContainerLifecycleEventPublisher(ResourceLifecycleEventPublisher):
    """Container lifecycle changes; origin: the container name."""

    event_id = CONTAINER_LIFECYCLE_EVENT_ID


class ProcessLifecycleEventPublisher(ResourceLifecycleEventPublisher):
    """Process lifecycle changes; origin: the process id."""

    event_id = PROCESS_LIFECYCLE_EVENT_ID


class InfrastructureEventPublisher(EventPublisher):
    """Abstract base of container infrastructure events."""


class AppLoaderEventPublisher(InfrastructureEventPublisher):
    """An application started or stopped; origin: the application name."""

    event_id = APP_LOADER_EVENT_ID
    msg_type = APP_LOADER_EVENT_MESSAGE_TYPE

    class State:
        STARTED = "STARTED"
        STOPPED = "STOPPED"


class ContainerStartupEventPublisher(InfrastructureEventPublisher):
    """A container finished starting; origin: the container id."""

    event_id = CONTAINER_STARTUP_EVENT_ID
    msg_type = CONTAINER_STARTUP_EVENT_MESSAGE_TYPE


class TriggerEventPublisher(EventPublisher):
    """Base of trigger events."""

    msg_type = TRIGGER_EVENT_MESSAGE_TYPE


class DatasourceUpdateEventPublisher(TriggerEventPublisher):
    """A datasource has new data; origin: the datasource id."""

    event_id = DATASOURCE_UPDATE_EVENT_ID


class ResourceModifiedEventPublisher(EventPublisher):
    """Base of resource modification events."""

    msg_type = RESOURCE_MODIFICATION_EVENT_MESSAGE_TYPE


class DatasourceUnavailableEventPublisher(ResourceModifiedEventPublisher):
    """A datasource could not be reached."""

    event_id = DATASOURCE_UNAVAILABLE_EVENT_ID
    msg_type = DATASOURCE_UNAVAILABLE_EVENT_MESSAGE_TYPE


class DatasetSupplementAddedEventPublisher(ResourceModifiedEventPublisher):
    """A supplement was added to a dataset; origin: the dataset id."""

    event_id = DATASET_SUPPLEMENT_ADDED_EVENT_ID
    msg_type = DATASET_SUPPLEMENT_ADDED_EVENT_MESSAGE_TYPE


class BusinessStateModificationEventPublisher(ResourceModifiedEventPublisher):
    """A resource's business state changed; origin: the process exchange name."""

    event_id = BUSINESS_STATE_MODIFICATION_EVENT_ID


class DatasetChangeEventPublisher(ResourceModifiedEventPublisher):
    """A dataset changed; origin: the dataset id."""

    event_id = DATASET_CHANGE_EVENT_ID
    msg_type = DATASET_CHANGE_EVENT_MESSAGE_TYPE


class DatasourceChangeEventPublisher(ResourceModifiedEventPublisher):
    """A datasource changed; origin: the datasource id."""

    event_id = DATASOURCE_CHANGE_EVENT_ID
    msg_type = DATASOURCE_CHANGE_EVENT_MESSAGE_TYPE


class IngestionProcessingEventPublisher(ResourceModifiedEventPublisher):
    """Ingestion progress of a dataset; origin: the dataset id."""

    event_id = INGESTION_PROCESSING_EVENT_ID
    msg_type = INGESTION_PROCESSING_EVENT_MESSAGE_TYPE


class NewSubscriptionEventPublisher(EventPublisher):
    """A notification subscription was created; origin: the dispatcher id."""

    event_id = NEW_SUBSCRIPTION_EVENT_ID
    msg_type = NEW_SUBSCRIPTION_EVENT_MESSAGE_TYPE


class DelSubscriptionEventPublisher(EventPublisher):
    """A notification subscription was removed; origin: the dispatcher id."""

    event_id = DEL_SUBSCRIPTION_EVENT_ID
    msg_type = DEL_SUBSCRIPTION_EVENT_MESSAGE_TYPE


class ScheduleEventPublisher(TriggerEventPublisher):
    """A scheduled trigger fired."""

    event_id = SCHEDULE_EVENT_ID


class LoggingEventPublisher(EventPublisher):
    """Base of log events; origin: the process name."""

    msg_type = LOGGING_EVENT_MESSAGE_TYPE


class CriticalLoggingEventPublisher(LoggingEventPublisher):
    event_id = LOGGING_CRITICAL_EVENT_ID


class ErrorLoggingEventPublisher(LoggingEventPublisher):
    event_id = LOGGING_ERROR_EVENT_ID


class InfoLoggingEventPublisher(LoggingEventPublisher):
    event_id = LOGGING_INFO_EVENT_ID


class DataEventPublisher(EventPublisher):
    """Base of data events."""

    msg_type = DATA_EVENT_MESSAGE_TYPE


class DataBlockEventPublisher(DataEventPublisher):
    """A block of data."""

    event_id = DATABLOCK_EVENT_ID


class InstrumentSampleDataEventPublisher(DataBlockEventPublisher):
    """One instrument sample (conductivity, pressure, temperature, ...)."""

    msg_type = INSTRUMENT_SAMPLE_DATA_EVENT_MESSAGE_TYPE


class EventSubscriber(Subscriber):
    """
    Receives events of `event_id` (any when None) from `origin` (any when
    None; wildcards allowed).  A named queue is shared by every subscriber
    using the same name: they compete for the events, except on a stream
    (queue_type='stream'), where each reads them all from its own `offset`.
    Every other Subscriber parameter (durable, retries, queue_type, ...)
    passes through.
    """

    event_id = None

    def __init__(self, xp_name=None, binding_key=None, event_id=None, origin=None, queue_name=None, *args, **kwargs):
        self._event_id = event_id or self.event_id
        if queue_name is not None:
            queue_name = _system_scoped(queue_name)
        super().__init__(
            xp_name=xp_name or get_events_exchange_point(),
            binding_key=binding_key or self.topic(origin),
            queue_name=queue_name,
            *args,
            **kwargs
        )

    def topic(self, origin):
        """The binding key `<event_id|*>.<origin|#>`."""
        return "%s.%s" % (self._event_id or "*", origin or "#")

    def check_content(self, data):
        """Only an event may reach the handler: 'ION R1 GPB' content that is an IonMsg holding an EventMessage."""
        encoding = data.get("encoding")
        if encoding != ION_R1_GPB:
            raise CodecError("not an event: encoding %s is not %r" % (_short_repr(encoding), ION_R1_GPB))
        content = data["content"]
        if not isinstance(content, MessageInstance) or content.MessageType != EVENT_MESSAGE_TYPE:
            raise CodecError("not an event: the content is %s, not an IonMsg holding an EventMessage" % _kind(content))

    @defer.inlineCallbacks
    def on_activate(self, *args, **kwargs):
        log.debug("EventSubscriber consuming {key}", key=self._binding_key)
        yield super().on_activate(*args, **kwargs)


def _short_repr(value, limit=60):
    """repr(value) cut to `limit` characters: hostile headers can be long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(content):
    """What received content is: `an IonMsg holding LoggingEventMessage`, `a bare EventMessage`, `of type int`."""
    if isinstance(content, MessageInstance):
        inner = content.MessageObject
        return "an IonMsg holding %s" % (type(inner).__name__ if inner is not None else "nothing",)
    if isinstance(content, Wrapper):
        return "a bare %s" % (type(content).__name__,)
    return "of type %s" % (type(content).__name__,)


def _system_scoped(queue_name):
    """`<sys_name>.<queue_name>`, prefixed once; unchanged without a sysname."""
    sys_name = ioninit.sys_name
    if not sys_name or queue_name.startswith(sys_name + "."):
        return queue_name
    return "%s.%s" % (sys_name, queue_name)


class ResourceLifecycleEventSubscriber(EventSubscriber):
    event_id = RESOURCE_LIFECYCLE_EVENT_ID


class ContainerLifecycleEventSubscriber(ResourceLifecycleEventSubscriber):
    event_id = CONTAINER_LIFECYCLE_EVENT_ID


class ProcessLifecycleEventSubscriber(ResourceLifecycleEventSubscriber):
    event_id = PROCESS_LIFECYCLE_EVENT_ID


class InfrastructureEventSubscriber(EventSubscriber):
    """Abstract: binds `*.<origin>`."""


class AppLoaderEventSubscriber(InfrastructureEventSubscriber):
    event_id = APP_LOADER_EVENT_ID


class ContainerStartupEventSubscriber(InfrastructureEventSubscriber):
    event_id = CONTAINER_STARTUP_EVENT_ID


class TriggerEventSubscriber(EventSubscriber):
    pass


class DatasourceUpdateEventSubscriber(TriggerEventSubscriber):
    event_id = DATASOURCE_UPDATE_EVENT_ID


class ResourceModifiedEventSubscriber(EventSubscriber):
    pass


class DatasourceUnavailableEventSubscriber(ResourceModifiedEventSubscriber):
    event_id = DATASOURCE_UNAVAILABLE_EVENT_ID


class DatasetSupplementAddedEventSubscriber(ResourceModifiedEventSubscriber):
    event_id = DATASET_SUPPLEMENT_ADDED_EVENT_ID


class BusinessStateChangeSubscriber(ResourceModifiedEventSubscriber):
    """R1's name (not ...EventSubscriber) is kept for compatibility."""

    event_id = BUSINESS_STATE_MODIFICATION_EVENT_ID


class DatasetChangeEventSubscriber(ResourceModifiedEventSubscriber):
    event_id = DATASET_CHANGE_EVENT_ID


class DatasourceChangeEventSubscriber(ResourceModifiedEventSubscriber):
    event_id = DATASOURCE_CHANGE_EVENT_ID


class IngestionProcessingEventSubscriber(ResourceModifiedEventSubscriber):
    event_id = INGESTION_PROCESSING_EVENT_ID


class DatasetStreamingEventSubscriber(ResourceModifiedEventSubscriber):
    event_id = DATASET_STREAMING_EVENT_ID


class NewSubscriptionEventSubscriber(EventSubscriber):
    event_id = NEW_SUBSCRIPTION_EVENT_ID


class DelSubscriptionEventSubscriber(EventSubscriber):
    event_id = DEL_SUBSCRIPTION_EVENT_ID


class ScheduleEventSubscriber(TriggerEventSubscriber):
    event_id = SCHEDULE_EVENT_ID


class LoggingEventSubscriber(EventSubscriber):
    pass


class CriticalLoggingEventSubscriber(LoggingEventSubscriber):
    event_id = LOGGING_CRITICAL_EVENT_ID


class ErrorLoggingEventSubscriber(LoggingEventSubscriber):
    event_id = LOGGING_ERROR_EVENT_ID


class InfoLoggingEventSubscriber(LoggingEventSubscriber):
    event_id = LOGGING_INFO_EVENT_ID


class DataEventSubscriber(EventSubscriber):
    pass


class DataBlockEventSubscriber(DataEventSubscriber):
    event_id = DATABLOCK_EVENT_ID


class InstrumentSampleDataEventSubscriber(DataBlockEventSubscriber):
    """Subscribers never use msg_type; it is kept because R1 defined it."""

    msg_type = INSTRUMENT_SAMPLE_DATA_EVENT_MESSAGE_TYPE
