"""The floor under any analysis in Python that reads as kalab reads: the time to read a
pcap and touch each segment once, and nothing else.

    .venv/bin/python bench/floor.py PCAP

It reads as `kalab analyze` does (`kalab.pcap_fast.FastSegmentReader`: pure ACKs
that change nothing left out, the reading and decoding in a forked second process,
on the second core), and in this process does for each segment the least an
analysis must: find its connection by four-tuple (a new one for a tuple not seen)
and note its time and flags. No HTTP is parsed, no record made, nothing written:
`capture_and_analysis.py` times it beside tshark and kalab, so that a target for
kalab's time can be set against what Python can do at all on this machine. It
prints its segments and connections.
"""

from __future__ import annotations

import gc
import sys

from kalab.pcap_fast import FastSegmentReader


class Touched:
    """The least an analysis keeps of a connection: its last time, flags, segments."""

    __slots__ = ("last_seen_at", "flags", "segments")

    def __init__(self) -> None:
        self.last_seen_at, self.flags, self.segments = 0.0, 0, 0


def touch_every_segment(pcap: str) -> tuple[int, int]:
    """(segments, connections) of ``pcap``, each segment looked up and noted once."""
    gc.disable()  # as kalab analyze does: many small objects, no cycles
    live: dict[tuple, Touched] = {}
    segments = 0
    for batch in FastSegmentReader(pcap, skip_acks=True).background_batches():
        for ts, src, sport, dst, dport, flags, _, _, _, _ in batch:
            conn = live.get((src, sport, dst, dport))
            if conn is None:
                conn = live[(src, sport, dst, dport)] = live[(dst, dport, src, sport)] = Touched()
            conn.last_seen_at = ts
            conn.flags |= flags
            conn.segments += 1
        segments += len(batch)
    return segments, len(live) // 2


if __name__ == "__main__":
    print(*touch_every_segment(sys.argv[1]))
