"""
Publishers and subscribers: lifecycle objects that a process owns (R1 §2).

A Publisher sends to one exchange point; a Subscriber's activation declares
its queue, binds it and starts consuming, and each message is acked after
`ondata` has finished.  Fixed from R1 (§10.2): `unsubscribe()` works, the
factory's handler is in place before consuming starts, the exchange keeps its
own flags whatever the subscriber queue's are, the exchange is declared once
and not per message, publish failures fail the Deferred, and a message that
cannot be decoded is rejected instead of stalling the consumer.

Failing handlers and poison messages.  By default a subscriber does what R1
did: the message is acked after `ondata` whatever happened, and a failure is
logged with the event.  Opt in per subscriber for more:

* `retries=N`: a failed event is handled again, up to N more times, then
  dead-lettered (so with retries=3 the handler sees it exactly 4 times).
  RabbitMQ's classic queues do not count redeliveries, and counting them in
  memory breaks with competing consumers and restarts, so a retry is a copy
  of the message republished to the subscriber's own queue (through the
  default exchange) with the failed-attempt count in the `x-ion-attempts`
  header; the original is acked once the copy has been confirmed.  The copy
  queues behind the events already waiting, and its delivery's routing key is
  the queue's name; the original route stays in its headers.
  On a quorum queue the broker counts deliveries itself, so a retry is the
  message rejected with requeue, and its attempts are the broker's
  x-delivery-count + 1 (before RabbitMQ 4.3 a delivery handed back
  unhandled, its consumer or connection gone, counts as one too; 4.3 counts
  only basic.reject, which is what a retry sends).
* `dead_letter=True` (implied by `retries`): an event the handler gave up on,
  and any message that cannot be decoded, goes to the system's dead letters
  (see dead_letters.py) with the reason, and is acked.  Without it,
  undecodable messages are rejected, and an event that failed its last retry
  too is rejected.

Queue types (`queue_type`, see queue_types.py).  Every queue declares its
type, 'classic' too.  A quorum queue also declares the system's dead-letter
exchange and a delivery limit (x-delivery-limit: 20, or `retries` if
more; queue_types.delivery_limit): RabbitMQ 4 limits deliveries to 20 by
default and drops a message past the limit when no dead-letter exchange is
set.  So what goes past the limit (a subscriber dying on it again and
again), and what is rejected, ends in the dead letters (x-death reason
delivery_limit or rejected) rather than nowhere.  The subscriber itself
dead-letters a failed event after its last retry, before the broker would.
A stream keeps every event; each stream subscriber reads it from its
`offset` (a window of events back, without the event store) and acks
without removing anything.  A stream cannot retry, and an undecodable
message from it is acked (dead-lettered first if asked), never rejected:
RabbitMQ closes the connection on a rejection from a stream.

Failures are logged at a bounded rate: the first in each second with its
traceback, the event and what became of it (acked, retried, dead-lettered,
rejected), the others counted in one summary line per second.  A subclass
may refuse content it cannot take (`check_content`, as event subscribers do
for anything that is not an event): such a message is undecodable for it.

Durable subscriptions across a broker restart.  R1 declares every exchange
point non-durable and auto-delete, and R1 peers must keep working, so its
flags stay.  But a binding survives a restart only when both its exchange and
its queue are durable: a durable queue bound to the exchange point itself
would lose its binding at every restart, and every event published before its
subscriber came back (or while it was away) would be unroutable and dropped.
So each exchange point `X` has a durable companion, `X.durable` (a durable,
auto-delete topic exchange), bound to `X` with '#'.  A durable subscriber
binds its queue to the companion with its binding key (a binding that
survives the restart) and binds the companion to `X`; a persistent publisher
publishes to `X` as before and binds the companion to `X` too.  The broker
forgets that exchange-to-exchange binding at a restart, but the connection
declares it again before any publish goes on, so the first persistent event
after the restart already reaches the durable queue, whichever side
reconnects first and even with no subscriber connected.  Everything else (R1
peers, non-durable subscribers, non-persistent publishers) sees only `X`.
The companion goes away with the last durable queue bound to it.
"""

