"""
Publishers and subscribers: lifecycle objects that a process owns (R1 §2).

A Publisher sends to one exchange point; a Subscriber's activation declares
its queue, binds it and starts consuming, and each message is acked after
`ondata` has finished.  Fixed from R1 (§10.2): `unsubscribe()` works, the
factory's handler is in place before consuming starts, the exchange keeps its
own flags whatever the subscriber queue's are, the exchange is declared once
and not per message, publish failures fail the Deferred, and a message that
cannot be decoded is rejected instead of stalling the consumer.
"""

from twisted.internet import defer
from twisted.logger import Logger

from ion.core import ioninit
from ion.core.messaging.receiver import Receiver, WorkerReceiver
from ion.core.messaging.messaging import Message
from ion.util.state_object import BasicLifecycleObject, BasicStates

log = Logger()
CONF = ioninit.config(__name__)

# Every events exchange is a non-durable, auto-delete topic exchange, as in R1;
# publishers and subscribers all declare it with exactly these flags.
EXCHANGE_FLAGS = {"exchange_type": "topic", "exchange_durable": False, "exchange_auto_delete": True}


def _require(value, what, who):
    if not value:
        raise AssertionError("%s needs %s" % (who, what))


class Publisher(BasicLifecycleObject):
    """Publishes messages to exchange point `xp_name` with `routing_key` (the default topic)."""

    def __init__(self, xp_name=None, routing_key=None, credentials=None, process=None, *args, **kwargs):
        super().__init__()
        who = type(self).__name__
        _require(xp_name, "an exchange point (xp_name)", who)
        _require(routing_key, "a routing_key", who)
        _require(process, "a process", who)
        self._xp_name = xp_name
        self._routing_key = routing_key
        self._credentials = credentials
        self._process = process
        self.publisher_config = dict(
            EXCHANGE_FLAGS, exchange=xp_name, mandatory=True, immediate=False, warn_if_exists=False
        )
        self._recv = Receiver(routing_key, process=process, publisher_config=self.publisher_config)

    @property
    def exchange_manager(self):
        return self._recv.exchange_manager

    def on_initialize(self, *args, **kwargs):
        return self._recv.initialize()

    @defer.inlineCallbacks
    def on_activate(self, *args, **kwargs):
        yield self._recv.activate()
        # Declared once here, not for every message as R1 did.
        yield self.exchange_manager.declare_exchange(
            self._xp_name, type="topic", durable=False, auto_delete=True
        )

    def on_deactivate(self, *args, **kwargs):
        return self._recv.deactivate()

    def on_terminate(self, *args, **kwargs):
        return self._recv.terminate()

    def on_error(self, cause=None, *args, **kwargs):
        if cause is None:
            raise RuntimeError("Illegal publisher state change")
        log.error("Publisher {xp} error: {cause!r}", xp=self._xp_name, cause=cause)

    def publish(self, data, routing_key=None, **kwargs):
        """
        Send `data` (a message instance, wrapper or any msgpack-able value).
        Fires with the message dict sent; fails if the broker refused it.
        """
        return self._recv.send(
            routing_key or self._routing_key,
            None,
            data,
            headers={"sender-name": self._process.proc_name},
            sender=self._process.id.full,
            **kwargs,
        )

    def register(self, xp_name=None, topic_name=None, publisher_name=None, credentials=None):
        """R1's optional PubSub-controller registration; there is no such service here."""
        log.info("Publisher {xp}: no PubSub controller to register with", xp=self._xp_name)
        return defer.succeed(False)


class Subscriber(BasicLifecycleObject):
    """
    Consumes from a queue bound to exchange point `xp_name` with `binding_key`.

    `queue_name=None` gives a broker-named queue of its own (every subscriber
    gets every message); subscribers sharing a queue name compete for them.
    """

    def __init__(
        self,
        xp_name=None,
        binding_key=None,
        queue_name=None,
        credentials=None,
        process=None,
        durable=False,
        auto_delete=True,
        *args,
        **kwargs
    ):
        super().__init__()
        who = type(self).__name__
        _require(xp_name, "an exchange point (xp_name)", who)
        _require(process, "a process", who)
        if queue_name is None and (durable or not auto_delete):
            log.warn("Subscriber with a durable or non-auto-delete queue but no queue_name: the flags have no use")
        self._xp_name = xp_name
        self._binding_key = binding_key
        self._queue_name = queue_name
        self._credentials = credentials
        self._process = process
        self._durable = durable
        self._auto_delete = auto_delete
        self._subscriber_id = None
        self._resource_id = None
        # The queue's flags are the subscriber's; the exchange keeps its own (R1 mixed them up).
        self.consumer_config = dict(
            EXCHANGE_FLAGS,
            exchange=xp_name,
            durable=durable,
            auto_delete=auto_delete,
            exclusive=False,
            mandatory=True,
            immediate=False,
            warn_if_exists=False,
            routing_key=binding_key,
            queue=queue_name,
        )
        self._sub_name = "%s_subscriber_recv_%d" % (process.id.full, len(process._registered_life_cycle_objects))
        self._recv = WorkerReceiver(
            self._sub_name,
            process=process,
            handler=self._receive_handler,
            error_handler=self._receive_error,
            consumer_config=self.consumer_config,
        )

    @property
    def queue(self):
        """The queue's name on the broker (the generated one for an anonymous queue)."""
        return self._recv.queue

    def on_initialize(self, *args, **kwargs):
        pass

    def on_activate(self, *args, **kwargs):
        return self.subscribe()

    def on_deactivate(self, *args, **kwargs):
        return self.unsubscribe()

    @defer.inlineCallbacks
    def on_terminate(self, *args, **kwargs):
        if self._recv.state in (BasicStates.READY, BasicStates.ACTIVE):
            yield self._recv.terminate()

    def on_error(self, cause=None, *args, **kwargs):
        if cause is None:
            raise RuntimeError("Illegal subscriber state change")
        log.error("Subscriber {key} error: {cause!r}", key=self._binding_key, cause=cause)

    @defer.inlineCallbacks
    def subscribe(self):
        """Declare the queue, bind it and start consuming."""
        if self._recv.state == BasicStates.INIT:
            yield self._recv.attach()
        elif self._recv.state == BasicStates.READY:
            yield self._recv.activate()
        return self._recv.xname

    @defer.inlineCallbacks
    def unsubscribe(self):
        """
        Stop receiving: the binding is removed, the consumer cancelled, and an
        auto-delete queue goes away with it.  `subscribe()` starts again.
        """
        if self._recv.state != BasicStates.ACTIVE:
            return
        queue = self._recv.queue
        if self._binding_key is not None and queue:
            yield self.exchange_manager.connection.queue_unbind(queue, self._xp_name, self._binding_key)
        yield self._recv.deactivate()

    @property
    def exchange_manager(self):
        return self._recv.exchange_manager

    @defer.inlineCallbacks
    def _receive_handler(self, data, msg):
        try:
            yield defer.maybeDeferred(self.ondata, data)
        finally:
            if msg.state == Message.RECEIVED:
                msg.ack()

    def _receive_error(self, data, msg, reason):
        log.warn("Subscriber {key} rejected a message: {reason}", key=self._binding_key, reason=reason)

    def ondata(self, data):
        """Called with the message dict (headers and `content`) of each message."""
        raise NotImplementedError("Subscriber.ondata: subclass it or give the factory a handler")

    def register(self):
        """R1's optional PubSub-controller registration; there is no such service here."""
        log.info("Subscriber {key}: no PubSub controller to register with", key=self._binding_key)
        return defer.succeed(False)


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
