"""
Receivers: a named queue, its consumer and the send path of a process (R1 §5.5).

A receiver is a lifecycle object.  initialize declares the exchange, the queue
and its binding; activate starts consuming; deactivate stops consuming (the
consumer really is cancelled at the broker, unlike R1) after the messages in
progress are done; terminate does the same and lets the auto-delete queue go.

Bad input never stalls a receiver: a message that cannot be decoded (not
msgpack, not a map, broken GPB content, or anything else that makes decoding
raise) goes to the error handlers, which may settle it themselves (a
subscriber dead-letters it), and is otherwise rejected.  Those warnings are
rate-limited (a flood of garbage must not become a flood of log lines); the
counts are in `Receiver.stats`.
"""

import time
from collections import Counter, deque
from types import CoroutineType

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ion.core import ioninit
from ion.core.exception import IonError
from ion.core.messaging import messaging
from ion.core.messaging.envelope import MAX_ROUTING_KEY_BYTES, WireFormatError, check_routing_key
from ion.core.messaging.messaging import Message
from ion.core.messaging.names import get_scoped_name
from ion.core.object.codec import CodecError
from ion.util.state_object import BasicLifecycleObject

log = Logger()

# check_routing_key and MAX_ROUTING_KEY_BYTES live in the envelope; R1-era code imports them from here.
__all__ = ["MAX_ROUTING_KEY_BYTES", "check_routing_key"]


class Throttle:
    """
    Says whether to log now: at most once per `interval` seconds.  `allow()`
    returns None when the line should be left out, else how many were left
    out since the last one (so that line can say so).
    """

    def __init__(self, interval=1.0, clock=time.monotonic):
        self.interval = interval
        self._clock = clock
        self._last = None
        self._skipped = 0

    def allow(self):
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._skipped += 1
            return None
        self._last = now
        skipped, self._skipped = self._skipped, 0
        return skipped