import inspect
import itertools
import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ion.core import ioninit, metrics
from ion.core.exception import UsageError
from ion.core.messaging import envelope, messaging
from ion.core.messaging.envelope import check_routing_key
from ion.core.messaging.exchange import COMPANION_FLAGS, durable_companion
from ion.core.messaging.messaging import Message
from ion.core.messaging.receiver import WorkerReceiver, container_of
from ion.services.dm.distribution import dead_letters, queue_types
from ion.services.dm.distribution.queue_depth import DepthWatch
from ion.util.state_object import BasicLifecycleObject, BasicStates

log = Logger()
CONF = ioninit.config(__name__)

# Every events exchange is a non-durable, auto-delete topic exchange, as in R1;
# publishers and subscribers all declare it with exactly these flags.
EXCHANGE_FLAGS = {"exchange_type": "topic", "exchange_durable": False, "exchange_auto_delete": True}
# The flags of an exchange point's durable companion, which durable queues bind to.
COMPANION_QUEUE_FLAGS = {
    "exchange_type": COMPANION_FLAGS["type"],
    "exchange_durable": COMPANION_FLAGS["durable"],
    "exchange_auto_delete": COMPANION_FLAGS["auto_delete"],
}


# Numbers the subscribers' receivers, so each has its own name and store entry.  R1 used the count
# of the process's registered lifecycle objects, which subscribers built before registering shared.
_subscriber_numbers = itertools.count()

# Routing keys whose envelope a publisher keeps encoded (_send_packed); past it they are made again.
MAX_TEMPLATES = 1000

# A subscriber's prefetch unless it names one: chosen by measurement (bench/README.txt, "prefetch").
DEFAULT_PREFETCH = 100

# What a subscriber's full queue does with the next event (x-overflow).
OVERFLOW_MODES = ("drop-head", "reject-publish")


def _require(value, what, who):
    if not value:
        raise UsageError("%s needs %s" % (who, what))


def _queue_arguments(who, max_length, max_length_bytes, overflow):
    """The x-arguments bounding a subscriber's queue (None when unbounded); ValueError naming a bad one."""
    arguments = {}
    for name, value, arg in (
        ("max_length", max_length, "x-max-length"),
        ("max_length_bytes", max_length_bytes, "x-max-length-bytes"),
    ):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError("%s: %s must be None or an int >= 1, not %r" % (who, name, value))
        arguments[arg] = value
    if overflow is not None and overflow not in OVERFLOW_MODES:
        raise ValueError("%s: overflow must be one of %s, not %r" % (who, ", ".join(OVERFLOW_MODES), overflow))
    if overflow is not None and not arguments:
        raise ValueError("%s: overflow=%r needs max_length or max_length_bytes" % (who, overflow))
    if not arguments:
        return None
    # Always explicit: subscribers sharing the queue then agree whether or not they name the default.
    arguments["x-overflow"] = overflow or "drop-head"
    return arguments


