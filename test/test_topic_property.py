"""
Topic routing: the embedded broker against RabbitMQ, and topic.py against a
definitional matcher.

Keys and patterns are drawn from a tiny alphabet that includes the hard parts:
empty words (so leading, trailing and doubled dots), '*' and '#' both as
wildcards in patterns and as plain words in keys, and '#'/'*' glued to a
letter (literal).  RabbitMQ is asked in batches: one exchange, one queue per
pattern, every key published once, so each round trip compares hundreds of
(pattern, key) pairs.  pika is blocking, so that part runs in a worker thread,
together with an embedded broker of its own on a fake clock.
"""

import uuid

import pika
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import task, threads
from twisted.logger import Logger
from twisted.trial import unittest

from ion.core.messaging.broker.memory import EmbeddedBroker, MemoryConnection
from ion.core.messaging.broker.topic import TopicTrie, matches
from test.brokers import RABBIT_URL

log = Logger()

PATTERN_WORDS = ("a", "b", "", "*", "#", "a*", "#b")
KEY_WORDS = ("a", "b", "", "*", "#")


def dotted(words, max_words=5):
    return st.lists(st.sampled_from(words), max_size=max_words).map(".".join)


patterns = dotted(PATTERN_WORDS)
keys = dotted(KEY_WORDS)

# (pattern, key, matches?) as observed on RabbitMQ 3.10; '' is zero words.
EDGE_CASES = [
    ("#", "", True),
    ("*", "", False),
    ("", "", True),
    ("", "a", False),
    ("#.*", "", False),
    ("a.#", "a", True),
    ("a.#", "a.", True),
    ("#.a", "a", True),
    ("#.#", "", True),
    ("#.#", "a.b", True),
    ("*.#.*", "a", False),
    ("*.#.*", ".", True),
    ("*.#.*", "a.b", True),
    ("a..b", "a..b", True),
    ("a.*.b", "a..b", True),
    ("a.b", "a..b", False),
    (".a", ".a", True),
    (".a", "a", False),
    ("*.a", ".a", True),
    ("a.", "a.", True),
    ("a.", "a", False),
    ("a.*", "a.", True),
    (".", ".", True),
    (".", "", False),
    ("*.*", ".", True),
    ("*", ".", False),
    ("#.", "a.", True),
    ("#.", "a", False),
    (".#", ".a", True),
    ("#..#", "a..b", True),
    ("#..#", "a.b", False),
    ("a#", "a#", True),
    ("a#", "a.b", False),
    ("a*", "ab", False),
    ("*", "#", True),
    ("a.#.b", "a.b", True),
]


def words(text):
    return text.split(".") if text else []


def reference_match(pattern_words, key_words):
    """The definition, recursively: '#' takes zero or more words, '*' exactly one."""
    if not pattern_words:
        return not key_words
    head, rest = pattern_words[0], pattern_words[1:]
    if head == "#":
        return reference_match(rest, key_words) or (bool(key_words) and reference_match(pattern_words, key_words[1:]))
    return bool(key_words) and head in ("*", key_words[0]) and reference_match(rest, key_words[1:])


def embedded_routes(patterns, keys):
    """{(pattern, key)} routed by a private embedded broker: one queue per pattern."""
    clock = task.Clock()
    conn = MemoryConnection(EmbeddedBroker("topic-property", clock=clock))
    routed = set()
    conn.exchange_declare("x", "topic")
    for index, pattern in enumerate(patterns):
        queue = "q%d" % index
        conn.queue_declare(queue)
        conn.queue_bind(queue, "x", pattern)
        conn.consume(queue, lambda d, p=pattern: routed.add((p, d.body.decode())), no_ack=True)
    for key in keys:
        conn.publish("x", key, key.encode())
    clock.advance(0)
    conn.close()
    return routed


class RabbitTopicRoutes:
    """RabbitMQ's routing for batches of patterns and keys; blocking, so use it from one worker thread."""

    def __init__(self, url):
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()

    def routes(self, patterns, keys):
        """{(pattern, key)} RabbitMQ routes; leaves nothing behind on the broker."""
        channel = self.channel
        exchange = "topic-property-" + uuid.uuid4().hex
        fence = b"fence-" + uuid.uuid4().hex.encode()
        channel.exchange_declare(exchange, "topic", auto_delete=True)
        pattern_of = {}  # consumer tag -> pattern
        routed, fenced = set(), set()

        def on_message(_channel, method, _properties, body):
            if body == fence:
                fenced.add(method.consumer_tag)
            else:
                routed.add((pattern_of[method.consumer_tag], body.decode()))

        queues = []
        for pattern in patterns:
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.queue_bind(queue, exchange, routing_key=pattern)
            pattern_of[channel.basic_consume(queue, on_message, auto_ack=True)] = pattern
            queues.append(queue)
        for key in keys:
            channel.basic_publish(exchange, key, key.encode())
        # Published after the keys on the same channel, so it arrives after them.
        for queue in queues:
            channel.basic_publish("", queue, fence)
        while len(fenced) < len(queues):
            self.connection.process_data_events(time_limit=5)
        for queue in queues:
            channel.queue_delete(queue)  # the auto-delete exchange goes with the last binding
        return routed

    def close(self):
        self.connection.close()


