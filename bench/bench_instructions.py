"""
Instructions per published and per delivered event, counted by valgrind: figures that do not move
with whatever else the machine runs (issue 11).

    python bench/bench_instructions.py [--small 1000] [--large 3000] [--root DIR] [--broker URL]

CPU time per event swings by 10-40% between runs on a shared 2-core machine, pika's as much as
ours; an instruction count is the same on every run of the same code.  So this is the figure to
compare two versions of the code by (`--root DIR`: a checkout of the other version, whose `ion`
and bench are used instead of this one's).

Each count runs one OS process under `valgrind --tool=callgrind` on the embedded broker (or, with
--broker, on that RabbitMQ: the AMQP client's frames, writes and confirms are then in the counts):
InfoLoggingEventPublisher.create_and_publish_event with 100 calls in flight into a subscriber's
queue while it is not consuming, then (in the second kind of run) the subscriber, an
InfoLoggingEventSubscriber with its default settings, consuming them all.  Runs of --small and
--large events are subtracted, so the process's start (imports, the container) drops out:

    per publish  = (publish-only run of --large - of --small) / (--large - --small)
    per delivery = (publish-and-deliver runs, the same) - per publish

The four runs go two at a time (about a minute here).  PYTHONHASHSEED is fixed: dict and set
probing depend on it.  valgrind counts user-space instructions: the kernel's work (socket calls)
and what the broker does are not in them, and neither is the time lost to cache misses.  At
RabbitMQ the counts move a little with how the broker's confirms fall into reads (about 1%).
"""

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))


def child(root, events, deliver, broker):
    """One counted run: publish `events` into a parked queue, then (deliver) consume them."""
    sys.path[:0] = [os.path.join(root, "bench"), root]
    from twisted.internet import defer, task

    from bench_events import in_window, start_container, start_logging, stop_container

    start_logging()

    @defer.inlineCallbacks
    def run(reactor):
        from ion.core.process.process import Process
        from ion.services.dm.distribution.events import InfoLoggingEventPublisher, InfoLoggingEventSubscriber
        from ion.services.dm.distribution.publisher_subscriber import SubscriberFactory

        container = yield start_container(broker, "instructions-%d" % os.getpid())
        proc = Process(spawnargs={"proc-name": "bench-instructions"})
        yield proc.spawn()
        done, seen = defer.Deferred(), []

        def handler(data):
            seen.append(None)
            if len(seen) == events:
                done.callback(None)

        subscriber = yield SubscriberFactory(process=proc).build(
            subscriber_type=InfoLoggingEventSubscriber, origin="counted", handler=handler,
            queue_name="parked-%d" % os.getpid(), durable=False, auto_delete=False)
        queue = subscriber.queue  # deleted at the end (a RabbitMQ one would outlive this run)
        yield subscriber._recv.deactivate()  # the queue and its binding stay: events wait in it
        publisher = InfoLoggingEventPublisher(process=proc, origin="counted")
        yield proc.register_life_cycle_object(publisher)
        yield in_window(events, 100, lambda n: publisher.create_and_publish_event(
            name="bench event", description="event %d" % n))
        if deliver:
            yield subscriber._recv.activate()
            yield done
        yield container.exchange_manager.connection.queue_delete(queue)
        yield proc.terminate()
        yield stop_container(container)

    task.react(run)


def counted(root, events, deliver, broker):
    """Instructions of one run under callgrind."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, os.path.abspath(__file__),
            "--child", "--root", root, "--events", str(events), "--broker", broker] + (["--deliver"] if deliver else [])
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode or not found:
        raise SystemExit("the counted run failed:\n" + result.stdout + result.stderr[-3000:])
    return int(found.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1000, help="events in the smaller runs (default 1000)")
    parser.add_argument("--large", type=int, default=3000, help="events in the larger runs (default 3000)")
    parser.add_argument("--root", default=os.path.dirname(HERE), help="the checkout to count (default: this one)")
    parser.add_argument("--broker", default="memory", help="memory (the default) or a RabbitMQ amqp:// URL")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--deliver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = os.path.abspath(args.root)
    if args.child:
        child(root, args.events, args.deliver, args.broker)
        return
    if args.large <= args.small:
        parser.error("--large must be more than --small")
    started = time.time()
    runs = [(args.small, False), (args.large, False), (args.small, True), (args.large, True)]
    with ThreadPoolExecutor(2) as pool:
        small_pub, large_pub, small_both, large_both = pool.map(lambda run: counted(root, *run, args.broker), runs)
    per_publish = (large_pub - small_pub) / (args.large - args.small)
    per_both = (large_both - small_both) / (args.large - args.small)
    where = "the embedded broker" if args.broker == "memory" else args.broker
    print("%s: instructions per event on %s (%d - %d events, %.0f s)"
          % (root, where, args.large, args.small, time.time() - started))
    print("  create_and_publish_event        %9.0f" % per_publish)
    print("  delivery to the subscriber      %9.0f" % (per_both - per_publish))
    print("  both (one event end to end)     %9.0f" % per_both)


if __name__ == "__main__":
    main()
