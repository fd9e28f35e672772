"""BrokerAddress: URL and option parsing, credential files, and keeping the password out of sight."""

import dataclasses
import datetime
import ipaddress
import os
import stat

from twisted.internet import defer, reactor
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.logger import Logger
from twisted.trial import unittest

from ion.core.messaging.broker import address as address_module
from ion.core.messaging.broker.address import BrokerAddress

SECRET = "s3cr3t-p@ss"


def make_certificates(directory, hostname="localhost"):
    """
    A fresh CA and a server certificate it signs for `hostname` and 127.0.0.1,
    written as PEM files into `directory`; returns their paths as a dict
    (ca, server_cert, server_key).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, public_key, signing_key, ca, extensions=()):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    def name(common_name):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build(name("ion test CA"), name("ion test CA"), ca_key.public_key(), ca_key, True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names = x509.SubjectAlternativeName([x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server_cert = build(name(hostname), ca_cert.subject, server_key.public_key(), ca_key, False, [alt_names])

    paths = {name_: os.path.join(directory, name_ + ".pem") for name_ in ("ca", "server_cert", "server_key")}
    pem = serialization.Encoding.PEM
    key_format = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8,
                      encryption_algorithm=serialization.NoEncryption())
    for path, data in ((paths["ca"], ca_cert.public_bytes(pem)), (paths["server_cert"], server_cert.public_bytes(pem)),
                       (paths["server_key"], server_key.private_bytes(**key_format))):
        with open(path, "wb") as f:
            f.write(data)
    return paths


class FromURLTest(unittest.TestCase):
    def test_memory(self):
        self.assertEqual(BrokerAddress.from_url("memory").kind, "memory")
        self.assertEqual(BrokerAddress.from_url("memory").memory_name, "default")
        self.assertEqual(BrokerAddress.from_url("memory://").memory_name, "default")
        self.assertEqual(BrokerAddress.from_url("memory://other").memory_name, "other")
        self.assertEqual(str(BrokerAddress.from_url("memory://other")), "embedded broker 'other'")

    def test_full_amqp_url(self):
        a = BrokerAddress.from_url("amqp://ion:%s@broker.example:5673/ion%%2Fdev?heartbeat=10" % SECRET.replace("@", "%40"))
        self.assertEqual((a.kind, a.host, a.port, a.vhost, a.username, a.password, a.heartbeat, a.tls),
                         ("amqp", "broker.example", 5673, "ion/dev", "ion", SECRET, 10, False))
        self.assertEqual(a.description, "amqp://broker.example:5673/ion%2Fdev")

    def test_defaults(self):
        a = BrokerAddress.from_url("amqp://127.0.0.1")
        self.assertEqual((a.port, a.vhost, a.username, a.password, a.heartbeat), (5672, "/", "guest", "guest", 30))
        self.assertEqual(BrokerAddress.from_url("amqp://127.0.0.1/").vhost, "/")
        self.assertEqual(BrokerAddress.from_url("amqp://127.0.0.1/%2F").vhost, "/")
        self.assertEqual(str(BrokerAddress.from_url("amqp://127.0.0.1/%2F")), "amqp://127.0.0.1:5672/%2F")

    def test_ipv6_host(self):
        a = BrokerAddress.from_url("amqp://[::1]:5672/")
        self.assertEqual(a.host, "::1")
        self.assertEqual(a.description, "amqp://[::1]:5672/%2F")

    def test_amqps(self):
        a = BrokerAddress.from_url("amqps://u:p@broker/?cafile=/etc/ca.pem&certfile=/c.pem&keyfile=/k.pem&server_name=mq")
        self.assertEqual((a.tls, a.port, a.ca_file, a.cert_file, a.key_file, a.server_name),
                         (True, 5671, "/etc/ca.pem", "/c.pem", "/k.pem", "mq"))
        self.assertEqual(a.description, "amqps://broker:5671/%2F")

    def test_endpoint_form(self):
        a = BrokerAddress.from_url("endpoint:tcp:host=10.0.0.5:port=5999?vhost=ion&username=u&password=%s&heartbeat=5" % SECRET)
        self.assertEqual((a.endpoint_string, a.vhost, a.username, a.password, a.heartbeat),
                         ("tcp:host=10.0.0.5:port=5999", "ion", "u", SECRET, 5))
        self.assertIsInstance(a.endpoint(reactor), TCP4ClientEndpoint)
        self.assertNotIn(SECRET, str(a))

    def assertRejected(self, url, *fragments):
        with self.assertRaises(ValueError) as caught:
            BrokerAddress.from_url(url)
        message = str(caught.exception)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertNotIn(SECRET, message)
        return message

    def test_bad_scheme(self):
        self.assertRejected("http://u:%s@host/" % SECRET, "scheme", "http://u:***@host/")

    def test_bad_port(self):
        self.assertRejected("amqp://u:%s@host:abc/" % SECRET, "port", "host:abc")
        self.assertRejected("amqp://host:70000/", "port", "70000")
        self.assertRejected("amqp://host:0/", "port", "0")

    def test_bad_heartbeat(self):
        self.assertRejected("amqp://host/?heartbeat=soon", "heartbeat", "soon")
        self.assertRejected("amqp://host/?heartbeat=-1", "heartbeat", "-1")
        self.assertRejected("amqp://host/?heartbeat=70000", "heartbeat", "70000")

    def test_unknown_setting(self):
        self.assertRejected("amqp://host/?heartbaet=3", "heartbaet")
        self.assertRejected("amqp://host/?cafile=/x", "cafile")  # TLS settings need amqps
        self.assertRejected("endpoint:tcp:host=h:port=1?password=%s&colour=blue" % SECRET, "colour", "password=***")

    def test_password_hidden(self):
        a = BrokerAddress.from_url("amqp://ion:%s@h/" % SECRET.replace("@", "%40"))
        self.assertEqual(a.password, SECRET)
        for text in (str(a), repr(a), a.description):
            self.assertNotIn(SECRET, text)


class FromOptionsTest(unittest.TestCase):
    def setUp(self):
        self.events = []
        self.patch(address_module, "log", Logger(observer=self.events.append))

    def credfile(self, text, mode=0o600):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_defaults_and_types(self):
        a = BrokerAddress.from_options(host="mq", port="5673", vhost="ion", heartbeat="12")
        self.assertEqual((a.kind, a.host, a.port, a.vhost, a.username, a.heartbeat), ("amqp", "mq", 5673, "ion", "guest", 12))
        self.assertEqual(BrokerAddress.from_options().description, "amqp://localhost:5672/%2F")

    def test_url_wins(self):
        a = BrokerAddress.from_options(host="ignored", port=1, url="memory://x")
        self.assertEqual((a.kind, a.memory_name), ("memory", "x"))

    def test_bad_values(self):
        for kwargs, fragment in (({"port": "http"}, "'http'"), ({"port": 0}, "0"), ({"port": 65536}, "65536"),
                                 ({"heartbeat": "x"}, "'x'"), ({"heartbeat": -5}, "-5"), ({"host": ""}, "host")):
            with self.assertRaises(ValueError) as caught:
                BrokerAddress.from_options(password=SECRET, **kwargs)
            self.assertIn(fragment, str(caught.exception))
            self.assertNotIn(SECRET, str(caught.exception))

    def test_credfile(self):
        path = self.credfile("ion   %s\n" % SECRET)
        a = BrokerAddress.from_options(username="other", password="other", credfile=path)
        self.assertEqual((a.username, a.password), ("ion", SECRET))
        self.assertEqual(self.events, [])

    def test_credfile_readable_by_others_warns(self):
        path = self.credfile("ion %s" % SECRET, mode=0o644)
        BrokerAddress.from_options(credfile=path)
        self.assertEqual(len(self.events), 1)
        self.assertEqual(self.events[0]["log_level"].name, "warn")
        self.assertEqual(self.events[0]["path"], path)
        self.assertEqual(stat.S_IMODE(self.events[0]["mode"]), 0o644)

    def test_credfile_missing(self):
        path = os.path.abspath(self.mktemp())
        with self.assertRaises(ValueError) as caught:
            BrokerAddress.from_options(credfile=path)
        self.assertIn(path, str(caught.exception))
        self.assertIn("No such file", str(caught.exception))

    def test_credfile_malformed(self):
        for text in ("", "justone", "one %s three" % SECRET):
            path = self.credfile(text)
            with self.assertRaises(ValueError) as caught:
                BrokerAddress.from_options(credfile=path)
            self.assertIn(path, str(caught.exception))
            self.assertIn("username password", str(caught.exception))
            self.assertNotIn(SECRET, str(caught.exception))

    def test_credfile_unreadable(self):
        if os.geteuid() == 0:
            raise unittest.SkipTest("root reads files whatever their mode")
        path = self.credfile("ion %s" % SECRET, mode=0o000)
        with self.assertRaises(ValueError) as caught:
            BrokerAddress.from_options(credfile=path)
        self.assertIn(path, str(caught.exception))


class EndpointTest(unittest.TestCase):
    def test_plain(self):
        self.assertIsInstance(BrokerAddress.from_url("amqp://127.0.0.1/").endpoint(reactor), HostnameEndpoint)

    def test_memory_has_none(self):
        self.assertRaises(ValueError, BrokerAddress.from_url("memory").endpoint, reactor)

    def test_tls_verifies_against_the_ca(self):
        from twisted.internet._sslverify import ClientTLSOptions

        directory = self.mktemp()
        os.mkdir(directory)
        paths = make_certificates(directory)
        a = BrokerAddress.from_url("amqps://127.0.0.1:5999/?cafile=%s&server_name=localhost" % paths["ca"])
        options = a.tls_options()
        self.assertIsInstance(options, ClientTLSOptions)
        self.assertEqual(options._hostname, "localhost")
        self.assertNotIsInstance(a.endpoint(reactor), HostnameEndpoint)  # wrapped in TLS

    def test_tls_client_certificate(self):
        directory = self.mktemp()
        os.mkdir(directory)
        paths = make_certificates(directory)
        a = BrokerAddress.from_url("amqps://h/?cafile=%s&certfile=%s&keyfile=%s"
                                   % (paths["ca"], paths["server_cert"], paths["server_key"]))
        a.tls_options()  # loads without error
        bad = BrokerAddress.from_url("amqps://h/?certfile=%s&keyfile=%s" % (paths["server_cert"], paths["ca"]))
        self.assertRaises(ValueError, bad.tls_options)

    def test_tls_missing_ca_file(self):
        path = os.path.abspath(self.mktemp())
        with self.assertRaises(ValueError) as caught:
            BrokerAddress.from_url("amqps://h/?cafile=%s" % path).endpoint(reactor)
        self.assertIn(path, str(caught.exception))


class ClusterAddressTest(unittest.TestCase):
    """An address naming several nodes of one cluster."""

    def test_nodes_in_one_url(self):
        a = BrokerAddress.from_url("amqp://guest:%s@127.0.0.1:5701,127.0.0.1:5702,mq/%%2F" % SECRET)
        self.assertEqual(a.nodes, (("127.0.0.1", 5701), ("127.0.0.1", 5702), ("mq", 5672)))
        self.assertEqual((a.host, a.port, a.node_order), ("127.0.0.1", 5701, "in_order"))
        self.assertEqual(a.description, "amqp://127.0.0.1:5701,127.0.0.1:5702,mq:5672/%2F")
        for text in (str(a), repr(a)):
            self.assertNotIn(SECRET, text)

    def test_each_node_its_own_default_port(self):
        self.assertEqual(BrokerAddress.from_url("amqps://a,[::1]:5999,[::2]/").nodes,
                         (("a", 5671), ("::1", 5999), ("::2", 5671)))

    def test_node_order(self):
        a = BrokerAddress.from_url("amqp://a:1,b:2/?node_order=shuffle")
        self.assertEqual(a.node_order, "shuffle")
        self.assertEqual(a.description, "amqp://a:1,b:2/%2F?node_order=shuffle")
        self.assertEqual(BrokerAddress.from_url("amqp://a,b/?node_order=in_order").node_order, "in_order")

    def test_one_node_is_as_before(self):
        a = BrokerAddress.from_url("amqp://mq:5673/")
        self.assertEqual(a.nodes, (("mq", 5673),))
        self.assertEqual(BrokerAddress(host="h", port=1).nodes, (("h", 1),))

    def assertRejected(self, url, *fragments):
        with self.assertRaises(ValueError) as caught:
            BrokerAddress.from_url(url)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))
        self.assertNotIn(SECRET, str(caught.exception))

    def test_bad_nodes_are_named(self):
        self.assertRejected("amqp://u:%s@a:5701,b:x/" % SECRET, "bad port 'x'", "'b:x'", "u:***@")
        self.assertRejected("amqp://a,,b/", "empty node", "'a,,b'")
        self.assertRejected("amqp://a,:5702/", "no host", "':5702'")
        self.assertRejected("amqp://a,b:99999/", "'b:99999'", "1..65535")
        self.assertRejected("amqp://a,::1/", "'::1'", "brackets")
        self.assertRejected("amqp://a,[::1/", "amqp://a,[::1/", "IPv6")
        self.assertRejected("amqp://a,b/?node_order=random", "node_order 'random'", "in_order or shuffle")

    def test_immutable(self):
        a = BrokerAddress.from_url("amqp://a,b/")
        with self.assertRaises(Exception):
            a.nodes = ()

    def test_options_host_list(self):
        a = BrokerAddress.from_options(host="a:5701,b", port=5702)
        self.assertEqual(a.nodes, (("a", 5701), ("b", 5702)))
        with self.assertRaises(ValueError) as caught:
            BrokerAddress.from_options(host="a,b:no")
        self.assertIn("'b:no'", str(caught.exception))

    def test_with_nodes(self):
        a = BrokerAddress.from_url("amqp://u:p@a:1/v").with_nodes(BrokerAddress.from_url("amqp://u:p@b:2,c:3/v"))
        self.assertEqual(a.nodes, (("a", 1), ("b", 2), ("c", 3)))
        with self.assertRaises(ValueError) as caught:
            BrokerAddress.from_url("amqp://u:%s@a/v" % SECRET).with_nodes(BrokerAddress.from_url("amqp://u:x@b/w"))
        self.assertIn("differ in vhost, password", str(caught.exception))
        self.assertNotIn(SECRET, str(caught.exception))
        with self.assertRaises(ValueError):
            BrokerAddress.from_url("memory").with_nodes(BrokerAddress.from_url("amqp://b/"))

    def test_node_endpoints(self):
        endpoints = BrokerAddress.from_url("amqp://a:1,b:2/").node_endpoints(reactor)
        self.assertEqual([name for name, _ in endpoints], ["a:1", "b:2"])
        self.assertTrue(all(isinstance(e, HostnameEndpoint) for _, e in endpoints))


class NodeRotationTest(unittest.TestCase):
    """Each connect goes to the next node; a shuffled pass takes its order from the random source given."""

    def rotation(self, order, random=None):
        from ion.core.messaging.broker.nodes import NodeRotation

        self.tried = []
        tried = self.tried

        class Endpoint:
            def __init__(self, name):
                self.name = name

            def connect(self, factory):
                tried.append(self.name)
                return "connecting to %s" % self.name

        return NodeRotation([(name, Endpoint(name)) for name in "abc"], order, random)

    def test_in_order_wraps_around(self):
        rotation = self.rotation("in_order")
        self.assertEqual(rotation.connect(None), "connecting to a")
        self.assertEqual(rotation.current, "a")
        for _ in range(6):
            rotation.connect(None)
        self.assertEqual(self.tried, list("abcabca"))

    def test_shuffle_is_deterministic_under_an_injected_random(self):
        import random

        first = self.rotation("shuffle", random.Random(7))
        for _ in range(9):
            first.connect(None)
        runs = self.tried
        second = self.rotation("shuffle", random.Random(7))
        for _ in range(9):
            second.connect(None)
        self.assertEqual(self.tried, runs)
        passes = [runs[i:i + 3] for i in (0, 3, 6)]
        self.assertTrue(all(sorted(p) == list("abc") for p in passes), passes)  # each pass tries every node once

    def test_shuffle_uses_the_source(self):
        class Reversing:
            def shuffle(self, items):
                items.reverse()

        rotation = self.rotation("shuffle", Reversing())
        for _ in range(4):
            rotation.connect(None)
        self.assertEqual(self.tried, list("cbac"))


class NodeRotationRabbitTest(unittest.TestCase):
    """On the real RabbitMQ: a node that is down is passed over, and a lost connection moves to the next node."""

    def closed_port(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def proxy(self):
        from test.proxy import TcpProxy

        proxy = TcpProxy()
        self.addCleanup(proxy.stop)
        return proxy

    @defer.inlineCallbacks
    def open(self, nodes):
        from ion.core.messaging.broker import connect
        from test.brokers import RABBIT_URL

        rabbit = BrokerAddress.from_url(RABBIT_URL)
        address = dataclasses.replace(rabbit, nodes=tuple(("127.0.0.1", port) for port in nodes))
        conn = yield connect(address)
        self.addCleanup(conn.close)
        return conn

    @defer.inlineCallbacks
    def test_first_node_down(self):
        from test.brokers import RABBIT_URL

        closed, rabbit = self.closed_port(), BrokerAddress.from_url(RABBIT_URL).port
        conn = yield self.open([closed, rabbit])
        self.assertEqual(conn.node, "127.0.0.1:%d" % rabbit)
        queue = yield conn.queue_declare()
        yield conn.queue_delete(queue)

    @defer.inlineCallbacks
    def test_no_node_up(self):
        from ion.core.messaging.broker.interface import ConnectionLost

        error = yield self.assertFailure(self.open([self.closed_port(), self.closed_port()]), ConnectionLost)
        self.assertIn("cannot connect to amqp://127.0.0.1:", str(error))

    @defer.inlineCallbacks
    def test_lost_connection_moves_to_the_next_node(self):
        from test.brokers import wait_for

        first, second = self.proxy(), self.proxy()
        conn = yield self.open([first.port, second.port])
        self.assertEqual(conn.node, "127.0.0.1:%d" % first.port)
        queue = yield conn.queue_declare(exclusive=True)
        got = []
        yield conn.consume(queue, lambda d: (got.append(d.body), d.ack()))
        first.refusing = True  # should it come back to this node, the test fails
        self.assertEqual(first.cut(), 1)
        yield wait_for(lambda: conn.connected and conn.node == "127.0.0.1:%d" % second.port)
        yield conn.publish("", queue, b"after the move")
        yield wait_for(lambda: got == [b"after the move"])
        self.assertEqual(first.attempts, 1)
