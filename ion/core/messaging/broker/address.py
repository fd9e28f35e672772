"""
Where the broker is, parsed once from a URL or the container's twistd options.

A `BrokerAddress` is immutable and never reveals its password: str(), repr()
and `description` are credential-free, and parse errors name the bad value
with the password masked, so an address can be logged freely.

An amqp address may name several nodes of one RabbitMQ cluster (`nodes`):
the connection tries them in order, or shuffled (`node_order`), and moves to
the next one whenever a connection attempt fails or a connection is lost
(see broker/nodes.py).  They share credentials, vhost and settings.
"""

import dataclasses
import os
import stat
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from twisted.logger import Logger

log = Logger()

# Seconds between AMQP heartbeats.  A silent broker is noticed within 2 of them (see amqp_protocol):
# 45-53 s at 30 s.  Not less, because a container's reactor may be busy for seconds (a slow handler, a
# GC pause, a loaded machine) with nothing wrong with the broker; RabbitMQ's own default is 60 s.
DEFAULT_HEARTBEAT = 30
DEFAULT_RECONNECT_TIMEOUT = 30
# Unconfirmed publishes per connection before publish() calls wait.  1000 keeps RabbitMQ's confirm
# pipeline full (on localhost throughput stops growing past a few hundred; see bench/bench_backpressure.py)
# while bounding what a publisher that never waits holds in the broker connection, and what is sent
# again after a reconnect, to 1000 messages.
DEFAULT_MAX_IN_FLIGHT = 1000
_SCHEMES = {"amqp": 5672, "amqps": 5671}
_TLS_KEYS = {"cafile", "certfile", "keyfile", "server_name"}
# In which order the nodes of a cluster address are tried: as listed, or shuffled (each container its own
# order, so a restarted cluster's clients spread over its nodes).
NODE_ORDERS = ("in_order", "shuffle")
# Seconds a TCP connect may take: one node of several that does not answer at all (powered off, cut off)
# is passed over for the next after NODE_CONNECT_TIMEOUT, a lone broker is waited for longer.
CONNECT_TIMEOUT = 30
NODE_CONNECT_TIMEOUT = 10


