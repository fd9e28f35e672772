"""
The container's side of the broker: declarations made once, publishing,
consuming, and the registry of messaging names the shell lists.

Everything above ion.core.messaging.broker talks to the broker through an
ExchangeManager; only it holds the connection.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ion.core import metrics
from ion.core.exception import IonError
from ion.core.messaging import envelope
from ion.core.messaging.broker.interface import BrokerError, ConnectionLost, NotFound, PreconditionFailed

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

    Exchanges are declared here only, once per connection and flag set (R1
    declared on every publish): by `declare_for` (a publisher's activation),
    `declare_queue` (a receiver's), or the first `publish` to them.  If an
    auto-delete exchange vanished meanwhile, the next publish to it declares
    it again and retries once.
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
            conv_id = envelope.unpack_body(delivery.body).get("conv-id")
        except envelope.WireFormatError:
            return
        watcher = self._return_watchers.pop(conv_id, None) if isinstance(conv_id, str) else None
        if watcher is not None:
            watcher(Unroutable(delivery.exchange, delivery.routing_key, reply_code, reply_text))

    @property
    def description(self):
        return self.connection.description

    @property
    def connected(self):
        """True while broker calls go through at once (IBrokerConnection.connected)."""
        return self.connection.connected

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

    def declare_for(self, config):
        """Declare the exchange a publisher or queue config names, with the config's flags."""
        type, durable, auto_delete = _flags(config)
        return self.declare_exchange(config["exchange"], type=type, durable=durable, auto_delete=auto_delete)

    @defer.inlineCallbacks
    def declare_queue(self, config):
        """
        Exchange, queue and binding for a consumer config; fires with the
        queue's name.  With `passive` in the config the queue must exist and
        is used as it is.
        """
        yield self.declare_for(config)
        if config.get("passive"):
            queue = yield self.connection.queue_declare(config["queue"], passive=True)
        else:
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
            yield self.declare_for(config)
            yield self.connection.queue_bind(queue, config["exchange"], config["routing_key"])
        self._bindings.setdefault(queue, set()).add(config["exchange"])

    @defer.inlineCallbacks
    def unbind(self, queue, exchange, routing_key):
        """Remove a binding made by declare_queue."""
        yield self.connection.queue_unbind(queue, exchange, routing_key)
        self._bindings.get(queue, set()).discard(exchange)
        self._forget_if_unbound(exchange)

    @defer.inlineCallbacks
    def queue_exists(self, queue):
        """True when `queue` exists on the broker (a passive declare)."""
        try:
            yield self.connection.queue_declare(queue, passive=True)
        except NotFound:
            return False
        return True

    def queue_depth(self, queue):
        """Fires with the number of messages ready in `queue`."""
        return self.connection.queue_depth(queue)

    def purge_queue(self, queue):
        """Drop the ready messages of `queue`; fires with how many."""
        return self.connection.queue_purge(queue)

    @defer.inlineCallbacks
    def delete_queue(self, queue):
        """Delete `queue` and forget its bindings; fires with the number of messages dropped."""
        dropped = yield self.connection.queue_delete(queue)
        self.queue_deleted(queue)
        return dropped

    @defer.inlineCallbacks
    def delete_exchange(self, name):
        """Delete exchange `name`; the next use declares it again."""
        yield self.connection.exchange_delete(name)
        self._exchanges.pop(name, None)

    def consume(self, queue, callback, prefetch_count=1, no_ack=False, arguments=None):
        """
        Start consuming `queue`: callback(IDelivery) for each message; fires
        with the IConsumer.  `arguments`: basic.consume's (x-stream-offset).
        """
        return self.connection.consume(queue, callback, prefetch_count=prefetch_count, no_ack=no_ack,
                                       arguments=arguments)

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

    def send(self, config, sender, recipient, operation, content, headers=None, mandatory=None, delivery_mode=1):
        """
        Encode one ION message (envelope.encode) and publish it to
        `recipient` per the exchange `config`; `mandatory` defaults to the
        config's.  Fires with the header map sent; fails without sending
        anything if the message cannot be encoded.
        """
        try:
            sealed = envelope.encode(sender, recipient, operation, content, headers, delivery_mode)
        except Exception:
            return defer.fail()
        if mandatory is None:
            mandatory = config.get("mandatory", False)
        return self.publish(config, sealed.routing_key, sealed.body, sealed.properties, mandatory).addCallback(
            lambda _: sealed.message)

    def publish(self, config, routing_key, body, properties, mandatory=False):
        """
        Publish an encoded message (an Envelope's body and properties) on the exchange `config` names.
        The hot path: no declaration once the exchange is known.
        """
        if self.stopping and not self.connection.connected:
            return defer.fail(ConnectionLost("%s is not connected and the container is stopping" % (self.description,)))
        exchange = config["exchange"]
        if self._exchanges.get(exchange) == _flags(config):
            sent = self.connection.publish(exchange, routing_key, body, properties, mandatory=mandatory)
            if sent.called and not isinstance(sent.result, Failure):
                return sent  # published already (the embedded broker): there is nothing to declare again
        else:
            sent = self.declare_for(config).addCallback(self._publish_declared, exchange, routing_key, body,
                                                        properties, mandatory)
        # A bound method and its arguments: no closures made per publish.
        return sent.addErrback(self._declare_again, config, routing_key, body, properties, mandatory)

    def _publish_declared(self, _, exchange, routing_key, body, properties, mandatory):
        return self.connection.publish(exchange, routing_key, body, properties, mandatory=mandatory)

    def _declare_again(self, failure, config, routing_key, body, properties, mandatory):
        """An auto-delete exchange went away meanwhile (NotFound): declared again, the publish sent again."""
        failure.trap(NotFound)
        exchange = config["exchange"]
        self._exchanges.pop(exchange, None)
        return self.declare_for(config).addCallback(self._publish_declared, exchange, routing_key, body, properties,
                                                    mandatory)

    def publish_raw(self, exchange, routing_key, body, properties=None, mandatory=False):
        """
        Publish a body as it is (a retry copy, a dead letter) to an exchange
        that exists already (or the default exchange, '').
        """
        return self.connection.publish(exchange, routing_key, body, properties, mandatory=mandatory)

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