class Publisher(BasicLifecycleObject):
    """
    Publishes messages to exchange point `xp_name` with `routing_key` (the
    default topic).  `persistent=True` publishes them with delivery_mode 2,
    so a durable queue keeps them across a broker restart.  It talks to the
    broker through its process's ExchangeManager.
    """

    lifecycle_noun = "publisher"

    def __init__(
        self, xp_name=None, routing_key=None, credentials=None, process=None, persistent=False, *args, **kwargs
    ):
        super().__init__()
        who = type(self).__name__
        _require(xp_name, "an exchange point (xp_name)", who)
        _require(routing_key, "a routing_key", who)
        _require(process, "a process", who)
        check_routing_key(str(routing_key))
        self._xp_name = xp_name
        self._routing_key = routing_key
        self._who = "publisher %s" % (routing_key,)  # for container_of's error, made once
        self.delivery_mode = 2 if persistent else 1
        self._credentials = credentials
        self._process = process
        self.publisher_config = dict(
            EXCHANGE_FLAGS, exchange=xp_name, mandatory=True, immediate=False, warn_if_exists=False
        )
        self._templates = {}  # routing key -> envelope.Template of _send_packed

    @property
    def exchange_manager(self):
        return container_of(self._process, self._who).exchange_manager

    def _exchange_config(self):
        config = dict(messaging.PROCESS_EXCHANGE)
        config.update(self.publisher_config)
        return config

    def on_initialize(self, *args, **kwargs):
        pass  # nothing to prepare: a publisher has no queue

    @defer.inlineCallbacks
    def on_activate(self, *args, **kwargs):
        # Declared once, here or by the first publish, not for every message as R1 did.
        yield self.exchange_manager.declare_for(self._exchange_config())
        if self.delivery_mode == 2:
            # Recorded with the connection: after a broker restart it is bound again before we publish.
            yield self.exchange_manager.bind_durable_companion(self._xp_name)

    def on_deactivate(self, *args, **kwargs):
        pass  # nothing to stop: each publish is complete in itself

    def on_terminate(self, *args, **kwargs):
        pass

    def _lifecycle_name(self):
        return self._xp_name

    def publish(self, data, routing_key=None, mandatory=None, delivery_mode=None, **_):
        """
        Send `data` (a message instance, wrapper or any msgpack-able value).
        Fires with the message dict sent; fails if the broker refused it, or
        without sending anything if the routing key is too long.
        """
        try:
            sealed, sent = self._send(data, routing_key, mandatory, delivery_mode)
        except Exception:  # no container, or one not connected yet
            return defer.fail()
        return sent.addCallback(lambda _: sealed.message)

    def _send(self, data, routing_key=None, mandatory=None, delivery_mode=None):
        """publish's work: (the Envelope, the broker's Deferred); raises if there is nothing to send it with."""
        exchange_manager = self.exchange_manager
        process = self._process
        sealed = envelope.encode(
            process.id.full,
            routing_key or self._routing_key,
            None,
            data,
            {"sender-name": process.proc_name},
            self.delivery_mode if delivery_mode is None else delivery_mode,
        )
        config = self._exchange_config()
        if mandatory is None:
            mandatory = config.get("mandatory", False)
        return sealed, exchange_manager.publish(config, sealed.routing_key, sealed.body, sealed.properties, mandatory)

    def _send_packed(self, content, routing_key):
        """
        _send for 'ION R1 GPB' content packed already (an event plan's Structure bytes), with this
        publisher's defaults: its envelope comes from the routing key's Template (the same bytes).
        The broker's Deferred; raises if there is nothing to send it with.
        """
        exchange_manager = self.exchange_manager
        process = self._process
        sender, name = process.id.full, process.proc_name
        template = self._templates.get(routing_key)
        if (template is None or template.sender != sender or template.headers["sender-name"] != name
                or template.delivery_mode != self.delivery_mode):
            template = envelope.Template(sender, routing_key, None, {"sender-name": name},
                                         delivery_mode=self.delivery_mode)
            if len(self._templates) >= MAX_TEMPLATES:
                self._templates.clear()
            self._templates[routing_key] = template
        config = self._exchange_config()
        return exchange_manager.publish(config, routing_key, template.body(content), template.properties,
                                        config.get("mandatory", False))

    def register(self, xp_name=None, topic_name=None, publisher_name=None, credentials=None):
        """R1's optional PubSub-controller registration; there is no such service here."""
        log.info("Publisher {xp}: no PubSub controller to register with", xp=self._xp_name)
        return defer.succeed(False)