def expected_routes(patterns, keys):
    return {(p, k) for p in patterns for k in keys if reference_match(words(p), words(k))}


class TopicFunctionTest(unittest.TestCase):
    """topic.py and the embedded broker against the definition; no RabbitMQ needed."""

    def test_edge_cases(self):
        for pattern, key, expected in EDGE_CASES:
            self.assertEqual(matches(pattern, key), expected, (pattern, key))
            self.assertEqual(reference_match(words(pattern), words(key)), expected, (pattern, key))

    def test_edge_cases_embedded(self):
        patterns = sorted({p for p, _, _ in EDGE_CASES})
        keys = sorted({k for _, k, _ in EDGE_CASES})
        routed = embedded_routes(patterns, keys)
        for pattern, key, expected in EDGE_CASES:
            self.assertEqual((pattern, key) in routed, expected, (pattern, key))

    @settings(max_examples=3000, deadline=None, database=None)
    @given(patterns, keys)
    def test_matches_is_the_definition(self, pattern, key):
        self.assertEqual(matches(pattern, key), reference_match(words(pattern), words(key)))

    @settings(max_examples=300, deadline=None, database=None)
    @given(
        st.lists(patterns, min_size=1, max_size=25, unique=True),
        st.lists(keys, min_size=1, max_size=25, unique=True),
    )
    def test_trie_and_embedded_broker_route_by_definition(self, patterns, keys):
        trie = TopicTrie()
        for pattern in patterns:
            trie.add(pattern, pattern)
        expected = expected_routes(patterns, keys)
        self.assertEqual({(p, k) for k in keys for p in trie.match(k)}, expected)
        self.assertEqual(embedded_routes(patterns, keys), expected)

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(patterns, min_size=1, max_size=20, unique=True), st.data())
    def test_trie_remove(self, patterns, data):
        removed = data.draw(st.lists(st.sampled_from(patterns), unique=True))
        trie = TopicTrie()
        for pattern in patterns:
            trie.add(pattern, pattern)
        for pattern in removed:
            trie.remove(pattern, pattern)
        kept = [p for p in patterns if p not in removed]
        for key in data.draw(st.lists(keys, min_size=1, max_size=10)):
            self.assertEqual(trie.match(key), {p for p in kept if matches(p, key)})


class TopicRabbitTest(unittest.TestCase):
    """The embedded broker routes exactly as RabbitMQ does."""

    MIN_PAIRS = 500

    def rabbit(self):
        try:
            return RabbitTopicRoutes(RABBIT_URL)
        except pika.exceptions.AMQPConnectionError as e:
            raise unittest.SkipTest("no RabbitMQ at %s: %s" % (RABBIT_URL, e))

    def test_edge_cases_on_rabbitmq(self):
        def compare():
            rabbit = self.rabbit()
            try:
                patterns = sorted({p for p, _, _ in EDGE_CASES})
                keys = sorted({k for _, k, _ in EDGE_CASES})
                return rabbit.routes(patterns, keys), embedded_routes(patterns, keys)
            finally:
                rabbit.close()

        def check(result):
            on_rabbit, embedded = result
            for pattern, key, expected in EDGE_CASES:
                self.assertEqual((pattern, key) in on_rabbit, expected, (pattern, key))
            self.assertEqual(embedded, on_rabbit)

        return threads.deferToThread(compare).addCallback(check)

    def test_embedded_matches_rabbitmq(self):
        def compare():
            rabbit = self.rabbit()
            pairs = []

            @settings(
                max_examples=12,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(
                st.lists(patterns, min_size=20, max_size=30, unique=True),
                st.lists(keys, min_size=20, max_size=30, unique=True),
            )
            def same_routes(patterns, keys):
                self.assertEqual(embedded_routes(patterns, keys), rabbit.routes(patterns, keys))
                pairs.append(len(patterns) * len(keys))

            try:
                same_routes()
            finally:
                rabbit.close()
            return sum(pairs)

        def check(compared):
            log.info("Compared {count} (pattern, key) pairs with RabbitMQ", count=compared)
            self.assertGreaterEqual(compared, self.MIN_PAIRS)

        return threads.deferToThread(compare).addCallback(check)
