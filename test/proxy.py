"""
A TCP proxy in front of RabbitMQ for tests: it can terminate TLS, cut its
connections, refuse new ones, or go silent like a peer that died without
closing.  It listens on an ephemeral 127.0.0.1 port.
"""

from twisted.internet import defer, reactor
from twisted.internet.ssl import PrivateCertificate
from twisted.protocols import portforward
from twisted.protocols.tls import TLSMemoryBIOFactory

from ion.core.messaging.broker.address import BrokerAddress
from test.brokers import RABBIT_URL, wait_for


class _ToBroker(portforward.ProxyClient):
    def connectionMade(self):
        self.peer.factory.proxy.open.add(self)
        if self.peer.cut:  # the client side went while we connected
            self.transport.abortConnection()
        else:
            super().connectionMade()

    def dataReceived(self, data):
        if not self.peer.factory.proxy.silent:
            super().dataReceived(data)

    def connectionLost(self, reason):
        proxy = self.peer.factory.proxy
        proxy.open.discard(self)
        if proxy.silent:
            self.peer = None  # a silent proxy does not pass the close on either
        super().connectionLost(reason)


class _ToBrokerFactory(portforward.ProxyClientFactory):
    protocol = _ToBroker
    noisy = False


class _FromClient(portforward.ProxyServer):
    clientProtocolFactory = _ToBrokerFactory
    cut = False

    def connectionMade(self):
        proxy = self.factory.proxy
        proxy.attempts += 1
        proxy.open.add(self)
        if proxy.refusing:
            self.transport.abortConnection()
        else:
            super().connectionMade()

    def dataReceived(self, data):
        if not self.factory.proxy.silent:
            super().dataReceived(data)

    def connectionLost(self, reason):
        self.cut = True
        self.factory.proxy.open.discard(self)
        super().connectionLost(reason)


class TcpProxy:
    """
    `cut()` aborts every client connection; while `refusing`, new
    connections are aborted as soon as they are accepted; while `silent`, it
    drops every byte.  With a certificate and key it terminates TLS.
    """

    def __init__(self, target=None, cert_file=None, key_file=None):
        target = target or BrokerAddress.from_url(RABBIT_URL)
        factory = portforward.ProxyFactory(target.host, target.port)
        factory.protocol = _FromClient
        factory.proxy = self
        factory.noisy = False
        if cert_file:
            with open(cert_file, "rb") as c, open(key_file, "rb") as k:
                options = PrivateCertificate.loadPEM(c.read() + k.read()).options()
            factory = TLSMemoryBIOFactory(options, False, factory)
        self.refusing = False
        self.silent = False
        self.attempts = 0  # connections accepted, refused ones included
        self.open = set()  # protocols of both sides still connected
        self._listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self._listening.getHost().port

    def url(self, query=""):
        """An amqp:// URL to RabbitMQ through this proxy."""
        a = BrokerAddress.from_url(RABBIT_URL)
        return "amqp://%s:%s@127.0.0.1:%d/%s%s" % (a.username, a.password, self.port, "%2F", query)

    def clients(self):
        return [p for p in self.open if isinstance(p, _FromClient)]

    def cut(self):
        """Abort every client connection (the broker side closes with it); returns how many were cut."""
        clients = self.clients()
        for protocol in clients:
            protocol.transport.abortConnection()
        return len(clients)

    @defer.inlineCallbacks
    def stop(self):
        yield self._listening.stopListening()
        for protocol in list(self.open):
            protocol.transport.abortConnection()
        yield wait_for(lambda: not self.open, timeout=10)