class Subscriber(BasicLifecycleObject):
    """
    Consumes from a queue bound to exchange point `xp_name` with `binding_key`.

    `queue_name=None` gives a broker-named queue of its own (every subscriber
    gets every message); subscribers sharing a queue name compete for them.
    A named queue with durable=True, auto_delete=False outlives the
    subscriber: events keep arriving in it while nobody consumes, and a new
    subscriber with that queue name gets them.

    `retries` and `dead_letter` choose what happens to failed and
    undecodable messages (see the module docstring); `stats` counts them.

    `queue_type` is 'classic', 'quorum' or 'stream' (None: the container's
    default, ion.config's default_queue_type or twistd cc
    --default_queue_type, for a named queue with durable=True and
    auto_delete=False, else classic).  Quorum queues and streams must be
    named, durable=True and auto_delete=False; a stream takes no length
    limits and no retries.  What RabbitMQ would refuse is a UsageError here,
    before anything is sent.  An existing queue keeps its type: a subscriber
    asking for another one fails at activation (PreconditionFailed).
    `offset` (streams only) is where the subscriber starts reading: 'next'
    (the default: only new events), 'first' (everything the stream holds),
    'last' (from its last chunk), an aware datetime (from that time; whole
    seconds, and RabbitMQ starts at a chunk's first event), a number of
    seconds ago, or RabbitMQ's interval text ('10m', '1h', '2D'; units
    Y M D h m s).  After a reconnect it goes on where it left off;
    `subscribe()` after `unsubscribe()` starts from `offset` again.

    A queue with no name is the broker's name for one of the subscriber's
    own, exclusive to its connection (RabbitMQ 4.3 refuses, by default,
    queues neither durable nor exclusive); a named queue that is not
    durable draws a warning naming that rule.

    Handling is R1's, whatever the prefetch: `ondata` is called for one event
    at a time, in queue order, and the next call comes only after the
    previous one finished and its ack was sent.  `concurrency=N` opts in to
    up to N handler calls at once (each still acked after its own call ends).

    `prefetch_count` is how many unacked messages the broker hands over at
    once (DEFAULT_PREFETCH unless given; R1 used 1).  The ones not yet
    handled wait in the subscriber, so a higher prefetch saves a broker
    round trip per event without changing what the handler sees.  What it
    does change: competing consumers of one queue are served round robin,
    but each may hold up to `prefetch_count` events, so a busy or slow one
    keeps its share waiting while an idle one could have taken them (for
    strictly even sharing of slow work, pass prefetch_count=1).  When a
    subscriber dies, everything it held unacked (up to `prefetch_count`)
    goes back to the queue and is delivered again (redelivered=True).  Of
    those, the ones handled twice are the one being handled at the crash and
    the ones handled since the reactor last flushed the socket: their acks
    were written but had not left the process (measured: up to 88 of a
    prefetch of 100 under load; test_peer_kills).  So at-least-once, with
    at most `prefetch_count` duplicates per crash.

    `clock` times the rate limits of the failure and decode log lines (the
    process's clock by default; tests give a task.Clock), and the queue depth checks.

    A queue is unbounded unless `max_length` (ready events) and/or
    `max_length_bytes` (their bodies' bytes) bound it; events handed to the
    subscriber and not yet acked do not count.  When it is full, `overflow`
    says what happens to the next event:

    * 'drop-head' (the default): the oldest waiting events are dropped, gone
      for good; publishers never notice.
    * 'reject-publish': the new event is refused.  A publisher with confirms
      (the default on RabbitMQ, always on the embedded broker) then gets a
      failed publish Deferred (MessageRefused): that is its backpressure
      signal.  With confirms off the event is dropped silently.  Other queues
      the event is routed to still get it.

    Subscribers sharing a queue must give it the same limits (the broker
    refuses the queue's re-declaration otherwise, PreconditionFailed).

    Whatever the limits, the queue's depth is checked every
    `queue_depth_check_interval` seconds (ion.config) on `clock`, and a
    warning naming it and its depth is logged once it holds more than
    `depth_warning` events (default: `queue_depth_warning` in ion.config;
    0 turns it off); again only after it fell below half of that.
    """

    lifecycle_noun = "subscriber"

    def __init__(
        self,
        xp_name=None,
        binding_key=None,
        queue_name=None,
        credentials=None,
        process=None,
        durable=False,
        auto_delete=True,
        retries=None,
        dead_letter=None,
        prefetch_count=None,
        max_length=None,
        max_length_bytes=None,
        overflow=None,
        depth_warning=None,
        clock=None,
        concurrency=1,
        queue_type=None,
        offset=None,
        *args,
        **kwargs
    ):
        super().__init__()
        who = type(self).__name__
        if prefetch_count is None:
            prefetch_count = DEFAULT_PREFETCH
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError("%s: concurrency must be an int >= 1, not %r" % (who, concurrency))
        default_type = queue_types.check_default(
            CONF.getValue("default_queue_type", "classic"), "ion.config %r default_queue_type" % (__name__,)
        )
        queue_type = queue_types.resolve(queue_type, queue_name, durable, auto_delete, default_type)
        limits = [name for name, value in (("max_length", max_length), ("max_length_bytes", max_length_bytes),
                                           ("overflow", overflow)) if value is not None]
        queue_types.check(who, queue_type, queue_name, durable, auto_delete, retries, limits, offset)
        consumer_arguments = None
        if queue_type == "stream":
            consumer_arguments = {"x-stream-offset": queue_types.stream_offset(who, offset)}
        self.queue_type = queue_type
        arguments = dict(_queue_arguments(who, max_length, max_length_bytes, overflow) or {})
        arguments["x-queue-type"] = queue_type  # always explicit: see queue_types.py
        if depth_warning is None:
            depth_warning = CONF.getValue("queue_depth_warning", 10000)
        if not isinstance(depth_warning, int) or isinstance(depth_warning, bool) or depth_warning < 0:
            raise ValueError("%s: depth_warning must be None or an int >= 0, not %r" % (who, depth_warning))
        if not isinstance(prefetch_count, int) or isinstance(prefetch_count, bool) or prefetch_count < 1:
            raise ValueError("%s: prefetch_count must be an int >= 1, not %r" % (who, prefetch_count))
        _require(xp_name, "an exchange point (xp_name)", who)
        _require(process, "a process", who)
        if clock is None:
            clock = getattr(process, "clock", None)
        if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
            raise ValueError("%s: retries must be None or an int >= 0, not %r" % (who, retries))
        self._retries = retries
        self._dead_letter = retries is not None if dead_letter is None else bool(dead_letter)
        # Fixed now, like the exchange point: the system this subscriber belongs to.  A quorum queue
        # always dead-letters there too (the broker's x-dead-letter-exchange): see the module docstring.
        uses_dead_letters = self._dead_letter or queue_type == "quorum"
        self.dead_letter_name = dead_letters.dead_letter_name() if uses_dead_letters else None
        if queue_type == "quorum":
            arguments["x-dead-letter-exchange"] = self.dead_letter_name
            arguments["x-delivery-limit"] = queue_types.delivery_limit(retries)
        if queue_name is None and (durable or not auto_delete):
            log.warn("Subscriber with a durable or non-auto-delete queue but no queue_name: the flags have no use")
        if queue_name is not None and not durable:
            _warn_transient_shared(queue_name)
        self._xp_name = xp_name
        self._binding_key = binding_key
        self._queue_name = queue_name
        self._credentials = credentials
        self._process = process
        self._durable = durable
        self._auto_delete = auto_delete
        self._subscriber_id = None
        self._resource_id = None
        self._counts = None  # metrics.DeliveryCounts of this binding key, see _receive_handler
        # The queue's flags are the subscriber's; the exchange keeps its own (R1 mixed them up).
        # A durable queue binds to the exchange point's durable companion (see the module docstring).
        exchange_flags = COMPANION_QUEUE_FLAGS if durable else EXCHANGE_FLAGS
        self.consumer_config = dict(
            exchange_flags,
            exchange=durable_companion(xp_name) if durable else xp_name,
            durable=durable,
            auto_delete=auto_delete,
            # A broker-named queue is exclusive: RabbitMQ 4.3 refuses, by default, queues neither
            # durable nor exclusive.  No R1 peer can tell: the queue is server-named (nobody else
            # knows its name), private to this subscriber anyway, and it goes when the subscriber
            # does (auto-delete) or its connection does (exclusive), as before.  After a reconnect
            # the connection declares it again under a new name and binds it again (amqp_topology).
            exclusive=queue_name is None,
            mandatory=True,
            immediate=False,
            warn_if_exists=False,
            routing_key=binding_key,
            queue=queue_name,
            prefetch_count=prefetch_count,
            arguments=arguments,
            consumer_arguments=consumer_arguments,
        )
        self._sub_name = "%s_subscriber_recv_%d" % (process.id.full, next(_subscriber_numbers))
        self._recv = WorkerReceiver(
            self._sub_name,
            process=process,
            label="Subscriber %s" % (binding_key,),
            handler=self._receive_handler,
            error_handler=self._receive_error,
            consumer_config=self.consumer_config,
            content_check=self.check_content,
            clock=clock,
            concurrency=concurrency,
        )
        if clock is None:
            from twisted.internet import reactor as clock
        self._depth_watch = None
        metrics.track_subscriber(self)
        # A stream's depth is every event it keeps, not a backlog: nothing to warn about.
        if depth_warning and queue_type != "stream":
            interval = CONF.getValue("queue_depth_check_interval", 10)
            if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not interval > 0:
                raise ValueError("ion.config %r: queue_depth_check_interval must be a number > 0, not %r"
                                 % (__name__, interval))
            self._depth_watch = DepthWatch(
                lambda: self.exchange_manager,
                lambda: self.queue,
                depth_warning,
                interval,
                clock,
                "Subscriber %s" % (self._sub_name,),
            )

    @property
    def queue(self):
        """The queue's name on the broker (the generated one for an anonymous queue)."""
        return self._recv.queue

    @property
    def stats(self):
        """Counts: undecodable, handler_failed, retried, dead_lettered."""
        return self._recv.stats

    @property
    def consuming(self):
        """True while the broker delivers to this subscriber (its consumer exists and is not cancelled)."""
        consumer = self._recv.consumer
        return consumer is not None and getattr(consumer, "active", True)

    def on_initialize(self, *args, **kwargs):
        pass

    def on_activate(self, *args, **kwargs):
        return self.subscribe()

    def on_deactivate(self, *args, **kwargs):
        return self.unsubscribe()

    @defer.inlineCallbacks
    def on_terminate(self, *args, **kwargs):
        self._stop_depth_watch()
        yield self._recv.terminate_unless_over()

    def on_error(self, cause=None, *args, **kwargs):
        self._stop_depth_watch()
        return super().on_error(cause, *args, **kwargs)

    def _lifecycle_name(self):
        return self._binding_key

    @defer.inlineCallbacks
    def subscribe(self):
        """Declare the queue (and the dead letters, if used), bind it and start consuming."""
        if self.dead_letter_name is not None:
            yield dead_letters.declare(self.exchange_manager, self.dead_letter_name)
        if self._recv.state == BasicStates.INIT:
            yield self._recv.attach()
        elif self._recv.state == BasicStates.READY:
            yield self._recv.activate()
        if self._durable:
            yield self.exchange_manager.declare_for(dict(EXCHANGE_FLAGS, exchange=self._xp_name))
            yield self.exchange_manager.bind_durable_companion(self._xp_name)
        if self._depth_watch is not None:
            self._depth_watch.start()
        return self._recv.xname

    @defer.inlineCallbacks
    def unsubscribe(self):
        """
        Stop receiving: the binding is removed, the consumer cancelled, and an
        auto-delete queue goes away with it.  `subscribe()` starts again.
        A stream keeps its binding: it goes on recording events for its other
        readers and the next one (delete the queue to stop it).
        """
        self._stop_depth_watch()
        if self._recv.state != BasicStates.ACTIVE:
            return
        queue = self._recv.queue
        if self._binding_key is not None and queue and self.queue_type != "stream":
            yield self.exchange_manager.unbind(queue, self.consumer_config["exchange"], self._binding_key)
        yield self._recv.deactivate()

    @property
    def exchange_manager(self):
        return self._recv.exchange_manager

    def _stop_depth_watch(self):
        if self._depth_watch is not None:
            self._depth_watch.stop()

    def _receive_handler(self, data, msg):
        """
        ondata, then ack; a failure is logged with the event and handled as
        configured.  A handler that returns no Deferred is acked at once,
        with no Deferred machinery in between.  Its time (failures too) goes
        to the handler-seconds metric.
        """
        counts = self._counts
        if counts is None:  # looked up once
            counts = self._counts = metrics.delivery_counts(self._binding_key)
        counts.delivered += 1
        started = time.perf_counter()
        try:
            result = self.ondata(data)
        except Exception:
            self._timed(started)
            return self._handler_failed(Failure(), data, msg)
        if result is None:  # the usual case, before the isinstance checks (Deferred is an ABC: they are slow)
            self._handled(None, msg, started)
            return None
        if inspect.iscoroutine(result):
            result = defer.ensureDeferred(result)
        if isinstance(result, defer.Deferred):
            return result.addCallbacks(self._handled, self._failed_later, (msg, started), None, (data, msg, started))
        self._handled(None, msg, started)
        return None

    def _timed(self, started):
        self._counts.observe(time.perf_counter() - started)

    def _failed_later(self, failure, data, msg, started):
        self._timed(started)
        return self._handler_failed(failure, data, msg)

    def _handled(self, _, msg, started):
        self._timed(started)
        self._counts.handled += 1
        if msg.state == Message.RECEIVED:
            msg.ack()

    @defer.inlineCallbacks
    def _handler_failed(self, failure, data, msg):
        self.stats["handler_failed"] += 1
        metrics.handler_failed.labels(self._binding_key).inc()
        attempts = self._attempts_before(msg) + 1
        if msg.state != Message.RECEIVED:
            outcome = "settled by the handler"
        elif self._retries is None and not self._dead_letter:
            outcome = "acked"  # R1
        elif attempts <= (self._retries or 0):
            outcome = "retried"
        elif self._dead_letter:
            outcome = "dead-lettered"
        else:
            outcome = "rejected"
        if self._recv.handler_failures.admit():
            log.failure(
                "Subscriber {key}: ondata failed (attempt {attempts}, {outcome}) on event {event}",
                failure,
                key=self._binding_key,
                attempts=attempts,
                outcome=outcome,
                event=_describe(data, msg),
            )
        if outcome == "acked":
            msg.ack()
        elif outcome == "retried":
            yield self._retry(msg, attempts)
        elif outcome == "dead-lettered":
            yield self._bury(msg, "%s: %s" % (failure.type.__name__, failure.getErrorMessage()), attempts)
        elif outcome == "rejected":
            msg.reject()

    def _attempts_before(self, msg):
        """
        Deliveries of this message before this one: on a quorum queue the
        broker's count (x-delivery-count), else the failed attempts our retry
        copies carry (x-ion-attempts).
        """
        if self.queue_type == "quorum":
            count = (msg.delivery.properties.get("headers") or {}).get("x-delivery-count", 0)
            return count if isinstance(count, int) and count >= 0 else 0
        return dead_letters.attempts_of(msg.delivery.properties)

    @defer.inlineCallbacks
    def _retry(self, msg, attempts):
        """
        Have the message handled again: on a quorum queue rejected with
        requeue (the broker counts it), else a copy republished to our own
        queue counting `attempts`, then the original acked.
        """
        if self.queue_type == "quorum":
            msg.requeue()  # basic.reject: RabbitMQ 4.3 counts rejects only, not basic.nack
            self.stats["retried"] += 1
            metrics.retried.labels(self._binding_key).inc()
            return
        exchange, routing_key = dead_letters.first_route(msg.delivery)
        properties = dead_letters.with_headers(
            msg.delivery,
            **{
                dead_letters.ATTEMPTS: attempts,
                dead_letters.ORIGINAL_EXCHANGE: exchange,
                dead_letters.ORIGINAL_ROUTING_KEY: routing_key,
            }
        )
        yield self.exchange_manager.publish_raw("", self.queue, msg.body, properties)
        msg.ack()
        self.stats["retried"] += 1
        metrics.retried.labels(self._binding_key).inc()

    @defer.inlineCallbacks
    def _bury(self, msg, reason, attempts):
        """Dead-letter the message with `reason`, then ack it."""
        yield dead_letters.publish(
            self.exchange_manager,
            msg.delivery,
            reason,
            attempts,
            self.queue,
            self._sub_name,
            self.dead_letter_name,
        )
        msg.ack()
        self.stats["dead_lettered"] += 1
        metrics.dead_lettered.labels(self._binding_key).inc()

    def _receive_error(self, data, msg, reason):
        """
        A message that cannot be decoded: dead-lettered if we do that; the
        receiver rejects it otherwise, except from a stream, which refuses
        basic.reject (RabbitMQ would close the connection): there it is acked.
        """
        if self._dead_letter:
            return self._bury(msg, reason, self._attempts_before(msg))
        if self.queue_type == "stream":
            msg.ack()

    def check_content(self, data):
        """Raise (a CodecError saying why) for a decoded message this subscriber cannot take; any is fine here."""

    def ondata(self, data):
        """Called with the message dict (headers and `content`) of each message."""
        raise NotImplementedError("Subscriber.ondata: subclass it or give the factory a handler")

    def register(self):
        """R1's optional PubSub-controller registration; there is no such service here."""
        log.info("Subscriber {key}: no PubSub controller to register with", key=self._binding_key)
        return defer.succeed(False)