class FailureThrottle:
    """
    Handler failures logged at a bounded rate: the first of each `interval`
    in full (the caller logs it with its traceback when `admit()` says so),
    the others counted and summed up in one line when the interval ends.  A
    flood of failing messages is then two lines per interval, not a traceback
    each.  `clock` (an IReactorTime: the reactor by default, a task.Clock in
    tests) times the intervals; `flush()` writes a pending summary at once,
    and its receiver calls it when it stops so no timer outlives it.
    """

    def __init__(self, label, interval=1.0, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.label = label
        self.interval = interval
        self.clock = clock
        self._opened = None  # when the current interval began
        self._counted = 0
        self._summary = None  # the delayed call that writes the summary line

    def admit(self):
        """True: log this failure in full now; False: it is counted for the interval's summary line."""
        now = self.clock.seconds()
        if self._opened is not None and now - self._opened < self.interval:
            self._counted += 1
            if self._summary is None:
                self._summary = self.clock.callLater(self._opened + self.interval - now, self.flush)
            return False
        self.flush()
        self._opened = now
        return True

    def flush(self):
        """Write the summary of the failures counted so far, if any, and cancel its timer."""
        call, self._summary = self._summary, None
        if call is not None and call.active():
            call.cancel()
        if self._counted:
            log.warn(
                "{label}: {count} more handler failures in the last {seconds:.3g} s",
                label=self.label,
                count=self._counted,
                seconds=self.clock.seconds() - self._opened,
            )
            self._counted = 0


class ReceiverError(IonError):
    """The receiver cannot do what was asked (no container, no consumer config, ...)."""


def container_of(process, who):
    """`process`'s container (or this OS process's); ReceiverError naming `who` if there is none."""
    container = getattr(process, "container", None) or ioninit.container_instance
    if container is None:
        raise ReceiverError("%s has no container to talk to the broker" % (who,))
    return container


class Receiver(BasicLifecycleObject):
    """
    Base receiver.  Without a consumer config it only sends; subclasses
    supply the R1 queue configuration.

    `content_check(data)`, if given, is called with each decoded message
    dict; raising (a CodecError naming the problem) makes the message
    undecodable for this receiver, so no handler sees it.  `clock` times the
    rate limits of the log (the reactor by default).

    `concurrency=N` handles at most N deliveries at a time: the others wait,
    in the order they came, until a handling finished (its ack or reject
    sent), so with N=1 handlers see one message after another in queue order
    whatever the prefetch.  None (the default) handles each as it arrives.
    Deliveries still waiting when consuming stops are left unacked: the
    broker hands them back to the queue when the consumer is cancelled.
    """

    queue_factory = None  # one of messaging.process / worker / fanout
    lifecycle_noun = "receiver"

    SCOPE_GLOBAL, SCOPE_SYSTEM, SCOPE_LOCAL = "global", "system", "local"
    # Set (by a test, say) to ack and drop every new delivery instead of handling it (R1).
    rec_shutoff = False

    def __init__(
        self,
        name,
        scope="global",
        label=None,
        xspace=None,
        process=None,
        group=None,
        handler=None,
        error_handler=None,
        raw=False,
        consumer_config=None,
        publisher_config=None,
        content_check=None,
        clock=None,
        concurrency=None,
    ):
        super().__init__()
        if concurrency is not None and (
            not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
        ):
            raise ValueError("receiver %s: concurrency must be None or an int >= 1, not %r" % (name, concurrency))
        self.name = name
        self.scope = scope
        self.xname = get_scoped_name(name, scope)
        self.label = label or self.xname
        self.process = process
        self.group = group
        self.raw = raw
        self.handlers = [handler] if handler else []
        self.error_handlers = [error_handler] if error_handler else []
        self.consumer_config = consumer_config
        self.publisher_config = publisher_config
        self.consumer = None
        self._receiver_config = None  # set by _init_receiver
        self._queue = None
        self.processing_messages = {}
        self.concurrency = concurrency
        self._waiting = deque()  # deliveries not yet handled, in arrival order (with a concurrency bound)
        self._pumping = False
        self._draining = False
        self._idle = None
        self.content_check = content_check
        self.stats = Counter()  # 'undecodable', 'handler_failed'
        self._decode_warnings = Throttle() if clock is None else Throttle(clock=clock.seconds)
        self.handler_failures = FailureThrottle(self.label, clock=clock)

    # --- plumbing -------------------------------------------------------
    @property
    def container(self):
        return container_of(self.process, "receiver %s" % (self.xname,))

    @property
    def exchange_manager(self):
        return self.container.exchange_manager

    def add_handler(self, callback):
        self.handlers.append(callback)

    handle = add_handler

    def add_error_handler(self, callback):
        self.error_handlers.append(callback)

    def full_config(self):
        """The queue config: the R1 factory's (or _init_receiver's) for this receiver, then consumer_config."""
        if self._receiver_config is not None:
            config = dict(self._receiver_config)
        elif self.queue_factory:
            config = self.queue_factory(self.xname)
        else:
            config = dict(messaging.PROCESS_EXCHANGE)
        if self.consumer_config:
            config.update(self.consumer_config)
        return config

    def _init_receiver(self, receiver_config, store_config=False):
        """
        R1's hook for subclasses that build their own queue config in
        on_initialize: declare the queue of `receiver_config` (with
        consumer_config laid over it); activate then consumes it.  Fires with
        the queue's name.
        """
        self._receiver_config = dict(receiver_config)
        d = self._declare(store_config)
        return d.addCallback(lambda _: self._queue)

    # --- lifecycle ------------------------------------------------------
    @property
    def queue(self):
        """The queue's name on the broker; a broker-named queue's name can change after a reconnect."""
        return self.consumer.queue if self.consumer is not None else self._queue

    @property
    def consumes(self):
        return self.queue_factory is not None or bool(self.consumer_config) or self._receiver_config is not None

    def on_initialize(self, *args, **kwargs):
        if self.consumes:
            return self._declare()

    @defer.inlineCallbacks
    def _declare(self, store_config=True):
        config = self.full_config()
        self._queue = yield self.exchange_manager.declare_queue(config)
        if store_config:
            self.exchange_manager.store[self.xname] = config

    @defer.inlineCallbacks
    def on_activate(self, *args, **kwargs):
        if not self.consumes:
            return
        if self._queue is None:
            # Deactivated earlier: the auto-delete queue may have gone with its consumer.
            yield self._declare()
        config = self.full_config()
        self._draining = False
        self.consumer = yield self.exchange_manager.consume(
            self._queue,
            self._deliver,
            prefetch_count=config.get("prefetch_count", 1),
            no_ack=config.get("no_ack", False),
            arguments=config.get("consumer_arguments"),
        )

    def on_deactivate(self, *args, **kwargs):
        return self._stop_consuming(kwargs.get("exclude"))

    def on_terminate(self, *args, **kwargs):
        return self._stop_consuming(kwargs.get("exclude"))

    def on_terminate_active(self, *args, **kwargs):
        return self._stop_consuming(kwargs.get("exclude"))

    def _lifecycle_name(self):
        return self.xname

    @defer.inlineCallbacks
    def _stop_consuming(self, exclude=None):
        """Let messages in progress finish (except `exclude`), then cancel the consumer."""
        self._draining = True
        self._waiting.clear()  # unacked: requeued by the broker when the consumer is cancelled
        yield self.wait_idle(exclude)
        self.handler_failures.flush()
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            yield consumer.cancel()
            if self.full_config().get("auto_delete", True):
                self.exchange_manager.queue_deleted(self._queue)
            self._queue = None
        self.exchange_manager.store.pop(self.xname, None)

    def wait_idle(self, exclude=None):
        """A Deferred that fires when no message (other than `exclude`) is being handled."""
        busy = [m for m in self.processing_messages.values() if m is not exclude]
        if not busy:
            return defer.succeed(None)
        if self._idle is None:
            self._idle = []
        d = defer.Deferred()
        self._idle.append((exclude, d))
        return d

    def attach(self):
        """initialize + activate; fires with the messaging name."""
        d = defer.maybeDeferred(self.initialize)
        d.addCallback(lambda _: self.activate())
        d.addCallback(lambda _: self.xname)
        return d

    # --- receiving ------------------------------------------------------
    def _deliver(self, delivery):
        if self._draining:
            return  # left unacked: cancelling the consumer hands it back to the queue
        msg = Message(delivery, raw=self.raw)
        if Receiver.rec_shutoff:
            msg.ack()
            return
        if self.concurrency is None or not (self._waiting or self._pumping or self.processing_messages):
            self._start(msg)  # nothing waits or is being handled: this one goes at once
            return
        self._waiting.append(msg)
        self._pump()

    def _start(self, msg):
        self.processing_messages[id(msg)] = msg
        try:
            result = self._handle(msg)
        except Exception:  # a bug here must not stall the receiver: _done logs it
            result = defer.fail()
        if result is not None and isinstance(result, defer.Deferred):  # Deferred is an ABC: None is told apart first
            result.addBoth(self._done, msg)
        else:
            self._done(None, msg)

    def _pump(self):
        """Start waiting deliveries while under the concurrency bound; a loop, so synchronous handlers do not recurse."""
        if self._pumping:
            return  # the loop below is running further up the stack
        self._pumping = True
        try:
            while self._waiting and not self._draining and len(self.processing_messages) < self.concurrency:
                self._start(self._waiting.popleft())
        finally:
            self._pumping = False

    def _handle(self, msg):
        """Decode, check, then the handlers; None when all of it was synchronous, else a Deferred."""
        try:
            data = msg.payload  # decoded here, once: handlers get this dict
            if self.content_check is not None:
                self.content_check(data)
        except Exception as e:  # whatever the input makes the decoder raise, it is the input's fault
            reason = str(e) if isinstance(e, (WireFormatError, CodecError)) else "%s: %s" % (type(e).__name__, e)
            return self._undecodable(msg, reason)
        return self._run_handlers(data, msg, 0)

    def _run_handlers(self, data, msg, index):
        """
        The handlers from `index` on, each after the previous one finished.
        No Deferred is made unless a handler returns one (or a coroutine).
        """
        handlers = self.handlers
        while index < len(handlers):
            try:
                result = handlers[index](data, msg)
            except Exception:
                self._handler_failed(Failure(), data, msg)
                return None
            index += 1
            if result is None:  # the usual case, before the isinstance checks (Deferred is an ABC: they are slow)
                continue
            if type(result) is CoroutineType:
                result = defer.Deferred.fromCoroutine(result)
            elif isinstance(result, Failure):
                result = defer.fail(result)
            if isinstance(result, defer.Deferred):
                return result.addCallbacks(
                    lambda _: self._run_handlers(data, msg, index), self._handler_failed, errbackArgs=(data, msg)
                )
        if msg.state == Message.RECEIVED:
            log.warn("Receiver {name}: message op={op} has not been acked", name=self.xname, op=data.get("op"))
        return None

    def _handler_failed(self, failure, data, msg):
        if not failure.check(Exception):
            return failure
        self.stats["handler_failed"] += 1
        if self.handler_failures.admit():
            log.failure("Receiver {name}: handler failed on op={op}", failure, name=self.xname, op=data.get("op"))
        if msg.state == Message.RECEIVED:
            msg.reject()
        return None

    @defer.inlineCallbacks
    def _undecodable(self, msg, reason):
        """Error handlers first (they may settle the message), then reject it if they did not."""
        self.stats["undecodable"] += 1
        skipped = self._decode_warnings.allow()
        if skipped is not None:
            log.warn(
                "Receiver {name} cannot decode a message ({skipped} more since the last such warning): {reason}",
                name=self.xname,
                skipped=skipped,
                reason=reason,
            )
        for error_handler in self.error_handlers:
            try:
                yield defer.maybeDeferred(error_handler, None, msg, reason)
            except Exception:
                if self.handler_failures.admit():
                    log.failure("Receiver {name}: error handler failed", name=self.xname)
        if msg.state == Message.RECEIVED:
            msg.reject()

    def _done(self, result, msg):
        self.processing_messages.pop(id(msg), None)
        if self._waiting:
            self._pump()
        if self._idle:
            busy = list(self.processing_messages.values())
            still_waiting = []
            for exclude, d in self._idle:
                if any(m is not exclude for m in busy):
                    still_waiting.append((exclude, d))
                else:
                    d.callback(None)
            self._idle = still_waiting
        if isinstance(result, defer.Failure) and self.handler_failures.admit():
            log.failure("Receiver {name} failed handling a message", result, name=self.xname)

    # --- sending --------------------------------------------------------
    def send(self, recipient, operation, content, headers=None, sender=None, mandatory=None, delivery_mode=1, **_):
        """
        Encode the ION message and publish it to `recipient` (the routing
        key) on the process exchange (publisher_config laid over it).  Fires
        with the header map sent.  Unlike R1, a failure to send fails the
        Deferred; a recipient that cannot be a routing key fails it before
        anything is sent.
        """
        config = dict(messaging.PROCESS_EXCHANGE)
        if self.publisher_config:
            config.update(self.publisher_config)
        try:
            return self.exchange_manager.send(
                config, sender or self.xname, recipient, operation, content, headers,
                mandatory=mandatory, delivery_mode=delivery_mode,
            )
        except Exception:  # no container, or one not connected yet
            return defer.fail()


class ProcessReceiver(Receiver):
    """A process's own exclusive queue, named and bound by its id."""

    queue_factory = staticmethod(messaging.process)


class WorkerReceiver(Receiver):
    """A shared queue; consumers take turns."""

    queue_factory = staticmethod(messaging.worker)


class ServiceWorkerReceiver(WorkerReceiver):
    """A service's shared queue, `<sys_name>.<service>` by default."""

    def __init__(self, name, scope="system", **kwargs):
        super().__init__(name, scope=scope, **kwargs)


class FanoutReceiver(Receiver):
    """An anonymous exclusive queue bound with the name: every instance gets each message."""

    queue_factory = staticmethod(messaging.fanout)
