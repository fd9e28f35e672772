"""
Dead letters: events a subscriber gave up on, kept with the reason why.

Each system has one dead-letter topic exchange and one queue, both named
`<sys_name>.events.dead`; the queue is bound with `#`, and anyone may bind
more queues to the exchange (dead letters keep the event's routing key).

A subscriber publishes its dead letters itself rather than relying on the
broker's x-dead-letter-exchange: that way each carries the reason, which the
broker's own `x-death` entries cannot (their reason is only "rejected").  A
dead letter is the original body with the original properties; its AMQP
headers gain:

    x-ion-death-reason          why (the handler's exception, or the decode error)
    x-ion-attempts              how many times the handler failed (0: never decoded)
    x-ion-original-exchange     where the event was first published
    x-ion-original-routing-key  and with which routing key
    x-ion-queue                 the subscriber's queue
    x-ion-subscriber            the subscriber's receiver name

The exchange and the queue are durable and not auto-deleted: dead letters are
evidence and must outlive the subscribers and a broker restart (those of
persistent events do; transient events stay transient).  They are kept until
read (`consume()`) or `delete()`d, within bounds: the queue holds at most
`max_length` dead letters and `max_length_bytes` of bodies (ion.config,
this module's section; None lifts a bound).  Past either, the broker drops
the oldest ones (drop-head), so the newest evidence is kept and a flood of
them cannot exhaust the broker's memory; those dropped are gone.  Bodies are
kept byte for byte.

RabbitMQ refuses to declare an existing queue with other arguments, so a
dead-letter queue declared before with other bounds (or none, by an older
version) is used as it is, with a warning once saying how to apply the new
ones.

The functions here take the container's ExchangeManager (`broker`), through
which the dead-letter topology is declared like any other.
"""

from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from ion.core import ioninit
from ion.core.messaging.broker.interface import NotFound, PreconditionFailed
from ion.core.messaging.envelope import check_routing_key

log = Logger()
CONF = ioninit.config(__name__)

REASON = "x-ion-death-reason"
ATTEMPTS = "x-ion-attempts"
ORIGINAL_EXCHANGE = "x-ion-original-exchange"
ORIGINAL_ROUTING_KEY = "x-ion-original-routing-key"
QUEUE = "x-ion-queue"
SUBSCRIBER = "x-ion-subscriber"

# A reason is for people; a whole traceback or a 64 kB repr is not wanted in every header.
MAX_REASON_CHARS = 1000

# Bounds used when ion.config does not name them.
DEFAULT_MAX_LENGTH = 10000
DEFAULT_MAX_LENGTH_BYTES = 64 * 1024 * 1024

_warned_unbounded = set()  # dead-letter queues already warned about: once per process is enough


def dead_letter_name(sys_name=None):
    """`<sys_name>.events.dead`: the name of both the exchange and the queue (this system's by default)."""
    return "%s.events.dead" % (sys_name or ioninit.sys_name,)


def queue_arguments():
    """The x-arguments bounding the dead-letter queue, from ion.config; ValueError naming a bad setting."""
    arguments = {}
    for key, arg, default in (
        ("max_length", "x-max-length", DEFAULT_MAX_LENGTH),
        ("max_length_bytes", "x-max-length-bytes", DEFAULT_MAX_LENGTH_BYTES),
    ):
        value = CONF.getValue(key, default)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError("ion.config %r: %s must be None or an int >= 1, not %r" % (__name__, key, value))
        arguments[arg] = value
    if arguments:
        arguments["x-overflow"] = "drop-head"
    return arguments


def _queue_config(name, arguments):
    return {
        "exchange": name,
        "exchange_type": "topic",
        "exchange_durable": True,
        "exchange_auto_delete": False,
        "queue": name,
        "durable": True,
        "exclusive": False,
        "auto_delete": False,
        "arguments": arguments,
        "routing_key": "#",
    }


@defer.inlineCallbacks
def declare(broker, name=None):
    """Declare the dead-letter exchange and queue `name` and bind them; fires with the name."""
    name = name or dead_letter_name()
    arguments = queue_arguments()
    config = _queue_config(name, arguments)
    try:
        yield broker.declare_queue(config)
    except PreconditionFailed as e:
        yield broker.declare_queue(dict(config, passive=True))  # it exists: use it as it is
        if name not in _warned_unbounded:
            _warned_unbounded.add(name)
            log.warn(
                "Dead-letter queue {name} exists with other arguments than {arguments} from ion.config ({e}); it is "
                "used as it is and these bounds are not applied.  To apply them, read its dead letters "
                "(dead_letters.consume) and delete it (dead_letters.delete): the next subscriber declares it "
                "again; or on RabbitMQ bound it with a policy (rabbitmqctl set_policy --apply-to queues).",
                name=name, arguments=arguments, e=e.text,
            )
    return name


@defer.inlineCallbacks
def delete(broker, name=None):
    """Delete the dead-letter queue and exchange; fires with the number of dead letters dropped."""
    name = name or dead_letter_name()
    dropped = yield broker.delete_queue(name)
    yield broker.delete_exchange(name)
    return dropped


def attempts_of(properties):
    """The failed attempts recorded in a delivery's headers (0 when absent or not a sane number)."""
    value = (properties.get("headers") or {}).get(ATTEMPTS, 0)
    return value if isinstance(value, int) and value >= 0 else 0


def first_route(delivery):
    """
    (exchange, routing key) the message was first published with, before any
    retry copies; the headers saying so are ignored unless they are usable.
    """
    headers = delivery.properties.get("headers") or {}
    route = (headers.get(ORIGINAL_EXCHANGE), headers.get(ORIGINAL_ROUTING_KEY))
    try:
        for part in route:
            check_routing_key(part)  # an exchange name has the same limits
    except (TypeError, ValueError):
        return delivery.exchange, delivery.routing_key
    return route