_warned_transient = set()  # queue names warned about: once per process is enough


def _warn_transient_shared(queue_name):
    """A named non-durable queue is shared and transient: RabbitMQ 4.3 refuses those by default."""
    if queue_name in _warned_transient:
        return
    _warned_transient.add(queue_name)
    log.warn(
        "Subscriber queue {queue} is named (shared) and not durable: RabbitMQ 4.3 refuses such queues by default "
        "(deprecated feature transient_nonexcl_queues); pass durable=True (with auto_delete=False to keep it), "
        "or queue_name=None for a queue of the subscriber's own",
        queue=queue_name,
    )


def _summary(content):
    """An event's type and set fields (`EventMessage name='x' ...`); repr for anything else."""
    fields = getattr(content, "ListSetFields", None)
    message_object = getattr(content, "MessageObject", None)
    if fields is None or message_object is None:
        return repr(content)
    shown = " ".join("%s=%r" % (name, getattr(content, name)) for name in fields() if name != "additional_data")
    return "%s %s" % (message_object.ObjectClass.__name__, shown)


def _describe(data, msg, limit=300):
    """A short description of an event for the log: its route and the start of its content."""
    _exchange, routing_key = dead_letters.first_route(msg.delivery)
    content = _summary(data.get("content"))
    if len(content) > limit:
        content = content[:limit] + "..."
    return "%s from %s: %s" % (routing_key, data.get("sender"), content)


