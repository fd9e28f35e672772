"""
`ion-events` subcommands: tail, publish, types, dead-letters, history and
replay (the last two, and `tail --since`, read the event store: see
ion.tools.event_history).

Each runs inside a container of its own (the console script,
ion.core.cc.ion_events_command, makes it) or of the caller's (tests on the
embedded broker, which lives in one OS process): tail and publish use a
process of that container; dead-letters and replay use the
ExchangeManager it is given, on a broker connection of the tool's own.
A command fires with the exit code; a usage error is UsageError
(exit 2), a broker or runtime failure any other exception (exit 1).
"""

import ast
import getopt
import sys

from twisted.internet import defer, task
from twisted.python import usage

from ion.core.exception import UsageError as IonUsageError
from ion.core.object.object_utils import is_repeated
from ion.core.process.process import Process
from ion.services.dm.distribution import dead_letters, events
from ion.tools import event_catalog, event_history

# The monitor queue's bound: past it the oldest events are dropped (and tail says so).
DEFAULT_QUEUE_LIMIT = 10000
STATUS_INTERVAL = 1.0


class _AnyOrder(usage.Options):
    """Options may come after the positional arguments too (`publish 3003 --origin me name=x`)."""

    def parseOptions(self, options=None):
        options = sys.argv[1:] if options is None else options
        try:
            found, positional = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        ordered = []
        for name, value in found:
            takes_value = (name[2:] + "=") in self.longOpt if name.startswith("--") else (name[1] + ":") in self.shortOpt
            ordered.append(name + ("=" + value if name.startswith("--") else value) if takes_value else name)
        super().parseOptions(ordered + ["--"] + positional)


def _time(option):
    """The coerce of a time option: seconds since the epoch; a UsageError naming the option otherwise."""
    def coerce(text):
        try:
            return event_history.parse_time(text)
        except usage.UsageError as e:
            raise usage.UsageError("%s: %s" % (option, e)) from None
    return coerce


def _rate(text):
    try:
        rate = float(text)
    except ValueError:
        rate = 0
    if not rate > 0 or rate == float("inf"):
        raise usage.UsageError("--rate must be a number of events per second > 0, not %r" % (text,))
    return rate


ORIGIN = ["origin", "o", None, "Origin pattern: * matches one dot-separated word, # any number."]
SINCE = ["since", None, None, "From this time on: an age (30s, 10m, 2h, 1d) or an ISO 8601 time (UTC by default).",
         _time("--since")]
UNTIL = ["until", None, None, "Before this time: an age or an ISO 8601 time.", _time("--until")]
STORE = ["store", None, None, "The event store: a postgresql:// URL or a SQLite path, as the container's "
                              "event_store option (default: that option, else ion.config's)."]


class TailOptions(_AnyOrder):
    synopsis = "[options] [EVENT ...]"
    longdesc = ("Print events live as they are published; with --since, first the stored ones from that time "
                "(no gap, none twice).  An EVENT is an id (3003) or a name (InfoLogging, LOGGING_INFO, "
                "InfoLoggingEventSubscriber); none means every event.")
    optParameters = [
        ORIGIN,
        SINCE,
        STORE,
        ["count", "c", None, "Stop after this many events.", lambda text: _whole_number("--count", text)],
        ["queue-limit", None, DEFAULT_QUEUE_LIMIT, "Events the monitor queue holds before the oldest are dropped.",
         lambda text: _whole_number("--queue-limit", text)],
    ]
    optFlags = [
        ["full", "f", "Every field of the EventMessage and its payload."],
        ["json", "j", "One JSON object per line."],
    ]

    def parseArgs(self, *names):
        self["events"] = [_find(name) for name in names]

    def postOptions(self):
        if self["full"] and self["json"]:
            raise usage.UsageError("--full and --json: choose one format")


class PublishOptions(_AnyOrder):
    synopsis = "EVENT --origin ORIGIN [field=value ...]"
    longdesc = ("Publish one event and wait for the broker's confirm.  Fields are those of the EventMessage and "
                "of the event's payload (see `types EVENT`); enums by name; numbers and lists as Python literals.")
    optParameters = [["origin", "o", None, "The event's origin (routing key <id>.<origin>)."]]

    def parseArgs(self, event=None, *fields):
        if event is None:
            raise usage.UsageError("publish: name the EVENT to publish")
        self["event"] = _find(event)
        self["fields"] = [_field(text) for text in fields]

    def postOptions(self):
        if not self["origin"]:
            raise usage.UsageError("publish: --origin is required")


