"""
The container's side of the broker: declarations made once, publishing, and
the registry of messaging names the shell lists.
"""

from twisted.internet import defer
from twisted.logger import Logger

from ion.core import metrics
from ion.core.exception import IonError
from ion.core.messaging.broker.interface import BrokerError, ConnectionLost, NotFound, PreconditionFailed
from ion.core.messaging.serialization import WireFormatError, message_properties, pack_body, unpack_body

log = Logger()


class Unroutable(IonError):
    """The broker returned a mandatory message: no queue is bound to its routing key."""

    def __init__(self, exchange, routing_key, reply_code, reply_text):
        super().__init__("no queue takes routing key %r on exchange %r (broker: %s %s)"
                         % (routing_key, exchange, reply_code, reply_text))
        self.exchange = exchange
        self.routing_key = routing_key


class ExchangeManager:
    """
    Owns the container's broker connection.

    Mandatory messages no queue takes come back from the broker.  One whose
    conversation id was watched (`watch_returns`, an RPC's request) goes to
    its watcher; the others are dropped quietly: an event nobody subscribes
    to is normal.

    Exchanges are declared once per connection and flag set (R1 declared on
    every publish).  If an auto-delete exchange vanished meanwhile, the next
    publish to it declares it again and retries once.
    """

    def __init__(self, connection):
        self.connection = connection
        self.store = {}  # messaging name -> queue config, for the shell's ms()
        self._exchanges = {}  # name -> (type, durable, auto_delete)
        self._bindings = {}  # queue (or durable companion) -> exchanges it was bound to through this manager
        self._return_watchers = {}  # conv-id -> callable(Unroutable)
        # Set while the container shuts down: then a lost broker fails sends at
        # once instead of holding the shutdown for the reconnect timeout.
        self.stopping = False
        connection.add_return_listener(self._returned)

    def watch_returns(self, conv_id, watcher):
        """Call watcher(Unroutable) if the broker returns a message of conversation `conv_id`."""
        self._return_watchers[conv_id] = watcher

    def unwatch_returns(self, conv_id):
        self._return_watchers.pop(conv_id, None)

    def _returned(self, delivery, reply_code, reply_text):
        metrics.message_returned(delivery.exchange, delivery.routing_key)
        if not self._return_watchers:
            return
        try:
            conv_id = unpack_body(delivery.body).get("conv-id")
        except WireFormatError:
            return
        watcher = self._return_watchers.pop(conv_id, None) if isinstance(conv_id, str) else None
        if watcher is not None:
            watcher(Unroutable(delivery.exchange, delivery.routing_key, reply_code, reply_text))

    @property
    def description(self):
        return self.connection.description

    @defer.inlineCallbacks
    def declare_exchange(self, name, type="topic", durable=False, auto_delete=True):
        flags = (type, bool(durable), bool(auto_delete))
        if self._exchanges.get(name) == flags:
            return
        yield self.connection.exchange_declare(name, type=type, durable=durable, auto_delete=auto_delete)
        self._exchanges[name] = flags

    @defer.inlineCallbacks
    def bind_durable_companion(self, exchange):
        """
        Declare the durable companion of topic exchange `exchange` (declared
        already, through this manager) and bind it to `exchange` with '#';
        fires with the companion's name.
        """
        companion = durable_companion(exchange)
        for last_try in (False, True):
            yield self.declare_exchange(companion, **COMPANION_FLAGS)
            try:
                yield self.connection.exchange_bind(companion, exchange, "#")
                self._bindings.setdefault(companion, set()).add(exchange)
                return companion
            except NotFound:
                if last_try:
                    raise
                # One of them was auto-deleted meanwhile: declare both again.
                self._exchanges.pop(companion, None)
                flags = self._exchanges.pop(exchange, None)
                if flags is not None:
                    yield self.declare_exchange(exchange, *flags)

    def _declare_from(self, config):
        type, durable, auto_delete = _flags(config)
        return self.declare_exchange(config["exchange"], type=type, durable=durable, auto_delete=auto_delete)

    @defer.inlineCallbacks
    def declare_queue(self, config):
        """Exchange, queue and binding for a consumer config; fires with the queue's name."""
        yield self._declare_from(config)
        queue = yield self.connection.queue_declare(
            config.get("queue") or "",
            durable=config.get("durable", False),
            exclusive=config.get("exclusive", False),
            auto_delete=config.get("auto_delete", True),
            arguments=config.get("arguments"),
        )
        if config.get("routing_key") is not None:
            yield self._bind(queue, config)
        return queue

    @defer.inlineCallbacks
    def _bind(self, queue, config):
        try:
            yield self.connection.queue_bind(queue, config["exchange"], config["routing_key"])
        except NotFound:
            # The auto-delete exchange went away between declare and bind.
            self._exchanges.pop(config["exchange"], None)
            yield self._declare_from(config)
            yield self.connection.queue_bind(queue, config["exchange"], config["routing_key"])
        self._bindings.setdefault(queue, set()).add(config["exchange"])

    @defer.inlineCallbacks
    def unbind(self, queue, exchange, routing_key):
        """Remove a binding made by declare_queue."""
        yield self.connection.queue_unbind(queue, exchange, routing_key)
        self._bindings.get(queue, set()).discard(exchange)
        self._forget_if_unbound(exchange)

    def queue_deleted(self, queue):
        """`queue` is gone (an auto-delete queue's consumer was cancelled), and its bindings with it."""
        for exchange in self._bindings.pop(queue, ()):
            self._forget_if_unbound(exchange)

    def _is_bound(self, exchange):
        return any(exchange in exchanges for exchanges in self._bindings.values())

    def _forget_if_unbound(self, exchange):
        """
        Our last binding to an auto-delete exchange went: RabbitMQ deletes it
        unless others bind it too.  The next publish declares it again rather
        than meet a 404, which would close the channel.
        """
        flags = self._exchanges.get(exchange)
        if flags is not None and flags[2] and not self._is_bound(exchange):
            del self._exchanges[exchange]
            # A durable companion takes its own binding to the exchange point with it.
            for source in self._bindings.pop(exchange, ()):
                self._forget_if_unbound(source)

    def send(self, config, routing_key, message, mandatory=False, delivery_mode=1):
        """
        Pack `message` (a header dict) and publish it per the exchange `config`.
        The hot path: no declaration once the exchange is known.
        """
        if self.stopping and not self.connection.connected:
            return defer.fail(ConnectionLost("%s is not connected and the container is stopping" % (self.description,)))
        try:
            body = pack_body(message)
        except Exception:
            return defer.fail()
        properties = message_properties(delivery_mode)
        exchange = config["exchange"]

        def publish(_=None):
            return self.connection.publish(exchange, routing_key, body, properties, mandatory=mandatory)

        def declare_again(failure):
            failure.trap(NotFound)  # an auto-delete exchange went away meanwhile
            self._exchanges.pop(exchange, None)
            return self._declare_from(config).addCallback(publish)

        if self._exchanges.get(exchange) == _flags(config):
            sent = publish()
        else:
            sent = self._declare_from(config).addCallback(publish)
        return sent.addErrback(declare_again)

    @defer.inlineCallbacks
    def close(self):
        """
        Delete the auto-delete exchanges declared here, then close the
        connection.  RabbitMQ auto-deletes an exchange only when its last
        binding goes, so one that was published to but never bound (a
        sysname's events exchange, say) would stay forever.  One whose last
        binding we removed is not in `_exchanges` any more (see
        `_forget_if_unbound`): RabbitMQ deleted it, and deleting it again
        would only draw a 404.  Exchanges others still use are left alone
        (if_unused); one deleted under another container's feet is declared
        again by it on next use.
        """
        declared, self._exchanges = self._exchanges, {}
        self.connection.remove_return_listener(self._returned)
        if not self.connection.connected:
            declared = {}  # the broker is away: do not wait for it just to tidy up
        # Newest first: a durable companion goes before the exchange its binding keeps in use.
        for name, (_type, _durable, auto_delete) in reversed(declared.items()):
            if auto_delete:
                try:
                    yield self.connection.exchange_delete(name, if_unused=True)
                except (NotFound, PreconditionFailed):
                    pass  # gone already, or still bound
                except BrokerError as e:
                    log.info("Exchange {name} not deleted: {error}", name=name, error=e)
        yield self.connection.close()


# Durable companion exchanges (see bind_durable_companion and publisher_subscriber).
COMPANION_FLAGS = {"type": "topic", "durable": True, "auto_delete": True}


def durable_companion(exchange):
    """
    The name of the durable exchange that stands beside non-durable topic
    exchange `exchange`: bound to it with '#', it gets every message routed
    there, and durable queues bind to it so that their bindings survive a
    broker restart (a binding is durable only when both its ends are).
    """
    return exchange + ".durable"


def _flags(config):
    """(type, durable, auto_delete) of the exchange a queue or publisher config names."""
    return (
        config.get("exchange_type", "topic"),
        bool(config.get("exchange_durable", False)),
        bool(config.get("exchange_auto_delete", True)),
    )