class PublisherFactory:
    """Builds publishers registered with a process, from defaults given once."""

    def __init__(self, routing_key=None, xp_name=None, credentials=None, process=None, publisher_type=None):
        self._routing_key = routing_key
        self._xp_name = xp_name
        self._credentials = credentials
        self._process = process
        self._publisher_type = publisher_type

    @defer.inlineCallbacks
    def build(
        self, routing_key=None, xp_name=None, credentials=None, process=None, publisher_type=None, *args, **kwargs
    ):
        """A publisher brought to its process's state; fires with it."""
        process = process or self._process
        publisher_type = publisher_type or self._publisher_type or Publisher
        pub = publisher_type(
            xp_name=xp_name or self._xp_name,
            routing_key=routing_key or self._routing_key,
            credentials=credentials or self._credentials,
            process=process,
            *args,
            **kwargs
        )
        yield process.register_life_cycle_object(pub)
        if CONF.getValue("register_on_build", False):
            yield pub.register(pub._xp_name, pub._routing_key, "Publisher", pub._credentials)
        return pub


class SubscriberFactory:
    """Builds subscribers registered with a process, from defaults given once."""

    def __init__(
        self, xp_name=None, binding_key=None, queue_name=None, subscriber_type=None, process=None, credentials=None
    ):
        self._xp_name = xp_name
        self._binding_key = binding_key
        self._queue_name = queue_name
        self._subscriber_type = subscriber_type
        self._process = process
        self._credentials = credentials

    @defer.inlineCallbacks
    def build(
        self,
        xp_name=None,
        binding_key=None,
        queue_name=None,
        handler=None,
        subscriber_type=None,
        process=None,
        credentials=None,
        *args,
        **kwargs
    ):
        """A subscriber brought to its process's state (consuming if ACTIVE); fires with it."""
        process = process or self._process
        subscriber_type = subscriber_type or self._subscriber_type or Subscriber
        sub = subscriber_type(
            xp_name=xp_name or self._xp_name,
            binding_key=binding_key or self._binding_key,
            queue_name=queue_name or self._queue_name,
            process=process,
            credentials=credentials or self._credentials,
            *args,
            **kwargs
        )
        if handler is not None:
            sub.ondata = handler  # before consuming starts (R1 set it after)
        if CONF.getValue("register_on_build", False):
            yield sub.register()
        yield process.register_life_cycle_object(sub)
        return sub
