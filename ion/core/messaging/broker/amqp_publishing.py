"""
The shared channel of an AMQPConnection: declarations, binds and publishes
take their turns on it in the order they were made, across reconnects too,
with at most max_in_flight publishes unconfirmed and nothing written while
the transport's write buffer is full.
"""

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import ChannelClosed

from ion.core.messaging.broker.amqp_channel import invoke, open_channel
from ion.core.messaging.broker.amqp_errors import broker_error, channel_error, culprit, dropped_under
from ion.core.messaging.broker.amqp_protocol import BASIC
from ion.core.messaging.broker.amqp_states import READY
from ion.core.messaging.broker.interface import BrokerError, MessageRefused

log = Logger()


def _fail(d):
    """Fail `d` with the exception being handled, as an interface exception (broker_error)."""
    try:
        failure = broker_error(Failure())
    except Exception:
        failure = Failure()
    d.errback(failure)


class Confirms:
    """Publishes on one confirm-mode channel that wait for the broker's basic.ack."""

    def __init__(self, channel):
        self.channel = channel
        self.next_tag = 1
        self.waiting = {}  # delivery tag -> (Deferred, message), in publish order

    def add(self, message, d):
        """`d` fires with the broker's confirm of `message`, the next publish on the channel."""
        self.waiting[self.next_tag] = (d, message)
        self.next_tag += 1

    def settle(self, tag, multiple, ack):
        waiting = self.waiting
        if multiple:
            tags = []
            for t in waiting:  # in publish order, so in tag order
                if t > tag:
                    break
                tags.append(t)
        else:
            tags = (tag,)
        for t in tags:
            d, _ = waiting.pop(t, (None, None))
            if d is None:
                continue
            if ack:
                d.callback(None)
            else:
                d.errback(MessageRefused("the broker refused the message (basic.nack)"))

    def take_all(self):
        """Every unconfirmed (Deferred, message), oldest first; none are left waiting."""
        waiting, self.waiting = self.waiting, {}
        return list(waiting.values())

    def fail_all(self, error):
        for d, _ in self.take_all():
            d.errback(error)


class Turn:
    """
    A publish (`message`) or a synchronous method (`call`: name, kwargs) waiting for its turn on the
    shared channel; `done` fires with its outcome.  `deadline` is when it gives up waiting for a
    lost connection (None while connected).
    """

    __slots__ = ("done", "message", "call", "deadline")

    def __init__(self, message=None, call=None, done=None, deadline=None):
        self.done = defer.Deferred() if done is None else done
        self.message, self.call, self.deadline = message, call, deadline


