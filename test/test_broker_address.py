"""BrokerAddress: URL and option parsing, credential files, and keeping the password out of sight."""

import datetime
import ipaddress
import os
import stat

from twisted.internet import reactor
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