@dataclass(frozen=True)
class BrokerAddress:
    """
    kind is 'memory' (the embedded broker named `memory_name`) or 'amqp'.
    For 'amqp', `tls` selects amqps; `endpoint_string`, when set, is a raw
    Twisted client endpoint description used instead of host/port/TLS.
    `nodes` is every (host, port) of a cluster; when given, its first sets
    `host` and `port` (given only host and port, they are the one node).
    """

    kind: str = "amqp"
    memory_name: str = "default"
    host: str = "localhost"
    port: int = 5672
    vhost: str = "/"
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    heartbeat: int = DEFAULT_HEARTBEAT
    tls: bool = False
    ca_file: str = None
    cert_file: str = None
    key_file: str = None
    server_name: str = None
    endpoint_string: str = None
    confirms: bool = True  # wait for RabbitMQ's publisher confirm on every publish
    # Seconds a call made while the connection is down waits for the reconnect before failing (0: fails at once).
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT
    # Publishes written and not yet confirmed before further publishes wait (see amqp.AMQPConnection).
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    nodes: tuple = ()
    node_order: str = "in_order"

    def __post_init__(self):
        if self.kind not in ("memory", "amqp"):
            raise ValueError("unknown broker kind %r (expected 'memory' or 'amqp')" % (self.kind,))
        nodes = tuple((host, _port(port)) for host, port in self.nodes) or ((self.host, _port(self.port)),)
        if any(not host for host, _ in nodes) and not self.endpoint_string:
            raise ValueError("broker host is empty")
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "host", nodes[0][0])
        object.__setattr__(self, "port", nodes[0][1])
        object.__setattr__(self, "node_order", parse_node_order(self.node_order))
        object.__setattr__(self, "heartbeat", _heartbeat(self.heartbeat))
        object.__setattr__(self, "reconnect_timeout", parse_reconnect_timeout(self.reconnect_timeout))
        object.__setattr__(self, "max_in_flight", parse_max_in_flight(self.max_in_flight))
        if self.kind == "amqp" and not self.endpoint_string and not self.host:
            raise ValueError("broker host is empty")

    # -- constructors -------------------------------------------------------

    @classmethod
    def from_url(cls, url):
        """
        Accepted forms:

          memory | memory://NAME              the embedded broker (NAME default 'default')
          amqp://USER:PASS@HOST:PORT/VHOST?heartbeat=N&confirms=0&reconnect_timeout=S&max_in_flight=N
          amqp://USER:PASS@HOST1:PORT1,HOST2:PORT2,.../VHOST?node_order=in_order|shuffle
          amqps://...?cafile=F&certfile=F&keyfile=F&server_name=NAME&heartbeat=N
          endpoint:DESCRIPTION?vhost=V&username=U&password=P&heartbeat=N

        The VHOST is URL-quoted ('%2F' is '/'); no path or a bare '/' means
        '/'.  USER/PASS default to guest/guest, PORT to 5672 (amqps: 5671);
        a cluster's nodes are listed comma-separated, each with its own
        optional port ('[::1]:5672' for an IPv6 address).
        amqps verifies the server certificate against `cafile` (else the
        platform's trust store) and its hostname against `server_name`
        (default HOST).  `endpoint:` takes any Twisted client endpoint
        description, e.g. 'endpoint:tcp:host=10.0.0.5:port=5672' or
        'endpoint:tls:host=broker:port=5671:trustRoots=/etc/ca'.
        heartbeat, confirms, reconnect_timeout and max_in_flight are accepted by every amqp form.
        """
        if url == "memory":
            return cls(kind="memory")
        if url.startswith("memory://"):
            return cls(kind="memory", memory_name=url[len("memory://"):] or "default")
        if url.startswith("endpoint:"):
            return cls._from_endpoint_url(url)
        return cls._from_amqp_url(url)

    @classmethod
    def _from_amqp_url(cls, url):
        shown = _redact(url)
        try:
            parts = urlsplit(url)
        except ValueError as e:
            raise ValueError("invalid broker URL %s: %s" % (shown, e)) from None
        if parts.scheme not in _SCHEMES:
            raise ValueError("invalid broker URL %s: scheme must be amqp, amqps, memory or endpoint" % shown)
        tls = parts.scheme == "amqps"
        hosts = parts.netloc.rpartition("@")[2]
        nodes = _parse_nodes(hosts, _SCHEMES[parts.scheme], "invalid broker URL %s" % shown)
        allowed = {"heartbeat", "confirms", "reconnect_timeout", "max_in_flight", "node_order"}
        settings = _query(parts.query, shown, allowed | (_TLS_KEYS if tls else set()))
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        try:
            node_order = parse_node_order(settings.get("node_order", "in_order"))
        except ValueError as e:
            raise ValueError("invalid broker URL %s: %s" % (shown, e)) from None
        return cls(
            kind="amqp",
            nodes=nodes,
            node_order=node_order,
            vhost=vhost,
            username=unquote(parts.username) if parts.username is not None else "guest",
            password=unquote(parts.password) if parts.password is not None else "guest",
            heartbeat=settings.get("heartbeat", DEFAULT_HEARTBEAT),
            tls=tls,
            ca_file=settings.get("cafile"),
            cert_file=settings.get("certfile"),
            key_file=settings.get("keyfile"),
            server_name=settings.get("server_name"),
            confirms=_flag(settings.get("confirms", "1"), "confirms", shown),
            reconnect_timeout=settings.get("reconnect_timeout", DEFAULT_RECONNECT_TIMEOUT),
            max_in_flight=settings.get("max_in_flight", DEFAULT_MAX_IN_FLIGHT),
        )

    @classmethod
    def _from_endpoint_url(cls, url):
        description, _, query = url[len("endpoint:"):].partition("?")
        if not description:
            raise ValueError("invalid broker URL %s: empty endpoint description" % _redact(url))
        settings = _query(query, _redact(url), {"vhost", "username", "password", "heartbeat", "confirms",
                                                "reconnect_timeout", "max_in_flight"})
        return cls(
            kind="amqp",
            vhost=settings.get("vhost", "/"),
            username=settings.get("username", "guest"),
            password=settings.get("password", "guest"),
            heartbeat=settings.get("heartbeat", DEFAULT_HEARTBEAT),
            endpoint_string=description,
            confirms=_flag(settings.get("confirms", "1"), "confirms", _redact(url)),
            reconnect_timeout=settings.get("reconnect_timeout", DEFAULT_RECONNECT_TIMEOUT),
            max_in_flight=settings.get("max_in_flight", DEFAULT_MAX_IN_FLIGHT),
        )

    @classmethod
    def from_options(cls, host="localhost", port=5672, vhost="/", username="guest", password="guest",
                     credfile=None, heartbeat=DEFAULT_HEARTBEAT, url=None, confirms=True,
                     reconnect_timeout=DEFAULT_RECONNECT_TIMEOUT, max_in_flight=DEFAULT_MAX_IN_FLIGHT,
                     node_order="in_order"):
        """
        From the container's --broker_* options.  `url` wins when given;
        otherwise `credfile` (a file holding 'username password') overrides
        username/password.  `host` may list a cluster's nodes, comma-separated,
        each HOST or HOST:PORT (`port` for those without one).
        """
        if url:
            return cls.from_url(url)
        if credfile:
            username, password = read_credfile(credfile)
        nodes = _parse_nodes(host, port, "invalid broker host list %r" % (host,)) if host and "," in host else ()
        return cls(kind="amqp", host=host, port=port, vhost=vhost, username=username, password=password,
                   heartbeat=heartbeat, confirms=confirms, reconnect_timeout=reconnect_timeout,
                   max_in_flight=max_in_flight, nodes=nodes, node_order=node_order)

    def with_nodes(self, other):
        """
        This address with the nodes of `other` added after its own (the
        --broker option given again); everything else must be the same.
        """
        if self.kind != "amqp" or other.kind != "amqp" or self.endpoint_string or other.endpoint_string:
            raise ValueError("only amqp:// and amqps:// broker URLs can be combined into one cluster, not %s and %s"
                             % (self.description, other.description))
        mine = dataclasses.replace(self, nodes=other.nodes, node_order=other.node_order)
        if mine != other:
            differing = [f.name for f in dataclasses.fields(self) if getattr(mine, f.name) != getattr(other, f.name)]
            raise ValueError("broker URLs %s and %s name one cluster but differ in %s"
                             % (self.description, other.description, ", ".join(differing)))
        order = self.node_order if other.node_order == "in_order" else other.node_order
        return dataclasses.replace(self, nodes=self.nodes + other.nodes, node_order=order)

    # -- presentation -------------------------------------------------------

    @property
    def description(self):
        """Credential-free, e.g. 'amqp://127.0.0.1:5672/%2F' or "embedded broker 'default'"."""
        if self.kind == "memory":
            return "embedded broker %r" % self.memory_name
        if self.endpoint_string:
            return "amqp via endpoint %s vhost %s" % (self.endpoint_string, self.vhost)
        hosts = ",".join(node_name(host, port) for host, port in self.nodes)
        shown = "%s://%s/%s" % ("amqps" if self.tls else "amqp", hosts, quote(self.vhost, safe=""))
        return shown + ("?node_order=shuffle" if self.node_order == "shuffle" else "")

    def __str__(self):
        return self.description

    # -- connecting ---------------------------------------------------------

    def endpoint(self, reactor):
        """The Twisted client endpoint to reach the (first) node; see node_endpoints."""
        return self.node_endpoints(reactor)[0][1]

    def node_endpoints(self, reactor):
        """
        [(name 'host:port', client endpoint)] for each node, in the order
        listed.  Plain AMQP uses HostnameEndpoint (IPv4 and IPv6,
        non-blocking name lookup); amqps wraps it in TLS that verifies the
        certificate chain and the node's hostname.
        """
        from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS

        if self.kind != "amqp":
            raise ValueError("%s has no network endpoint" % self.description)
        if self.endpoint_string:
            return [(self.endpoint_string, clientFromString(reactor, self.endpoint_string))]
        endpoints = []
        timeout = CONNECT_TIMEOUT if len(self.nodes) == 1 else NODE_CONNECT_TIMEOUT
        for host, port in self.nodes:
            tcp = HostnameEndpoint(reactor, host, port, timeout=timeout)
            endpoints.append((node_name(host, port), wrapClientTLS(self.tls_options(host), tcp) if self.tls else tcp))
        return endpoints

    def tls_options(self, host=None):
        """IOpenSSLClientConnectionCreator for amqps to `host` (the first node); reads the CA/cert/key files now."""
        from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS, trustRootFromCertificates

        trust_root = None
        if self.ca_file:
            blocks = _pem_blocks(_read(self.ca_file, "CA file"), b"CERTIFICATE")
            if not blocks:
                raise ValueError("CA file %s holds no PEM certificate" % self.ca_file)
            trust_root = trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
        client_certificate = None
        if self.cert_file:
            pem = _read(self.cert_file, "client certificate file")
            if self.key_file:
                pem += b"\n" + _read(self.key_file, "client key file")
            try:
                client_certificate = PrivateCertificate.loadPEM(pem)
            except Exception as e:
                raise ValueError("cannot load client certificate %s / key %s: %s" % (self.cert_file, self.key_file, e)) from None
        return optionsForClientTLS(self.server_name or host or self.host, trustRoot=trust_root, clientCertificate=client_certificate)