class HistoryOptions(_AnyOrder):
    synopsis = "[EVENT ...] [options]"
    longdesc = "The stored events, newest first, read from the event store (no broker needed)."
    optParameters = [
        ORIGIN, SINCE, UNTIL, STORE,
        ["limit", "n", 100, "At most this many events.", lambda text: _whole_number("--limit", text)],
    ]
    optFlags = [["json", "j", "One JSON object per line (the stored columns but the body)."]]

    def parseArgs(self, *names):
        self["events"] = [_find(name) for name in names]


class ReplayOptions(_AnyOrder):
    synopsis = "[EVENT] [options]"
    longdesc = ("Publish the stored events again, oldest first, with their exact bodies and an x-ion-replay "
                "header: to their routing keys on the events exchange, or to one queue.")
    optParameters = [
        ORIGIN, SINCE, UNTIL, STORE,
        ["limit", "n", 10000, "At most this many events.", lambda text: _whole_number("--limit", text)],
        ["to-queue", "q", None, "Send them all to this queue (through the default exchange)."],
        ["rate", "r", 100.0, "At most this many events per second.", _rate],
    ]
    optFlags = [["dry-run", None, "List what would be replayed; publish nothing (no broker needed)."]]

    def parseArgs(self, event=None, *more):
        if more:
            raise usage.UsageError("replay: one EVENT at most, not %d" % (1 + len(more),))
        self["events"] = [_find(event)] if event is not None else []


class TypesOptions(usage.Options):
    synopsis = "[EVENT]"
    longdesc = "List the event ids, or describe one: its publisher and subscriber classes, payload type and fields."

    def parseArgs(self, event=None):
        self["event"] = _find(event) if event is not None else None


class DeadLettersOptions(_AnyOrder):
    synopsis = "list | show N | requeue | purge [--yes]"
    longdesc = ("The dead letters in <sysname>.events.dead: list them (reason, attempts, original route, "
                "subscriber), show one in full, requeue them all to their original route, or purge them.")
    optFlags = [["yes", "y", "purge without asking."]]

    def parseArgs(self, action=None, number=None):
        if action not in ("list", "show", "requeue", "purge"):
            raise usage.UsageError("dead-letters: expected list, show N, requeue or purge, not %r" % (action,))
        if (action == "show") != (number is not None):
            raise usage.UsageError("dead-letters: show takes a number N (from list); the others take none")
        self["action"] = action
        if number is not None:
            if not number.isdigit() or int(number) < 1:
                raise usage.UsageError("dead-letters show: N must be 1 or more, not %r" % (number,))
            self["number"] = int(number)


SUBCOMMANDS = [
    ["tail", None, TailOptions, "Print events as they are published."],
    ["publish", None, PublishOptions, "Publish one event."],
    ["types", None, TypesOptions, "The event types."],
    ["dead-letters", None, DeadLettersOptions, "Look at, requeue or purge the dead letters."],
    ["history", None, HistoryOptions, "The stored events."],
    ["replay", None, ReplayOptions, "Publish stored events again."],
]


def needs_broker(command, options):
    """Whether a subcommand talks to the broker (history and a dry-run replay read only the store)."""
    return not (command in ("types", "history") or (command == "replay" and options["dry-run"]))


def _whole_number(option, text):
    """An option's value as an int >= 1; a UsageError naming the option otherwise."""
    if not str(text).isdigit() or int(text) < 1:
        raise usage.UsageError("%s must be a whole number, 1 or more, not %r" % (option, text))
    return int(text)


def _find(name):
    try:
        return event_catalog.find(name)
    except event_catalog.UnknownEvent as e:
        raise usage.UsageError(str(e)) from None


def _field(text):
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise usage.UsageError("publish: %r is not field=value" % (text,))
    return name, value


