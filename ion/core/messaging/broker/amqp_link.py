"""
Keeping an AMQPConnection's TCP connection up: connect and log in (with
handshake timeouts), declare everything again and resume consumers on each
new connection, notice it lost, and shut down; it moves the ConnectionState
through its transitions (see amqp_states).
"""

from random import random

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from txamqp.client import Closed, TwistedEvent
from txamqp.message import Message

from ion.core import metrics
from ion.core.messaging.broker.amqp_errors import reason_text
from ion.core.messaging.broker.amqp_protocol import Client, Delegate, load_spec
from ion.core.messaging.broker.interface import BrokerError, ConnectionLost
from ion.core.messaging.broker.nodes import NodeRotation

log = Logger()

# A peer that takes the TCP connection but does not speak AMQP (wrong port, a proxy with nothing
# behind it, a hung broker) is given up on after HANDSHAKE_TIMEOUT s; after HANDSHAKE_NOTICE s the log
# says which handshake step is awaited.  A broker answers the whole handshake in milliseconds.
HANDSHAKE_TIMEOUT = 10
HANDSHAKE_NOTICE = 3
CLOSE_TIMEOUT = 5
# Waits between connection attempts: 0.375 s, growing by half each time up to 3 s, plus up to 0.5 s
# of jitter, so a restarted broker is back in use within about 4 s and containers do not reconnect in step.
RECONNECT_POLICY = backoffPolicy(initialDelay=0.25, maxDelay=3.0, jitter=lambda: random() / 2)