class Pipeline:
    """
    The ordered publishes and calls of one AMQPConnection on its shared ("ops")
    channel.  A publish is written at once when the connection is READY, the
    channel open, nothing waits before it and there is room (`publish`);
    otherwise it waits its turn with the calls (`turns`), which go one at a
    time so an error belongs to one call.  A lost connection puts unconfirmed
    publishes back at the front, to go again once READY (at-least-once); a
    turn waits for that up to reconnect_timeout.
    """

    def __init__(self, state, address, topology, clock):
        self.description = address.description
        self._state = state
        self._address = address
        self._topology = topology
        self._clock = clock
        self.ops = None  # the shared channel on the current connection
        self.pending = None  # Confirms of the ops channel, with confirms on
        self._turns = deque()  # Turns waiting for the ops channel, in call order
        self._taking_turns = False  # _take_turns is running
        self._wake = None  # Deferred _take_turns waits on until something changes
        self._paused = False  # the transport's write buffer is full
        self._warned_waiting = False  # about publishes piling up, since the queue was last empty

    @property
    def in_flight(self):
        return len(self.pending.waiting) if self.pending is not None else 0

    @property
    def waiting(self):
        return len(self._turns)

    # -- what the connection asks for

    def publish(self, message):
        """Written at once when READY and the shared channel is idle, else queued behind the pending turns."""
        ops = self.ops
        if not self._turns and self._state.state is READY and ops is not None and not ops.closed and self._room():
            return self.send(message, defer.Deferred())
        return self._enqueue(Turn(message=message))

    def call(self, name, kwargs):
        """One synchronous method on the shared channel, in its turn."""
        return self._enqueue(Turn(call=(name, kwargs)))

    def send(self, message, done):
        """
        Write one publish on the ops channel; `done` (returned) fires with its confirm, or once written
        with confirms off, or fails if it cannot be written.  The caller's Deferred is the only one made,
        and it has no callback of ours: every failure it gets is an interface exception already (_fail).
        """
        try:
            self._state.check_open()
            client = self._state.client
            exchange, routing_key, body, properties, mandatory = message
            if not exchange:  # straight to a queue, which may be a broker-named one renamed since
                routing_key = self._topology.current(routing_key)
            client.write(client.publish_frames(self.ops.id, exchange, routing_key, mandatory, body, properties))
        except Exception:
            _fail(done)
            return done
        if self._address.confirms:  # its basic.ack is read in a later reactor turn
            self.pending.add(message, done)
        else:
            done.callback(None)
        return done

    @defer.inlineCallbacks
    def ops_channel(self):
        """The shared channel, opened (in confirm mode when asked) if it is not open."""
        if self.ops is None or self.ops.closed:
            channel = yield open_channel(self._state)
            if self._address.confirms:
                yield invoke(channel, "confirm_select", nowait=False)
                self.pending = Confirms(channel)
            self.ops = channel
        return self.ops

    # -- what happens to the connection

    def connected(self):
        """A new TCP connection: its write buffer is empty."""
        self._paused = False

    def ready(self):
        """READY: waiting turns no longer have a deadline, and go on."""
        for turn in self._turns:
            turn.deadline = None
        self._kick()

    def lost(self):
        """The TCP connection is gone: unconfirmed publishes go again first (or fail, when closing)."""
        self.ops = None
        pending, self.pending = self.pending, None
        if self._state.closing:
            if pending is not None:
                pending.fail_all(self._state.not_connected())
            self._kick()
            return
        # They were made before anything waiting.
        deadline = self._clock.seconds() + self._address.reconnect_timeout
        again = [Turn(message=message, done=confirmed) for confirmed, message in
                 (pending.take_all() if pending is not None else ())]
        self._turns.extendleft(reversed(again))
        for turn in self._turns:
            if turn.deadline is None:
                turn.deadline = deadline
        self._kick()

    def closing(self):
        """close() was called: waiting turns fail."""
        self._kick()

    def confirmed(self, channel, delivery_tag, multiple, ack):
        if self.pending is not None and self.pending.channel is channel:
            self.pending.settle(delivery_tag, multiple, ack)
            if self._turns:
                self._kick()

    def writing_paused(self, paused):
        self._paused = paused
        if not paused:
            self._kick()

    def channel_closed(self, channel, msg):
        """
        The broker closed `channel`; True when the failure of unconfirmed
        publishes on it already reports why.
        """
        if channel is self.ops:
            self.ops = None
        if self.pending is None or self.pending.channel is not channel:
            return False
        pending, self.pending = self.pending, None
        reported = False
        if culprit(msg) == BASIC["publish"]:
            # One of the unconfirmed publishes was refused, which one is not said: they all carry the reason.
            reported = bool(pending.waiting)
            pending.fail_all(channel_error(msg))
        else:
            # A call's error closed the channel: the publishes written before it go again, on a new one.
            self._turns.extendleft(reversed([Turn(message=m, done=d) for d, m in pending.take_all()]))
        self._kick()
        return reported

    # -- turns

    def _enqueue(self, turn):
        if not self._state.ready:
            turn.deadline = self._clock.seconds() + self._address.reconnect_timeout
        turns = self._turns
        turns.append(turn)
        if len(turns) > self._address.max_in_flight and not self._warned_waiting:
            self._warned_waiting = True
            log.warn("{conn}: {count} publishes and calls are waiting to be sent ({why}); a publisher that does not"
                     " wait for publish() to fire keeps adding to them", conn=self.description, count=len(turns),
                     why=self._why_waiting())
        # A publish behind others that wait for room goes with them (the next confirm or resumed transport kicks).
        if len(turns) == 1 or turn.call is not None or self._taking_turns or self._room():
            self._kick()
        return turn.done

    def _why_waiting(self):
        if not self._state.ready:
            return "not connected"
        if self._paused:
            return "the connection's write buffer is full"
        return "%d publishes await the broker's confirm, max_in_flight" % self.in_flight

    def _room(self):
        """May one more publish be written now?"""
        return not self._paused and (self.pending is None or len(self.pending.waiting) < self._address.max_in_flight)

    def _kick(self):
        """Something changed (a confirm, the transport, the connection): waiting turns may go on."""
        if self._taking_turns:
            wake, self._wake = self._wake, None
            if wake is not None:
                wake.callback(None)
            return
        turns = self._turns
        # The common case, waiting publishes and room for them on an open channel, needs no _take_turns.
        if turns and turns[0].call is None and self._open_for_publishing():
            pending = self.pending
            room = len(turns) if pending is None else self._address.max_in_flight - len(pending.waiting)
            # Checked again each time: with confirms off a send fires its Deferred, and its caller may close.
            while room > 0 and turns and turns[0].call is None and not self._paused and self._open_for_publishing():
                turn = turns.popleft()
                self.send(turn.message, turn.done)
                room -= 1
            if turns and turns[0].call is None and (room <= 0 or self._paused):
                return  # the next confirm or resumed transport kicks again
        if turns:
            self._take_turns()
        else:
            self._warned_waiting = False

    def _open_for_publishing(self):
        ops = self.ops
        return self._state.state is READY and ops is not None and not ops.closed

    def _until_kicked(self, timeout=None):
        self._wake = d = defer.Deferred()
        if timeout is not None:
            timer = self._clock.callLater(timeout, self._kick)
            d.addCallback(lambda _: timer.cancel() if timer.active() else None)
        return d

    @defer.inlineCallbacks
    def _take_turns(self):
        """Write waiting publishes and make waiting calls, oldest first, as the bounds and the connection allow."""
        self._taking_turns = True
        state, clock = self._state, self._clock
        try:
            while self._turns:
                turn = self._turns[0]
                if state.closing:
                    self._give_up(state.not_connected())
                elif not state.ready:
                    if turn.deadline is None:
                        turn.deadline = clock.seconds() + self._address.reconnect_timeout
                    left = turn.deadline - clock.seconds()
                    if left > 0:
                        yield self._until_kicked(left)
                    else:
                        self._give_up(state.not_reconnected(self._address.reconnect_timeout), clock.seconds())
                elif turn.call is not None:
                    yield self._take_call(turn)
                elif self.ops is None or self.ops.closed:
                    yield self._open_ops_for(turn)
                elif self._room():
                    self._turns.popleft()
                    self.send(turn.message, turn.done)
                else:
                    yield self._until_kicked()
        except Exception:
            log.failure("{conn}: sending waiting publishes failed", conn=self.description)
            self._give_up(BrokerError("internal error sending to %s" % self.description))
        finally:
            self._taking_turns = False
            self._wake = None
            if not self._turns:
                self._warned_waiting = False

    @defer.inlineCallbacks
    def _take_call(self, turn):
        name, kwargs = turn.call
        if "queue" in kwargs:
            kwargs["queue"] = self._topology.current(kwargs["queue"])
        try:
            result = yield self._call_once(name, kwargs)
        except Exception as e:
            if not self._state.closing and dropped_under(e):
                return  # in flight when the connection dropped: made again once reconnected
            self._turns.remove(turn)  # publishes to send again may have been put before it meanwhile
            _fail(turn.done)
        else:
            self._turns.remove(turn)
            turn.done.callback(result)

    @defer.inlineCallbacks
    def _open_ops_for(self, turn):
        """(Re)open the shared channel for a waiting publish; a refusal is that publish's failure."""
        try:
            yield self.ops_channel()
        except Exception as e:
            if self._state.closing or not dropped_under(e):
                self._turns.remove(turn)
                _fail(turn.done)

    def _give_up(self, error, now=None):
        """Fail every waiting turn, or (with `now`) those whose reconnect deadline has passed."""
        while self._turns and (now is None or self._turns[0].deadline <= now):
            self._turns.popleft().done.errback(error)

    @defer.inlineCallbacks
    def _call_once(self, name, kwargs):
        for retry in (True, False):
            channel = yield self.ops_channel()
            try:
                return (yield getattr(channel, name)(**kwargs))
            except ChannelClosed as e:
                # A publish sent just before us failed and took the channel down: not our error.
                if not (retry and culprit(e.args[0]) == BASIC["publish"]):
                    raise