class Output:
    """Where a command writes: lines to `out`, the status line and notices to `err`."""

    def __init__(self, out=None, err=None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.status_shown = False

    def line(self, text):
        self.clear_status()
        self.out.write(text + "\n")
        self.out.flush()

    def notice(self, text):
        self.clear_status()
        self.err.write("ion-events: %s\n" % (text,))
        self.err.flush()

    def status(self, text):
        self.err.write("\r\x1b[K" + text)
        self.err.flush()
        self.status_shown = True

    def clear_status(self):
        if self.status_shown:
            self.err.write("\r\x1b[K")
            self.status_shown = False

    def on_terminal(self):
        return hasattr(self.err, "isatty") and self.err.isatty()


@defer.inlineCallbacks
def _tool_process(name):
    process = Process(spawnargs={"proc-name": name})
    yield process.spawn()
    return process


class Tail:
    """
    One subscriber per named event (or one for all) on an anonymous monitor
    queue: auto-delete (gone with tail's consumer, also when its connection
    dies) and bounded, so a slow or stopped tail cannot build up events on
    the broker.  Like every anonymous subscriber queue it is exclusive to its
    connection, so tail reads its depth through the subscriber's own
    (another connection would be refused).  `done` fires with the count.

    With --since it subscribes first and holds the live events, then prints
    the stored ones from that time, then the held ones whose content key was
    not among them, then goes on live: no gap and no event twice, as long as
    what was published before the subscription has reached the store.
    """

    def __init__(self, options, output, clock=None, store=None):
        from twisted.internet import reactor

        self.options = options
        self.output = output
        self.clock = clock or reactor
        self.store = store  # the event store for --since; by default opened from --store
        self.seen = 0
        self.done = defer.Deferred()
        self.subscribers = []
        self._held = None  # live events that came while the stored ones were read
        self._started = None
        self._full_warned = False
        self._loop = None

    @defer.inlineCallbacks
    def start(self):
        self.process = yield _tool_process("ion-events-tail")
        if self.options["since"] is not None:
            self._held = []
        kinds = self.options["events"] or [None]
        for kind in kinds:
            sub = events.EventSubscriber(
                process=self.process,
                event_id=kind.event_id if kind else None,
                origin=self.options["origin"],
                max_length=self.options["queue-limit"],
                overflow="drop-head",
                depth_warning=0,  # tail says itself when its queue is full
                prefetch_count=1,  # what tail cannot print yet waits in the bounded queue, not in this client
            )
            sub.ondata = self._received
            yield self.process.register_life_cycle_object(sub)
            self.subscribers.append(sub)
        self._started = self.clock.seconds()
        keys = ", ".join(sub.topic(self.options["origin"]) for sub in self.subscribers)
        self.output.notice("tailing %s on %s" % (keys, events.get_events_exchange_point()))
        if self._held is not None:
            yield self._catch_up()
        self._loop = task.LoopingCall(self._check)
        self._loop.clock = self.clock
        self._loop.start(STATUS_INTERVAL, now=False)

    @defer.inlineCallbacks
    def _catch_up(self):
        stored = set()

        def show(records):
            for record in records:
                stored.add(record["content_key"])
                self._show(event_history.tail_line(record["routing_key"], record.event, self.options))

        queries = event_history.query(self.options)
        limit = self.options["count"] or sys.maxsize
        store = self.store or (yield event_history.opened(self.options))
        try:
            if len(queries) == 1:  # printed page by page as read
                yield event_history.pages(store, queries[0], limit, False, show)
            else:  # several events: their pages merged in time order
                show((yield event_history.find(store, queries, limit, descending=False)))
        finally:
            if store is not self.store:
                store.close()
        held, self._held = self._held, None
        for data in held:
            if data["content"].Message.MyId.hex() not in stored:
                self._print(data)

    def _received(self, data):
        if self._held is not None:
            self._held.append(data)
        else:
            self._print(data)

    def _print(self, data):
        self._show(event_history.tail_line(data.get("receiver", ""), data["content"], self.options))

    def _show(self, line):
        if self.done.called:
            return
        self.output.line(line)
        self.seen += 1
        if self.options["count"] is not None and self.seen >= self.options["count"]:
            self.done.callback(self.seen)

    @defer.inlineCallbacks
    def _check(self):
        """The status line (on a terminal) and the warning once the monitor queue is full."""
        if self.output.on_terminal() and not self.done.called:
            elapsed = max(self.clock.seconds() - self._started, 1e-9)
            self.output.status("%d events, %.1f/s" % (self.seen, self.seen / elapsed))
        for sub in self.subscribers:
            try:
                depth = yield sub.exchange_manager.queue_depth(sub.queue)
            except Exception:
                continue  # the queue is being re-made after a reconnect: try again next time
            if depth >= self.options["queue-limit"] and not self._full_warned:
                self._full_warned = True
                self.output.notice(
                    "monitor queue %s is full (%d events): the oldest are being dropped; tail is slower than "
                    "the events (filter by EVENT or --origin, or raise --queue-limit)" % (sub.queue, depth))
            elif depth < self.options["queue-limit"] // 2:
                self._full_warned = False

    @defer.inlineCallbacks
    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.output.clear_status()
        yield self.process.terminate()


@defer.inlineCallbacks
def tail(options, output, stopped=None):
    """Until --count events or `stopped` fires (Ctrl-C); prints how many were seen."""
    watcher = Tail(options, output)
    yield watcher.start()
    waits = [watcher.done] + ([stopped] if stopped is not None else [])
    yield defer.DeferredList(waits, fireOnOneCallback=True, consumeErrors=True)
    yield watcher.stop()
    if options["count"] is None or watcher.seen < options["count"]:
        output.notice("%d events seen" % (watcher.seen,))
    return 0


def publish_fields(kind, pairs):
    """field=value texts as create_event kwargs: strings and enum names stay text, the rest are literals."""
    payload = kind.payload_class()
    descriptors = {f.name: f for f in event_catalog.event_message_fields()}
    if payload is not None:
        descriptors.update((f.name, f) for f in payload.DESCRIPTOR.fields)
    fields = {}
    for name, text in pairs:
        field = descriptors.get(name)
        if field is not None and field.type in (field.TYPE_STRING, field.TYPE_BYTES) and not is_repeated(field):
            fields[name] = text if field.type == field.TYPE_STRING else text.encode("utf-8")
        elif field is not None and field.enum_type is not None and not text.lstrip("-").isdigit():
            fields[name] = text
        else:
            try:
                fields[name] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                fields[name] = text  # create_event says what the field takes
    return fields


@defer.inlineCallbacks
def publish(options, output):
    kind = options["event"]
    if kind.publisher is None:
        raise usage.UsageError("event %d %s has no publisher class: it cannot be published" % (kind.event_id, kind.name))
    fields = publish_fields(kind, options["fields"])
    process = yield _tool_process("ion-events-publish")
    try:
        try:
            publisher = kind.publisher(process=process, origin=options["origin"])
            routing_key = publisher.topic(options["origin"])
            yield process.register_life_cycle_object(publisher)
            event = yield publisher.create_event(origin=options["origin"], **fields)
        except (events.UnknownEventFields, IonUsageError, TypeError, ValueError) as e:
            raise usage.UsageError(str(e)) from e
        yield publisher.publish_event(event, origin=options["origin"])
        output.line("published %s (confirmed by the broker)" % (routing_key,))
    finally:
        yield process.terminate()
    return 0


def types(options, output):
    if options["event"] is not None:
        output.line(event_catalog.describe(options["event"]))
        return 0
    for kind in event_catalog.all_types():
        publisher = kind.publisher.__name__ if kind.publisher else "-"
        output.line("%5d  %-26s %-34s %s" % (kind.event_id, kind.name, kind.constant, publisher))
    return 0


@defer.inlineCallbacks
def dead_letters_command(options, output, broker):
    action = options["action"]
    if action in ("list", "show"):
        letters = yield dead_letters.peek(broker)
        if action == "list":
            if not letters:
                output.line("no dead letters in %s" % (dead_letters.dead_letter_name(),))
            for number, letter in enumerate(letters, 1):
                output.line("%d. %s  attempts %s  subscriber %s  queue %s\n   reason: %s" % (
                    number, letter.routing_key, letter.attempts, letter.subscriber, letter.queue, letter.reason))
            return 0
        if options["number"] > len(letters):
            raise usage.UsageError("dead-letters show %d: there are %d" % (options["number"], len(letters)))
        letter = letters[options["number"] - 1]
        for name in ("routing_key", "original_exchange", "reason", "attempts", "subscriber", "queue"):
            output.line("%-18s %s" % (name + ":", getattr(letter, name)))
        output.line("%-18s %d bytes" % ("body:", len(letter.body)))
        output.line("%-18s %r" % ("properties:", letter.properties))
        return 0
    if action == "requeue":
        count = yield dead_letters.requeue(broker)
        output.line("requeued %d dead letters to their original routes" % (count,))
        return 0
    count = yield dead_letters.purge(broker)
    output.line("purged %d dead letters from %s" % (count, dead_letters.dead_letter_name()))
    return 0


def run(command, options, output, broker=None, stopped=None):
    """Run one subcommand (its parsed Options); fires with the exit code."""
    if command == "types":
        return defer.maybeDeferred(types, options, output)
    if command == "tail":
        return tail(options, output, stopped)
    if command == "publish":
        return publish(options, output)
    if command == "history":
        return event_history.history(options, output)
    if command == "replay":
        return event_history.replay(options, output, broker)
    return dead_letters_command(options, output, broker)