class Link:
    """
    A `ClientService` keeps one txamqp connection up, reconnecting with
    backoff (waits on `clock`).  Each new connection logs in, opens the
    shared channel, replays the topology and resumes the consumers; only
    then is the state READY.  The first connection must succeed (`start`).
    `owner` is what the txamqp Delegate reports to.  A cluster address's
    nodes are taken in turn (`NodeRotation`): each attempt after a failure
    or a loss goes to the next one; `node` is the one connected to.
    """

    def __init__(self, owner, state, pipeline, consumers, topology, address, reactor, clock):
        self.description = address.description
        self._state = state
        self._pipeline = pipeline
        self._consumers = consumers
        self._topology = topology
        self._address = address
        self._clock = clock
        spec = load_spec()
        factory = Factory.forProtocol(lambda: Client(Delegate(owner), address.vhost, spec, address.heartbeat, clock))
        factory.noisy = False
        # prepareConnection only starts the AMQP handshake: ClientService cannot take a connection
        # lost while it is being prepared (no transition for it), so _setup drops a connection it
        # cannot use, and ClientService connects again.
        self.nodes = NodeRotation(address.node_endpoints(reactor), address.node_order)
        self.node = None
        self.service = ClientService(self.nodes, factory, retryPolicy=RECONNECT_POLICY, clock=clock,
                                     prepareConnection=self._connection_made)
        self._first = None  # Deferred of the first connection attempt
        self._closed = TwistedEvent()

    @defer.inlineCallbacks
    def start(self):
        """Connect for the first time, trying each node once; fails (and gives up: CLOSED) if none works."""
        self._first = defer.Deferred()
        self.service.startService()
        self.service.whenConnected(failAfterFailures=len(self._address.nodes)).addErrback(self._first_failed)
        try:
            yield self._first
        except BaseException:
            yield self.service.stopService()
            self._state.to("failed")
            raise
        finally:
            self._first = None

    def _first_failed(self, failure):
        if failure.check(defer.CancelledError):
            return
        error = ConnectionLost("cannot connect to %s: %s" % (self.description, reason_text(failure)))
        # Later: ClientService is in the middle of a transition and cannot be stopped from inside it.
        self._clock.callLater(0, lambda: self._first is None or self._first.called or self._first.errback(error))

    def _connection_made(self, proxy):
        """A new TCP connection: set it up on its own (see __init__); ClientService has nothing to wait for."""
        self.node = self.nodes.current
        self._setup(proxy.delegate.client)

    @defer.inlineCallbacks
    def _setup(self, client):
        """Log in on a new TCP connection, declare everything again and resume consumers; then READY."""
        state = self._state
        state.client = client
        self._pipeline.connected()
        try:
            yield self._login(client)
            yield self._pipeline.ops_channel()
            yield self._topology.replay(self._pipeline.ops_channel, self.description)
            resumed = yield self._consumers.resume()
        except Exception as e:
            self._setup_failed(client, e)
            return
        if state.closing:
            return  # close() is dropping this connection
        if state.lost_at is None:
            log.info("connected to {conn} (node {node})", conn=self.description, node=self.node)
        else:
            log.info("reconnected to {conn} (node {node}) after {seconds:.1f} s; resumed {count} consumers",
                     conn=self.description, node=self.node, seconds=self._clock.seconds() - state.lost_at,
                     count=resumed)
            state.lost_at = None
            metrics.broker_reconnects.inc()
        state.to("ready")
        if self._first is not None:
            self._first.callback(None)
        self._pipeline.ready()

    def _setup_failed(self, client, e):
        if self._first is not None and not self._first.called:
            self._first.errback(e if isinstance(e, BrokerError) else
                                ConnectionLost("cannot connect to %s: %s" % (self.description, reason_text(e))))
        elif isinstance(e, BrokerError):
            if not self._state.closing:
                log.warn("{e}; retrying", e=e)
        else:  # a bug: show where
            log.failure("setting up the connection to {conn} failed; retrying", conn=self.description)
        client.transport.abortConnection()

    @defer.inlineCallbacks
    def _login(self, client):
        address, clock = self._address, self._clock
        peer = _peer_of(client, self.description)
        login = client.authenticate(address.username, address.password, mechanism="PLAIN")
        login.addTimeout(HANDSHAKE_TIMEOUT, clock)
        notice = clock.callLater(
            HANDSHAKE_NOTICE, lambda: log.info("{conn}: connected to {peer}, still waiting for AMQP {step} after {s} s"
                                               " (giving up after {limit} s)", conn=self.description, peer=peer,
                                               step=client.waiting_for, s=HANDSHAKE_NOTICE, limit=HANDSHAKE_TIMEOUT))
        try:
            yield login
        except Exception as e:
            if isinstance(e, defer.TimeoutError):
                raise ConnectionLost("no AMQP %s from %s within %d s (is it an AMQP 0-9-1 broker?)"
                                     % (client.waiting_for, peer, HANDSHAKE_TIMEOUT)) from None
            if isinstance(e, Closed) and e.args and isinstance(e.args[0], Message):  # the broker said no
                raise BrokerError("%s refused to open as %r: %s" % (self.description, address.username,
                                                                    reason_text(e))) from None
            raise ConnectionLost("cannot connect to %s: %s" % (self.description, reason_text(e))) from None
        finally:
            if notice.active():
                notice.cancel()

    def lost(self, client, reason):
        """The TCP connection `client` is gone: READY becomes RECONNECTING; calls wait for the next one."""
        state = self._state
        if client is not state.client:
            return
        state.client = None
        self._consumers.lost()
        if state.ready:
            state.to("lost")
            log.warn("connection to {conn} (node {node}) lost: {why}; reconnecting", conn=self.description,
                     node=self.node, why=reason_text(reason))
        self._pipeline.lost()

    def close(self):
        """Stop consumers, close the connection and stop reconnecting; calls still waiting fail."""
        if not self._state.closing:
            logged_in = self._state.client if self._state.ready else None
            self._state.to("close")
            self._shutdown(logged_in).addErrback(lambda f: log.failure("closing {conn}", f, conn=self.description))
        return self._closed.wait().addCallback(lambda _: None)

    @defer.inlineCallbacks
    def _shutdown(self, logged_in):
        """CLOSING to CLOSED; `logged_in` is the client of the READY connection, if there was one."""
        state, clock = self._state, self._clock
        try:
            self._pipeline.closing()  # waiting publishes and calls fail
            if logged_in is not None:
                yield self._consumers.cancel_all()
            if logged_in is not None and state.client is logged_in:
                closing = logged_in.channel_now(0).connection_close(reply_code=200, reply_text="Goodbye",
                                                                   class_id=0, method_id=0)
                closing.addTimeout(CLOSE_TIMEOUT, clock)
                try:
                    yield closing
                except Exception as e:
                    log.debug("connection.close on {conn}: {e}", conn=self.description, e=e)
            self._consumers.stop_all()
            abort_later = None
            client = state.client
            if client is not None:  # a broker that stopped reading must not keep us waiting
                client.transport.loseConnection()
                abort_later = clock.callLater(CLOSE_TIMEOUT, client.transport.abortConnection)
            yield self.service.stopService()
            if abort_later is not None and abort_later.active():
                abort_later.cancel()
        finally:
            state.to("closed")
            # Not from inside ClientService's state transition, which may have resumed us: whoever
            # waits for close() must be free to call it.
            clock.callLater(0, self._closed.fire)


def _peer_of(client, fallback):
    """'host:port' of the other end of a client's transport, for messages about the handshake."""
    try:
        peer = client.transport.getPeer()
        return "%s:%d" % (peer.host, peer.port)
    except (AttributeError, TypeError):
        return fallback