def with_headers(delivery, **headers):
    """A copy of the delivery's properties with `headers` added to its AMQP headers."""
    properties = dict(delivery.properties)
    properties["headers"] = dict(properties.get("headers") or {}, **headers)
    return properties


@defer.inlineCallbacks
def publish(broker, delivery, reason, attempts, queue, subscriber, name=None):
    """
    Publish `delivery` (an IDelivery) as a dead letter carrying `reason`.
    The topology is declared again if it went away (an operator deleted it).
    """
    exchange, routing_key = first_route(delivery)
    properties = with_headers(
        delivery,
        **{
            REASON: str(reason)[:MAX_REASON_CHARS],
            ATTEMPTS: attempts,
            ORIGINAL_EXCHANGE: exchange,
            ORIGINAL_ROUTING_KEY: routing_key,
            QUEUE: queue or "",
            SUBSCRIBER: subscriber,
        }
    )
    name = name or dead_letter_name()
    try:
        yield broker.publish_raw(name, routing_key, delivery.body, properties)
    except NotFound:
        yield declare(broker, name)
        yield broker.publish_raw(name, routing_key, delivery.body, properties)


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as read back from the queue."""

    body: bytes
    properties: dict
    routing_key: str
    reason: str
    attempts: int
    queue: str
    subscriber: str
    original_exchange: str

    @classmethod
    def from_delivery(cls, delivery):
        headers = delivery.properties.get("headers") or {}
        return cls(
            body=delivery.body,
            properties=delivery.properties,
            routing_key=headers.get(ORIGINAL_ROUTING_KEY, delivery.routing_key),
            reason=headers.get(REASON),
            attempts=headers.get(ATTEMPTS),
            queue=headers.get(QUEUE),
            subscriber=headers.get(SUBSCRIBER),
            original_exchange=headers.get(ORIGINAL_EXCHANGE),
        )


@defer.inlineCallbacks
def consume(broker, callback, name=None, prefetch_count=100):
    """
    Read the dead letters: `callback(DeadLetter)` for each, which is then
    acked.  If the callback fails, the failure is logged and the dead letter
    stays unacked, so it goes back to the queue when the consumer is
    cancelled; requeueing it at once would only loop.  The topology is
    declared first.  Fires with the IConsumer: cancel it to stop reading.
    """

    def deliver(delivery):
        try:
            callback(DeadLetter.from_delivery(delivery))
        except Exception:
            log.failure("dead-letter callback failed; the dead letter stays unacked")
        else:
            delivery.ack()

    name = yield declare(broker, name)
    consumer = yield broker.consume(name, deliver, prefetch_count=prefetch_count)
    return consumer


# --- for operators (ion-events dead-letters) -------------------------------


# How long _take_all waits for the dead letters the queue said it held (another reader may take some).
TAKE_TIMEOUT = 10.0


@defer.inlineCallbacks
def _take_all(broker, name, clock=None):
    """
    Every dead letter now in the queue, handed over and not yet settled:
    [(DeadLetter, delivery)], and the consumer.  The caller acks or rejects
    each and cancels the consumer.  Waits at most TAKE_TIMEOUT seconds on
    `clock` for them all.
    """
    if clock is None:
        from twisted.internet import reactor as clock
    depth = yield broker.queue_depth(name)
    taken = []
    if not depth:
        return taken, None
    all_taken = defer.Deferred()

    def deliver(delivery):
        taken.append((DeadLetter.from_delivery(delivery), delivery))
        if len(taken) == depth and not all_taken.called:
            all_taken.callback(None)

    consumer = yield broker.consume(name, deliver, prefetch_count=depth)
    timer = clock.callLater(TAKE_TIMEOUT, lambda: all_taken.called or all_taken.callback(None))
    yield all_taken
    if timer.active():
        timer.cancel()
    return taken, consumer


@defer.inlineCallbacks
def peek(broker, name=None):
    """The dead letters in the queue, oldest first, left in it (each is handed back)."""
    name = yield declare(broker, name)
    taken, consumer = yield _take_all(broker, name)
    if consumer is not None:
        yield consumer.cancel()
    for _letter, delivery in taken:
        delivery.reject(requeue=True)
    return [letter for letter, _delivery in taken]


def without_ion_headers(properties):
    """A dead letter's properties as they were before it died: the x-ion-* headers it gained removed."""
    properties = dict(properties)
    headers = {k: v for k, v in (properties.get("headers") or {}).items() if not k.startswith("x-ion-")}
    properties["headers"] = headers
    return properties


@defer.inlineCallbacks
def requeue(broker, name=None):
    """
    Publish every dead letter again to its original exchange and routing key
    (as it first was), then drop it; fires with how many.  One whose
    exchange is gone stays a dead letter and fails the Deferred.
    """
    name = yield declare(broker, name)
    taken, consumer = yield _take_all(broker, name)
    try:
        for number, (letter, delivery) in enumerate(taken):
            try:
                yield broker.publish_raw(
                    letter.original_exchange, letter.routing_key, letter.body, without_ion_headers(letter.properties)
                )
            except Exception:
                for _rest, unsent in taken[number:]:
                    unsent.reject(requeue=True)
                raise
            delivery.ack()
    finally:
        if consumer is not None:
            yield consumer.cancel()
    return len(taken)


@defer.inlineCallbacks
def purge(broker, name=None):
    """Drop every dead letter (the queue and exchange stay); fires with how many."""
    name = yield declare(broker, name)
    dropped = yield broker.purge_queue(name)
    return dropped
