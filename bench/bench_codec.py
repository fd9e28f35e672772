"""
Micro-benchmark of the Structure codec on the three-object event of the hot path:
IonMsg -> EventMessage -> ResourceLifecycleEventMessage.

    python bench/bench_codec.py [ROUNDS]

Prints microseconds per event for pack (encode_content) and unpack (decode_content).
"""

import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ion.core.messaging.message_client import new_message_instance  # noqa: E402
from ion.core.object import speedups  # noqa: E402
from ion.core.object.codec import decode_content, encode_content  # noqa: E402


def sample_event():
    event = new_message_instance(2322)
    event.name = "TestEvent"
    event.origin = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
    event.datetime = 1322449200.25
    event.status = event.Status.NO_CACHE
    payload = event.CreateObject(2323)
    payload.state = payload.State.ACTIVE
    event.additional_data = payload
    return event


def best_us(statement, rounds):
    """Best of five runs, in microseconds per call: the least disturbed by the rest of the machine."""
    return min(timeit.repeat(statement, number=rounds, repeat=5)) / rounds * 1e6


def main(rounds=20000):
    event = sample_event()
    content, encoding = encode_content(event)
    pack_us = best_us(lambda: encode_content(event), rounds)
    unpack_us = best_us(lambda: decode_content(content, encoding), rounds)
    print("event content: %d bytes, 3 objects; compiled speedups: %s" % (len(content), speedups.COMPILED))
    print("pack:   %6.1f us per event" % pack_us)
    print("unpack: %6.1f us per event" % unpack_us)


if __name__ == "__main__":
    main(*map(int, sys.argv[1:2]))
