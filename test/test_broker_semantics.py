"""
Broker semantics, written once and run against the embedded broker and the
real RabbitMQ: whatever passes here behaves the same on both.

Nothing waits on time.  "Nothing else arrived" is proven with a fence: a
message published after the ones under test, on the same connection, to each
queue through the default exchange; once the fence is in, everything published
before it is in too (AMQP keeps one channel's messages to one queue in order).
"""

import uuid

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from ion.core.messaging.broker import memory
from ion.core.messaging.broker.interface import (
    ChannelError,
    ConnectionLost,
    IBrokerConnection,
    IConsumer,
    IDelivery,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from test.brokers import BrokerTestMixin, for_each_broker, wait_for


class Inbox:
    """A consumer callback that records deliveries (acking none of them)."""

    def __init__(self):
        self.deliveries = []

    def __call__(self, delivery):
        self.deliveries.append(delivery)

    @property
    def bodies(self):
        return [d.body for d in self.deliveries]

    def wait(self, count):
        """Fires once at least `count` deliveries have arrived."""
        return wait_for(lambda: len(self.deliveries) >= count)


class BrokerSemanticsTests(BrokerTestMixin):
    @inlineCallbacks
    def setUp(self):
        # Cleans up what tests declare, and is closed last.
        self.admin = yield self.connect_broker()

    # -- helpers

    @inlineCallbacks
    def exchange(self, conn, type="topic", **flags):
        name = self.unique_name("x")
        yield conn.exchange_declare(name, type, **flags)
        self.addCleanup(self.admin.exchange_delete, name)
        return name

    @inlineCallbacks
    def queue(self, conn, name=None, **flags):
        name = yield conn.queue_declare(self.unique_name("q") if name is None else name, **flags)
        if not flags.get("exclusive"):
            self.addCleanup(self.admin.queue_delete, name)
        return name

    @inlineCallbacks
    def inbox(self, conn, queue, **consume_flags):
        inbox = Inbox()
        consume_flags.setdefault("no_ack", True)
        consumer = yield conn.consume(queue, inbox, **consume_flags)
        return inbox, consumer

    @inlineCallbacks
    def fenced(self, conn, inboxes):
        """Bodies each inbox (keyed by queue name) got from messages `conn` published so far."""
        fence = b"fence-" + uuid.uuid4().hex.encode()
        for queue in inboxes:
            yield conn.publish("", queue, fence)
        yield wait_for(lambda: all(fence in inbox.bodies for inbox in inboxes.values()))
        result = {}
        for queue, inbox in inboxes.items():
            result[queue] = [b for b in inbox.bodies[: inbox.bodies.index(fence)] if not b.startswith(b"fence-")]
        return result

    @inlineCallbacks
    def exists(self, conn, kind, name):
        try:
            if kind == "queue":
                yield conn.queue_declare(name, passive=True)
            else:
                yield conn.exchange_declare(name, passive=True)
        except NotFound:
            return False
        return True

    @inlineCallbacks
    def eventually_gone(self, conn, kind, name, timeout=10.0):
        """RabbitMQ removes auto-delete/exclusive objects just after the triggering reply."""
        deadline = reactor.seconds() + timeout
        while (yield self.exists(conn, kind, name)):
            if reactor.seconds() > deadline:
                self.fail("%s %r still exists" % (kind, name))
            yield task.deferLater(reactor, 0.02, lambda: None)

    @inlineCallbacks
    def assertChannelError(self, d, code):
        error = yield self.assertFailure(d, ChannelError)
        self.assertEqual(error.code, code)
        return error

    # -- connection

    @inlineCallbacks
    def test_provides_interfaces(self):
        conn = yield self.connect_broker()
        verifyObject(IBrokerConnection, conn)
        q = yield self.queue(conn, exclusive=True)
        inbox, consumer = yield self.inbox(conn, q)
        verifyObject(IConsumer, consumer)
        self.assertEqual(consumer.queue, q)
        yield conn.publish("", q, b"x")
        yield inbox.wait(1)
        verifyObject(IDelivery, inbox.deliveries[0])
        self.assertNotIn("guest", conn.description)

    @inlineCallbacks
    def test_closed_connection_fails_and_close_twice(self):
        conn = yield self.connect_broker()
        yield conn.close()
        yield conn.close()
        yield self.assertFailure(conn.queue_declare(self.unique_name()), ConnectionLost)

    # -- exchanges

    @inlineCallbacks
    def test_exchange_types_route(self):
        conn = yield self.connect_broker()
        topic = yield self.exchange(conn, "topic")
        direct = yield self.exchange(conn, "direct")
        fanout = yield self.exchange(conn, "fanout")
        bindings = {
            "t1": [(topic, "a.*"), (topic, "#.c")],
            "t2": [(topic, "a.#")],
            "d1": [(direct, "a.b"), (direct, "x")],
            "d2": [(direct, "a.b")],
            "f1": [(fanout, "ignored"), (fanout, "other")],
        }
        inboxes = {}
        names = {}
        for label, binds in bindings.items():
            q = yield self.queue(conn, exclusive=True)
            names[label] = q
            for exchange, key in binds:
                yield conn.queue_bind(q, exchange, key)
            inboxes[q], _ = yield self.inbox(conn, q)
        for exchange in (topic, direct, fanout):
            for key in ("a.b", "a.c", "x", "a.b.c"):
                yield conn.publish(exchange, key, key.encode())
        got = yield self.fenced(conn, inboxes)
        got = {label: sorted(body.decode() for body in got[q]) for label, q in names.items()}
        self.assertEqual(got["t1"], ["a.b", "a.b.c", "a.c"])  # once each, though 'a.c' matches both
        self.assertEqual(got["t2"], ["a.b", "a.b.c", "a.c"])
        self.assertEqual(got["d1"], ["a.b", "x"])
        self.assertEqual(got["d2"], ["a.b"])
        self.assertEqual(got["f1"], ["a.b", "a.b.c", "a.c", "x"])

    @inlineCallbacks
    def test_exchange_redeclare_conflicts(self):
        conn = yield self.connect_broker()
        x = yield self.exchange(conn, "topic", auto_delete=True)
        yield conn.exchange_declare(x, "topic", auto_delete=True)
        for flags in ({"type": "direct"}, {"durable": True}, {"auto_delete": False}):
            kwargs = dict({"type": "topic", "durable": False, "auto_delete": True}, **flags)
            yield self.assertFailure(conn.exchange_declare(x, **kwargs), PreconditionFailed)
        # Nothing changed: still a topic exchange.
        q = yield self.queue(conn, exclusive=True)
        yield conn.queue_bind(q, x, "a.*")
        inbox, _ = yield self.inbox(conn, q)
        yield conn.publish(x, "a.b", b"m")
        got = yield self.fenced(conn, {q: inbox})
        self.assertEqual(got[q], [b"m"])

    @inlineCallbacks
    def test_exchange_passive(self):
        conn = yield self.connect_broker()
        yield self.assertFailure(conn.exchange_declare(self.unique_name("x"), passive=True), NotFound)
        x = yield self.exchange(conn, "fanout")
        # Passive ignores the flags.
        yield conn.exchange_declare(x, "direct", durable=True, passive=True)

    @inlineCallbacks
    def test_auto_delete_exchange(self):
        conn = yield self.connect_broker()
        x = yield self.exchange(conn, "topic", auto_delete=True)
        q = yield self.queue(conn, exclusive=True)
        self.assertTrue((yield self.exists(conn, "exchange", x)), "never bound: it stays")
        yield conn.queue_bind(q, x, "a")
        yield conn.queue_bind(q, x, "b")
        yield conn.queue_unbind(q, x, "a")
        self.assertTrue((yield self.exists(conn, "exchange", x)), "one binding left")
        yield conn.queue_unbind(q, x, "b")
        yield self.eventually_gone(conn, "exchange", x)

    @inlineCallbacks
    def test_auto_delete_exchange_goes_with_its_last_queue(self):
        conn = yield self.connect_broker()
        x = yield self.exchange(conn, "fanout", auto_delete=True)
        q = yield self.queue(conn)
        yield conn.queue_bind(q, x, "")
        yield conn.queue_delete(q)
        yield self.eventually_gone(conn, "exchange", x)

    # -- exchange-to-exchange bindings

    @inlineCallbacks
    def test_exchange_binding_routes_through(self):
        conn = yield self.connect_broker()
        source = yield self.exchange(conn, "topic")
        middle = yield self.exchange(conn, "topic")
        yield conn.exchange_bind(middle, source, "a.#")
        q = yield self.queue(conn, exclusive=True)
        yield conn.queue_bind(q, middle, "#.b")
        inbox, _ = yield self.inbox(conn, q)
        for key in ("a.b", "a.c", "x.b"):
            yield conn.publish(source, key, key.encode())
        yield conn.publish(middle, "x.b", b"direct to middle")
        got = yield self.fenced(conn, {q: inbox})
        self.assertEqual(got[q], [b"a.b", b"direct to middle"])
        self.assertEqual(inbox.deliveries[0].exchange, source, "a delivery names the exchange it was published to")

    @inlineCallbacks
    def test_one_copy_per_queue_whatever_the_paths(self):
        conn = yield self.connect_broker()
        source = yield self.exchange(conn, "topic")
        first = yield self.exchange(conn, "topic")
        second = yield self.exchange(conn, "fanout")
        yield conn.exchange_bind(first, source, "#")
        yield conn.exchange_bind(second, source, "a.*")
        yield conn.exchange_bind(source, second, "")  # a cycle
        q = yield self.queue(conn, exclusive=True)
        for exchange, key in ((source, "a.b"), (first, "#"), (second, "")):
            yield conn.queue_bind(q, exchange, key)
        inbox, _ = yield self.inbox(conn, q)
        yield conn.publish(source, "a.b", b"once")
        got = yield self.fenced(conn, {q: inbox})
        self.assertEqual(got[q], [b"once"])

    @inlineCallbacks
    def test_exchange_unbind(self):
        conn = yield self.connect_broker()
        source = yield self.exchange(conn, "topic", auto_delete=False)
        destination = yield self.exchange(conn, "topic", auto_delete=False)
        yield conn.exchange_bind(destination, source, "#")
        q = yield self.queue(conn, exclusive=True)
        yield conn.queue_bind(q, destination, "#")
        inbox, _ = yield self.inbox(conn, q)
        yield conn.exchange_unbind(destination, source, "#")
        yield conn.exchange_unbind(destination, source, "#")  # a missing binding is fine
        yield conn.publish(source, "k", b"unrouted")
        got = yield self.fenced(conn, {q: inbox})
        self.assertEqual(got[q], [])

    @inlineCallbacks
    def test_exchange_bind_needs_both_exchanges(self):
        conn = yield self.connect_broker()
        x = yield self.exchange(conn, "topic")
        yield self.assertFailure(conn.exchange_bind(x, self.unique_name("missing"), "#"), NotFound)
        yield self.assertFailure(conn.exchange_bind(self.unique_name("missing"), x, "#"), NotFound)

    @inlineCallbacks
    def test_auto_delete_cascades_through_exchange_bindings(self):
        """A durable queue gone: its auto-delete exchange goes, and so does the exchange feeding only that one."""
        conn = yield self.connect_broker()
        source = yield self.exchange(conn, "topic", auto_delete=True)
        destination = yield self.exchange(conn, "topic", durable=True, auto_delete=True)
        yield conn.exchange_bind(destination, source, "#")
        q = yield self.queue(conn, durable=True, auto_delete=False)
        yield conn.queue_bind(q, destination, "#")
        yield conn.queue_delete(q)
        yield self.eventually_gone(conn, "exchange", destination)
        yield self.eventually_gone(conn, "exchange", source)

    @inlineCallbacks
    def test_exchange_binding_keeps_its_source(self):
        """An auto-delete exchange with an exchange binding is in use: if_unused refuses to delete it."""
        conn = yield self.connect_broker()
        source = yield self.exchange(conn, "topic", auto_delete=True)
        destination = yield self.exchange(conn, "topic", auto_delete=True)
        yield conn.exchange_bind(destination, source, "#")
        yield self.assertFailure(conn.exchange_delete(source, if_unused=True), PreconditionFailed)
        yield conn.exchange_delete(destination, if_unused=True)
        yield self.eventually_gone(conn, "exchange", source)

    @inlineCallbacks
    def test_exchange_delete_removes_bindings(self):
        conn = yield self.connect_broker()
        x = yield self.exchange(conn, "fanout", auto_delete=False)
        q = yield self.queue(conn, exclusive=True)
        yield conn.queue_bind(q, x, "")
        yield self.assertFailure(conn.exchange_delete(x, if_unused=True), PreconditionFailed)
        yield conn.exchange_delete(x)
        yield conn.exchange_delete(x)  # deleting a missing exchange is fine
        yield conn.exchange_declare(x, "fanout", auto_delete=False)
        inbox, _ = yield self.inbox(conn, q)
        yield conn.publish(x, "", b"lost")
        got = yield self.fenced(conn, {q: inbox})
        self.assertEqual(got[q], [])

    @inlineCallbacks
    def test_reserved_names(self):
        conn = yield self.connect_broker()
        yield conn.exchange_declare("amq.topic", "topic", durable=True, auto_delete=False)
        yield self.assertChannelError(conn.exchange_declare(self.unique_name("amq.x"), "topic"), 403)
        yield self.assertChannelError(conn.queue_declare(self.unique_name("amq.q")), 403)

    # -- default exchange

    @inlineCallbacks
    def test_default_exchange(self):
        conn = yield self.connect_broker()
        q = yield self.queue(conn, exclusive=True)
        inbox, _ = yield self.inbox(conn, q)
        yield conn.publish("", q, b"direct to queue")
        yield conn.publish("", self.unique_name("nobody"), b"dropped")
        got = yield self.fenced(conn, {q: inbox})
        self.assertEqual(got[q], [b"direct to queue"])
        self.assertEqual((inbox.deliveries[0].exchange, inbox.deliveries[0].routing_key), ("", q))
        yield self.assertChannelError(conn.exchange_declare("", "direct"), 403)
        yield self.assertChannelError(conn.queue_bind(q, "", "k"), 403)
        yield self.assertChannelError(conn.exchange_delete(""), 403)

    # -- queues

    @inlineCallbacks
    def test_queue_redeclare_conflicts(self):
        conn = yield self.connect_broker()
        args = {"x-dead-letter-exchange": "dlx"}
        q = yield self.queue(conn, auto_delete=False, arguments=args)
        yield conn.queue_declare(q, auto_delete=False, arguments=dict(args, **{"x-unchecked": "x"}))
        for flags in ({"auto_delete": True}, {"durable": True}, {"arguments": None}):
            kwargs = dict({"auto_delete": False, "arguments": args}, **flags)
            yield self.assertFailure(conn.queue_declare(q, **kwargs), PreconditionFailed)
        yield self.assertFailure(conn.queue_declare(q, exclusive=True, auto_delete=False, arguments=args), ResourceLocked)
        self.assertEqual((yield conn.queue_declare(q, durable=True, passive=True)), q)
        yield self.assertFailure(conn.queue_declare(self.unique_name(), passive=True), NotFound)

    @inlineCallbacks
    def test_broker_named_queues(self):
        conn = yield self.connect_broker()
        first = yield self.queue(conn, "", exclusive=True)
        second = yield self.queue(conn, "", exclusive=True)
        self.assertTrue(first.startswith("amq.gen-"), first)
        self.assertNotEqual(first, second)
        yield self.assertChannelError(conn.queue_declare(first, exclusive=True), 403)
        self.assertEqual((yield conn.queue_declare(first, passive=True)), first)
        inbox, consumer = yield self.inbox(conn, first)
        self.assertEqual(consumer.queue, first)
        yield conn.publish("", first, b"hi")
        yield inbox.wait(1)

    @inlineCallbacks
    def test_auto_delete_queue(self):
        conn = yield self.connect_broker()
        q = yield self.queue(conn, auto_delete=True)
        self.assertTrue((yield self.exists(conn, "queue", q)), "never consumed: it stays")
        _, first = yield self.inbox(conn, q)
        _, second = yield self.inbox(conn, q)
        yield first.cancel()
        self.assertTrue((yield self.exists(conn, "queue", q)), "one consumer left")
        yield second.cancel()
        yield second.cancel()
        yield self.eventually_gone(conn, "queue", q)

    @inlineCallbacks
    def test_auto_delete_queue_goes_when_consumers_connection_closes(self):
        conn = yield self.connect_broker()
        other = yield self.connect_broker()
        q = yield self.queue(conn, auto_delete=True)
        yield self.inbox(other, q)
        yield other.close()
        yield self.eventually_gone(conn, "queue", q)

    @inlineCallbacks
    def test_exclusive_queue_across_connections(self):
        owner = yield self.connect_broker()
        other = yield self.connect_broker()
        q = yield self.queue(owner, exclusive=True)
        yield self.assertFailure(other.queue_declare(q, exclusive=True), ResourceLocked)
        yield self.assertFailure(other.queue_declare(q), ResourceLocked)
        yield self.assertFailure(other.queue_declare(q, passive=True), ResourceLocked)
        yield self.assertFailure(other.queue_bind(q, "amq.topic", "k"), ResourceLocked)
        yield self.assertFailure(other.consume(q, Inbox()), ResourceLocked)
        yield self.assertFailure(other.queue_purge(q), ResourceLocked)
        yield self.assertFailure(other.queue_delete(q), ResourceLocked)
        yield self.assertFailure(owner.queue_declare(q), ResourceLocked)  # exclusive flag differs
        # Anyone may publish to it.
        inbox, _ = yield self.inbox(owner, q)
        yield other.publish("", q, b"from other")
        yield inbox.wait(1)
        yield owner.close()
        yield self.eventually_gone(other, "queue", q)

    @inlineCallbacks
    def test_purge_and_delete_count_ready_messages(self):
        conn = yield self.connect_broker()
        q = yield self.queue(conn, auto_delete=False)
        for i in range(3):
            yield conn.publish("", q, b"%d" % i)
        self.assertEqual((yield conn.queue_purge(q)), 3)
        for i in range(4):
            yield conn.publish("", q, b"%d" % i)
        inbox, consumer = yield self.inbox(conn, q, no_ack=False, prefetch_count=1)
        yield inbox.wait(1)
        yield self.assertFailure(conn.queue_delete(q, if_empty=True), PreconditionFailed)
        yield self.assertFailure(conn.queue_delete(q, if_unused=True), PreconditionFailed)
        self.assertEqual((yield conn.queue_delete(q)), 3)  # the unacked one is not counted
        self.assertEqual((yield conn.queue_delete(q)), 0)
        yield self.assertFailure(conn.queue_purge(q), NotFound)

    # -- bindings

    @inlineCallbacks
    def test_bindings(self):
        conn = yield self.connect_broker()
        x = yield self.exchange(conn, "topic", auto_delete=False)
        q = yield self.queue(conn, exclusive=True)
        yield conn.queue_bind(q, x, "a.*")
        yield conn.queue_bind(q, x, "a.*")  # the same binding twice is one binding
        inbox, _ = yield self.inbox(conn, q)
        yield conn.publish(x, "a.b", b"once")
        got = yield self.fenced(conn, {q: inbox})
        self.assertEqual(got[q], [b"once"])
        yield conn.queue_unbind(q, x, "a.*")
        yield conn.queue_unbind(q, x, "a.*")  # unbinding a missing binding is fine
        yield conn.publish(x, "a.b", b"unbound")
        got = yield self.fenced(conn, {q: inbox})
        self.assertEqual(got[q], [b"once"])
        yield self.assertFailure(conn.queue_bind(q, self.unique_name("x"), "k"), NotFound)
        yield self.assertFailure(conn.queue_bind(self.unique_name("q"), x, "k"), NotFound)

    # -- publishing

    @inlineCallbacks
    def test_publish_to_missing_exchange(self):
        """
        The embedded broker fails the Deferred.  RabbitMQ reports the 404 only
        afterwards, by closing the channel, so there a quiet success is allowed;
        either way the connection must go on working.
        """
        conn = yield self.connect_broker()
        published = conn.publish(self.unique_name("x"), "k", b"m")
        if self.on_rabbit:
            yield published.addErrback(lambda failure: failure.trap(NotFound))
        else:
            yield self.assertFailure(published, NotFound)
        q = yield self.queue(conn, exclusive=True)
        inbox, _ = yield self.inbox(conn, q)
        yield conn.publish("", q, b"m")
        yield inbox.wait(1)

    @inlineCallbacks
    def test_mandatory_returns(self):
        conn = yield self.connect_broker()
        other = yield self.connect_broker()
        x = yield self.exchange(conn, "direct")
        returned, elsewhere = [], []
        conn.add_return_listener(lambda *args: returned.append(args))
        other.add_return_listener(lambda *args: elsewhere.append(args))
        yield conn.publish(x, "nowhere", b"not mandatory")
        yield conn.publish(x, "nowhere", b"back", {"message_id": "m1"}, mandatory=True)
        yield wait_for(lambda: returned)
        delivery, code, text = returned[0]
        self.assertEqual((code, text), (312, "NO_ROUTE"))
        self.assertEqual((delivery.body, delivery.exchange, delivery.routing_key), (b"back", x, "nowhere"))
        self.assertEqual(delivery.properties["message_id"], "m1")
        # A routable mandatory message is not returned; removed listeners hear nothing.
        q = yield self.queue(conn, exclusive=True)
        yield conn.queue_bind(q, x, "somewhere")
        yield conn.publish(x, "somewhere", b"routed", mandatory=True)
        def listener(*args):
            elsewhere.append(args)

        conn.add_return_listener(listener)
        conn.remove_return_listener(listener)
        yield conn.publish(x, "nowhere", b"fence", mandatory=True)
        yield wait_for(lambda: len(returned) == 2)
        self.assertEqual([r[0].body for r in returned], [b"back", b"fence"])
        self.assertEqual(elsewhere, [])

    @inlineCallbacks
    def test_bytes_bodies(self):
        conn = yield self.connect_broker()
        q = yield self.queue(conn, exclusive=True)
        inbox, _ = yield self.inbox(conn, q)
        bodies = [bytes(range(256)), b"", b"\x00" * 70000]
        for body in bodies:
            yield conn.publish("", q, body)
        yield inbox.wait(3)
        self.assertEqual(inbox.bodies, bodies)
        self.assertTrue(all(type(b) is bytes for b in inbox.bodies))
        try:
            yield conn.publish("", q, "text")
        except TypeError:
            pass
        else:
            self.fail("a str body was accepted")

    @inlineCallbacks
    def test_properties_round_trip(self):
        conn = yield self.connect_broker()
        q = yield self.queue(conn, exclusive=True)
        inbox, _ = yield self.inbox(conn, q)
        properties = {
            "content_type": "application/msgpack",
            "content_encoding": "utf-8",
            "headers": {"text": "v", "number": 7, "flag": True},
            "delivery_mode": 2,
            "priority": 3,
            "correlation_id": "c-1",
            "reply_to": "somebody",
            "expiration": "60000",
            "message_id": "m-1",
            "timestamp": 1700000000,
            "type": "event",
            "app_id": "ioncore",
        }
        sent = {k: (dict(v) if isinstance(v, dict) else v) for k, v in properties.items()}
        yield conn.publish("", q, b"m", properties)
        properties["headers"]["text"] = "changed after publish"
        yield conn.publish("", q, b"bare")
        yield inbox.wait(2)
        self.assertEqual(inbox.deliveries[0].properties, sent)
        self.assertEqual(inbox.deliveries[1].properties.get("headers") or {}, {})
        self.assertFalse(set(inbox.deliveries[1].properties) - {"headers"}, inbox.deliveries[1].properties)

    # -- consuming

    @inlineCallbacks
    def test_consume_errors(self):
        conn = yield self.connect_broker()
        yield self.assertFailure(conn.consume(self.unique_name("q"), Inbox()), NotFound)
        q = yield self.queue(conn, exclusive=True)
        yield self.inbox(conn, q)
        yield self.assertChannelError(conn.consume(q, Inbox(), exclusive=True), 403)
        q2 = yield self.queue(conn, exclusive=True)
        _, consumer = yield self.inbox(conn, q2, exclusive=True, consumer_tag="mine")
        self.assertEqual(consumer.tag, "mine")
        yield self.assertChannelError(conn.consume(q2, Inbox()), 403)

    @inlineCallbacks
    def test_competing_consumers_round_robin(self):
        conn = yield self.connect_broker()
        q = yield self.queue(conn, exclusive=True)
        first, c1 = yield self.inbox(conn, q, prefetch_count=0)
        second, c2 = yield self.inbox(conn, q, prefetch_count=0)
        self.assertNotEqual(c1.tag, c2.tag)
        for i in range(10):
            yield conn.publish("", q, b"%d" % i)
        yield wait_for(lambda: len(first.deliveries) + len(second.deliveries) == 10)
        self.assertEqual(sorted(first.bodies + second.bodies), sorted(b"%d" % i for i in range(10)))
        self.assertEqual((len(first.bodies), len(second.bodies)), (5, 5))
        self.assertEqual({d.consumer_tag for d in first.deliveries}, {c1.tag})

    @inlineCallbacks
    def test_prefetch_limits_unacked(self):
        conn = yield self.connect_broker()
        q = yield self.queue(conn, exclusive=True)
        limited, _ = yield self.inbox(conn, q, no_ack=False, prefetch_count=2)
        for i in range(5):
            yield conn.publish("", q, b"%d" % i)
        yield limited.wait(2)
        limited.deliveries[0].ack()
        yield limited.wait(3)
        # The other two wait in the queue for anyone with room.
        unlimited, _ = yield self.inbox(conn, q, no_ack=False, prefetch_count=0)
        yield unlimited.wait(2)
        self.assertEqual(limited.bodies, [b"0", b"1", b"2"])
        self.assertEqual(unlimited.bodies, [b"3", b"4"])

    @inlineCallbacks
    def test_ack_reject_requeue(self):
        conn = yield self.connect_broker()
        q = yield self.queue(conn, exclusive=True)
        inbox, _ = yield self.inbox(conn, q, no_ack=False, prefetch_count=1)
        for body in (b"a", b"b", b"c"):
            yield conn.publish("", q, body)
        yield inbox.wait(1)
        self.assertFalse(inbox.deliveries[0].redelivered)
        inbox.deliveries[0].reject(requeue=True)
        yield inbox.wait(2)
        self.assertEqual((inbox.bodies[1], inbox.deliveries[1].redelivered), (b"a", True))
        inbox.deliveries[1].reject(requeue=False)  # no dead-letter exchange: dropped
        yield inbox.wait(3)
        self.assertEqual((inbox.bodies[2], inbox.deliveries[2].redelivered), (b"b", False))
        inbox.deliveries[2].ack()
        yield inbox.wait(4)
        inbox.deliveries[3].ack()
        got = yield self.fenced(conn, {q: inbox})
        self.assertEqual(got[q], [b"a", b"a", b"b", b"c"])

    @inlineCallbacks
    def test_cancel_requeues_unacked(self):
        conn = yield self.connect_broker()
        q = yield self.queue(conn, exclusive=True, auto_delete=False)
        first, consumer = yield self.inbox(conn, q, no_ack=False, prefetch_count=0)
        for i in range(3):
            yield conn.publish("", q, b"%d" % i)
        yield first.wait(3)
        first.deliveries[0].ack()
        yield consumer.cancel()
        first.deliveries[1].ack()  # too late: a no-op
        second, _ = yield self.inbox(conn, q, no_ack=False, prefetch_count=0)
        yield second.wait(2)
        self.assertEqual(second.bodies, [b"1", b"2"])
        self.assertEqual([d.redelivered for d in second.deliveries], [True, True])

    @inlineCallbacks
    def test_close_requeues_unacked_to_other_connection(self):
        conn = yield self.connect_broker()
        other = yield self.connect_broker()
        q = yield self.queue(conn, auto_delete=False)
        leaving, _ = yield self.inbox(other, q, no_ack=False, prefetch_count=0)
        staying, _ = yield self.inbox(conn, q, no_ack=False, prefetch_count=1)
        for i in range(4):
            yield conn.publish("", q, b"%d" % i)
        yield wait_for(lambda: len(leaving.deliveries) + len(staying.deliveries) == 4)
        self.assertEqual(len(staying.deliveries), 1)
        yield other.close()
        for count in (2, 3, 4):
            staying.deliveries[-1].ack()
            yield staying.wait(count)
        self.assertEqual(sorted(staying.bodies), [b"0", b"1", b"2", b"3"])
        self.assertTrue(all(d.redelivered for d in staying.deliveries[1:]))

    # -- dead-lettering

    @inlineCallbacks
    def test_dead_letter_on_reject(self):
        conn = yield self.connect_broker()
        dlx = yield self.exchange(conn, "fanout")
        dlq = yield self.queue(conn, exclusive=True)
        yield conn.queue_bind(dlq, dlx, "")
        source = yield self.queue(conn, exclusive=True, arguments={"x-dead-letter-exchange": dlx})
        x = yield self.exchange(conn, "direct")
        yield conn.queue_bind(source, x, "k")
        dead, _ = yield self.inbox(conn, dlq)
        inbox, _ = yield self.inbox(conn, source, no_ack=False)
        yield conn.publish(x, "k", b"doomed", {"message_id": "m-1", "headers": {"mine": "kept"}})
        yield inbox.wait(1)
        inbox.deliveries[0].reject(requeue=False)
        yield dead.wait(1)
        delivery = dead.deliveries[0]
        self.assertEqual((delivery.body, delivery.exchange, delivery.routing_key), (b"doomed", dlx, "k"))
        self.assertEqual(delivery.properties["message_id"], "m-1")
        headers = delivery.properties["headers"]
        self.assertEqual(headers["mine"], "kept")
        self.assertEqual(headers["x-first-death-reason"], "rejected")
        self.assertEqual(headers["x-first-death-queue"], source)
        self.assertEqual(headers["x-first-death-exchange"], x)
        death = headers["x-death"][0]
        self.assertEqual(
            (death["count"], death["reason"], death["queue"], death["exchange"], list(death["routing-keys"])),
            (1, "rejected", source, x, ["k"]),
        )

    @inlineCallbacks
    def test_dead_letter_routing_key(self):
        conn = yield self.connect_broker()
        dlq = yield self.queue(conn, exclusive=True)
        source = yield self.queue(
            conn, exclusive=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
        )
        dead, _ = yield self.inbox(conn, dlq)
        inbox, _ = yield self.inbox(conn, source, no_ack=False)
        yield conn.publish("", source, b"doomed")
        yield inbox.wait(1)
        inbox.deliveries[0].reject(requeue=True)
        yield inbox.wait(2)
        inbox.deliveries[1].reject()
        yield dead.wait(1)
        self.assertEqual((dead.deliveries[0].exchange, dead.deliveries[0].routing_key), ("", dlq))
        self.assertEqual(dead.bodies, [b"doomed"])


BrokerSemanticsMemoryTest, BrokerSemanticsRabbitTest = for_each_broker(BrokerSemanticsTests, globals())


class EmbeddedBrokerTest(unittest.TestCase):
    """What only the embedded broker promises: shared by name, asynchronous, nothing retained."""

    def setUp(self):
        self.broker = memory.get_broker(self.id())
        self.addCleanup(self.broker.reset)

    @inlineCallbacks
    def test_named_brokers_are_shared_and_separate(self):
        conn = yield memory.connect(self.id())
        again = yield memory.connect(self.id())
        elsewhere = yield memory.connect(self.id() + "-other")
        self.addCleanup(elsewhere.close)
        self.assertIs(memory.get_broker(self.id()), self.broker)
        yield conn.queue_declare("shared", auto_delete=False)
        yield again.queue_declare("shared", passive=True)
        yield self.assertFailure(elsewhere.queue_declare("shared", passive=True), NotFound)

    @inlineCallbacks
    def test_deliveries_are_never_reentrant(self):
        conn = yield memory.connect(self.id())
        inbox = Inbox()
        yield conn.queue_declare("q")
        yield conn.consume("q", inbox)
        yield conn.publish("", "q", b"m")
        self.assertEqual(inbox.deliveries, [])
        yield inbox.wait(1)

    @inlineCallbacks
    def test_reset_closes_connections_and_forgets_everything(self):
        conn = yield memory.connect(self.id())
        yield conn.queue_declare("q", auto_delete=False)
        self.broker.reset()
        yield self.assertFailure(conn.queue_declare("q"), ConnectionLost)
        conn = yield memory.connect(self.id())
        yield self.assertFailure(conn.queue_declare("q", passive=True), NotFound)
        yield conn.exchange_declare("amq.direct", "direct", durable=True, auto_delete=False)

    @inlineCallbacks
    def test_acked_messages_are_not_retained(self):
        conn = yield memory.connect(self.id())
        yield conn.queue_declare("q")
        inbox = Inbox()
        yield conn.consume("q", lambda d: (d.ack(), inbox(d)), prefetch_count=0)
        for i in range(100):
            yield conn.publish("", "q", b"m")
        yield inbox.wait(100)
        queue = self.broker.queues["q"]
        self.assertEqual((len(queue.ready), sum(len(c.unacked) for c in queue.consumers)), (0, 0))

    @inlineCallbacks
    def test_failing_callback_is_logged_and_delivery_goes_on(self):
        conn = yield memory.connect(self.id())
        yield conn.queue_declare("q")
        seen = []

        def callback(delivery):
            seen.append(delivery.body)
            raise RuntimeError("consumer bug")

        yield conn.consume("q", callback, no_ack=True)
        yield conn.publish("", "q", b"1")
        yield conn.publish("", "q", b"2")
        yield wait_for(lambda: len(seen) == 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    @inlineCallbacks
    def test_unknown_property_and_exchange_type_fail(self):
        conn = yield memory.connect(self.id())
        yield self.assertFailure(conn.publish("", "q", b"m", {"colour": "red"}), ValueError)
        error = yield self.assertFailure(conn.exchange_declare("x", "headers"), ChannelError)
        self.assertEqual(error.code, 503)

    def test_broker_state_without_reactor(self):
        """With a fake clock the broker is fully deterministic (what test_topic_property uses)."""
        clock = task.Clock()
        broker = memory.EmbeddedBroker("clocked", clock=clock)
        conn = memory.MemoryConnection(broker)
        inbox = Inbox()
        conn.queue_declare("q")
        conn.consume("q", inbox, no_ack=True)
        conn.publish("", "q", b"m")
        self.assertEqual(inbox.bodies, [])
        clock.advance(0)
        self.assertEqual(inbox.bodies, [b"m"])
        conn.close()
        self.assertEqual(clock.getDelayedCalls(), [])