def read_credfile(path):
    """(username, password) from a file holding 'username password'; warns when others may read it."""
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            words = f.read().split()
    except OSError as e:
        raise ValueError("broker credential file %s: cannot read it (%s)" % (path, e.strerror)) from None
    except UnicodeDecodeError:
        raise ValueError("broker credential file %s: not UTF-8 text" % path) from None
    if len(words) != 2:
        raise ValueError("broker credential file %s: expected 'username password' separated by whitespace, found %d words"
                         % (path, len(words)))
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warn("broker credential file {path} is readable by group/others (mode {mode:o}); chmod 600 it",
                 path=path, mode=stat.S_IMODE(mode))
    return words[0], words[1]


def node_name(host, port):
    """'host:port', with an IPv6 address in brackets."""
    return "%s:%d" % ("[%s]" % host if ":" in host else host, port)


def parse_node_order(value):
    """'in_order' or 'shuffle'; raises ValueError naming the bad value."""
    if value not in NODE_ORDERS:
        raise ValueError("invalid broker node_order %r: expected %s" % (value, " or ".join(NODE_ORDERS)))
    return value


def _parse_nodes(text, default_port, where):
    """
    ((host, port), ...) from 'HOST[:PORT],HOST[:PORT],...' ('[v6]:PORT' for
    IPv6); ValueError starting with `where` and naming the bad node.
    """
    if not text:
        return (("localhost", default_port),)
    nodes = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError("%s: empty node in %r" % (where, text))
        host, port = item, default_port
        if item.startswith("["):
            close = item.find("]")
            rest = item[close + 1:]
            if close == -1 or (rest and not rest.startswith(":")):
                raise ValueError("%s: bad node %r" % (where, item))
            host, port = item[1:close], rest[1:] or default_port
        elif item.count(":") == 1:
            host, port = item.split(":")
            port = port or default_port
        elif ":" in item:
            raise ValueError("%s: bad node %r (an IPv6 address goes in brackets)" % (where, item))
        try:
            port = _port(port)
        except ValueError:
            raise ValueError("%s: bad port %r in node %r (must be 1..65535)" % (where, port, item)) from None
        if not host:
            raise ValueError("%s: no host in node %r" % (where, item))
        nodes.append((unquote(host), port))
    return tuple(nodes)


def _port(value):
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError("invalid broker port %r: not an integer" % (value,)) from None
    if not 0 < port < 65536:
        raise ValueError("invalid broker port %r: must be 1..65535" % (value,))
    return port


def _heartbeat(value):
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise ValueError("invalid broker heartbeat %r: not an integer number of seconds" % (value,)) from None
    if not 0 <= seconds < 65536:
        raise ValueError("invalid broker heartbeat %r: must be 0 (off) .. 65535 seconds" % (value,))
    return seconds


def parse_reconnect_timeout(value):
    """Seconds as a non-negative number; raises ValueError naming the bad value."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("invalid broker reconnect_timeout %r: not a number of seconds" % (value,)) from None
    if not 0 <= seconds < float("inf"):
        raise ValueError("invalid broker reconnect_timeout %r: must be 0 (fail at once) or more" % (value,))
    return seconds


def parse_max_in_flight(value):
    """A whole number of publishes, at least 1; raises ValueError naming the bad value."""
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError("invalid broker max_in_flight %r: not a whole number of publishes" % (value,)) from None
    if count < 1:
        raise ValueError("invalid broker max_in_flight %r: must be 1 or more" % (value,))
    return count


def _flag(value, name, shown_url):
    """A yes/no URL setting: 1/0, true/false, yes/no, on/off."""
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("invalid broker URL %s: %s=%r is not a yes/no value" % (shown_url, name, value))


def _query(query, shown_url, allowed):
    settings = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError("invalid broker URL %s: unknown setting(s) %s (allowed: %s)"
                         % (shown_url, ", ".join(unknown), ", ".join(sorted(allowed))))
    return settings


def _redact(url):
    """The URL with any password replaced by '***'."""
    scheme, sep, rest = url.partition("://")
    if sep:
        userinfo, at, hostpart = rest.rpartition("@")
        if at and ":" in userinfo:
            return "%s://%s:***@%s" % (scheme, userinfo.split(":", 1)[0], hostpart)
    if "password=" in url:
        head, _, tail = url.partition("password=")
        return head + "password=***" + ("&" + tail.split("&", 1)[1] if "&" in tail else "")
    return url


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError("cannot read %s %s (%s)" % (what, path, e.strerror)) from None


def _pem_blocks(data, label):
    """Each '-----BEGIN <label>-----' block in `data`, for CA bundles holding several certificates."""
    begin, end = b"-----BEGIN %s-----" % label, b"-----END %s-----" % label
    blocks = []
    start = data.find(begin)
    while start != -1:
        stop = data.find(end, start)
        if stop == -1:
            break
        blocks.append(data[start:stop + len(end)])
        start = data.find(begin, stop)
    return blocks
