"""The fast reader (`kalab.pcap_fast`) hands on what the reference (`kalab.pcap`) does.

The analysis reads with `FastSegmentReader`; `SegmentReader` says each step
once. On captures built with scapy (every link type, VLAN tags, a
big-endian file, pcapng, IP and TCP options, frames cut at short snap
lengths, files cut short) and on captures hypothesis draws, the two must
hand on the same segments, count the same records, truncations and pure
ACKs left out, and stop with the same error at the same byte. The hostile
corpus goes through both in tests/test_hostile_pcaps.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, IPOption_NOP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import PcapNgWriter
from test_pcap_formats import big_endian, cut_at, mixed_capture, write

from kalab.analyzer import Analyzer
from kalab.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PcapError,
    SegmentReader,
)
from kalab.pcap_fast import FastSegmentReader

LINKTYPES = (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL,
             LINKTYPE_LOOP, LINKTYPE_RAW)
OPTIONS = ({}, {"skip_acks": True}, {"skip_acks": True, "ports": {9090}})


def everything(kind: type[SegmentReader], path: Path, followed: int | None = None,
               **options) -> dict:
    """All that a reader of ``kind`` hands on and says: its segments (whatever lists they
    came in), the error that ended it, and every counter. ``followed``: the directions its
    pure-ACK filter follows at most (`SegmentReader.tuples_followed`)."""
    reader = kind(path, **options)
    if followed is not None:
        reader.tuples_followed = followed
    segments, error = [], None
    try:
        for batch in reader.batches():
            segments += batch
    except PcapError as exc:
        error = (str(exc), exc.offset)
    return {"segments": segments, "error": error, "records": reader.records,
            "handed on": reader.segments, "skipped": reader.skipped,
            "truncated": reader.truncated, "headers cut": reader.headers_cut,
            "snaplen": reader.snaplen}


def assert_alike(path: Path, followed: int | None = None, **options) -> dict:
    fast = everything(FastSegmentReader, path, followed, **options)
    reference = everything(SegmentReader, path, followed, **options)
    assert fast == reference, (path, followed, options)
    return reference


def captures(folder: Path) -> list[Path]:
    """The same conversations on every link type, VLAN-tagged, big-endian."""
    paths = [write(folder / f"{linktype}.pcap", mixed_capture(), linktype)
             for linktype in LINKTYPES]
    paths.append(write(folder / "vlan.pcap", mixed_capture(), vlan=True))
    (folder / "be.pcap").write_bytes(big_endian(paths[0].read_bytes()))
    return [*paths, folder / "be.pcap"]


@pytest.mark.parametrize("snaplen", [14, 34, 40, 54, 58, 60, 66, 74, 96, 128])
def test_frames_cut_at_short_snap_lengths_read_alike(tmp_path, snaplen):
    # Cut in the link header, in the IP header, in the TCP header, in the payload.
    for source in captures(tmp_path):
        if source.name == "be.pcap":
            continue  # `cut_at` writes little-endian files
        path = cut_at(source, tmp_path / f"cut-{snaplen}-{source.name}", snaplen)
        for options in OPTIONS:
            read = assert_alike(path, **options)
            assert read["snaplen"] == snaplen
            assert read["truncated"] > 0 or source.name != f"{LINKTYPE_ETHERNET}.pcap"
    # Every TCP header cut on Ethernet, the IP header kept: nothing handed on, all counted.
    if 34 <= snaplen <= 40:
        read = assert_alike(tmp_path / f"cut-{snaplen}-{LINKTYPE_ETHERNET}.pcap")
        assert read["segments"] == [] and read["headers cut"] == read["truncated"] > 0


def test_every_link_type_reads_alike_whole_and_cut_short(tmp_path):
    for path in captures(tmp_path):
        data = path.read_bytes()
        for options in OPTIONS:
            read = assert_alike(path, **options)
            assert read["error"] is None and read["segments"]
        for end in (len(data) - 1, len(data) - 30, 30, 24 + 8):  # in a record, in its header
            short = tmp_path / f"short-{end}-{path.name}"
            short.write_bytes(data[:end])
            assert assert_alike(short, skip_acks=True)["error"] is not None


def test_pcapng_reads_as_the_classic_pcap_of_the_same_frames(tmp_path):
    # pcapng goes through the reference reader in both: what matters is that it
    # gives the segments the fast reader gives for the same frames in a classic pcap.
    classic = write(tmp_path / "x.pcap", mixed_capture())
    ng = tmp_path / "x.pcapng"
    with PcapNgWriter(str(ng)) as writer:
        for ts, packet in mixed_capture():
            frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / packet
            frame.time = ts
            writer.write(frame)
    for options in OPTIONS:
        fast_classic = everything(FastSegmentReader, classic, **options)
        ng_read = assert_alike(ng, **options)
        assert [s._replace(ts=0) for s in ng_read["segments"]] == \
            [s._replace(ts=0) for s in fast_classic["segments"]]
        assert [s.ts for s in ng_read["segments"]] == pytest.approx(
            [s.ts for s in fast_classic["segments"]], abs=2e-6, rel=0)  # both in µs


# --- captures hypothesis draws

# (client, client port, server, server port, the client's first sequence number, the
# server's): two IPv4 connections (one whose sequence numbers wrap) and an IPv6 one.
CONNECTIONS = (("10.0.0.1", 40000, "10.0.0.2", 8080, 1000, 0xFFFFFFF0),
               ("10.0.0.1", 40001, "10.0.0.3", 9090, 0xFFFFFFFA, 5000),
               ("fd00::1", 40002, "fd00::2", 8080, 77, 88))
FLAGS = ("S", "SA", "A", "A", "A", "A", "A", "PA", "PA", "FA", "FA", "R", "RA", "F", "SF", "")

segment = st.tuples(
    st.sampled_from((0, 0, 0, 1, 2)),  # which connection: mostly one, for its states
    st.booleans(),  # from the client?
    st.sampled_from(FLAGS),
    # The sequence number: None for where its side has reached (mostly), else an offset
    # from that side's first: a retransmission, a probe, a hole.
    st.one_of(st.none(), st.none(), st.integers(-2, 60)),
    st.integers(0, 60),  # acknowledgment number, from the other side's first
    st.sampled_from((0, 0, 1, 7, 40)),  # payload bytes
    st.booleans(),  # IP options (IPv4): off the inlined path
    st.booleans(),  # TCP options: a longer TCP header, still on it
)
# Mostly whole files of Ethernet frames whose pure ACKs may be left out: where the fast
# reader's own code runs.
capture = st.fixed_dictionaries({
    "segments": st.lists(segment, min_size=4, max_size=60),
    "link": st.sampled_from((LINKTYPE_ETHERNET,) * 4 + (*LINKTYPES[1:], "vlan")),
    "snaplen": st.one_of(st.none(), st.none(), st.integers(14, 120)),
    "cut_end": st.sampled_from((0, 0, 0, 1, 17, 40)),  # bytes cut off the file's end
    "options": st.sampled_from(OPTIONS[1:] * 2 + OPTIONS[:1]),
})


def build(drawn: dict, folder: Path) -> Path:
    packets = []
    reached: dict[tuple[int, bool], int] = {}  # where each side's sequence numbers are
    for n, (which, up, flags, seq, ack, length, ip_options, tcp_options) in enumerate(
            drawn["segments"]):
        client, cport, server, sport, cisn, sisn = CONNECTIONS[which]
        src, sp, dst, dp = (client, cport, server, sport) if up else (server, sport, client,
                                                                      cport)
        mine, theirs = (cisn, sisn) if up else (sisn, cisn)
        seq = reached.get((which, up), mine) if seq is None else mine + seq
        reached[(which, up)] = seq + length + ("S" in flags or "F" in flags)
        ip = IPv6(src=src, dst=dst) if ":" in src else \
            IP(src=src, dst=dst, options=[IPOption_NOP()] * 4 if ip_options else [])
        tcp = TCP(sport=sp, dport=dp, flags=flags, seq=seq & 0xFFFFFFFF,
                  ack=(theirs + ack) & 0xFFFFFFFF,
                  options=[("NOP", None)] * 4 if tcp_options else [])
        packets.append((1_700_000_000.0 + n * 0.001, ip / tcp / Raw(load=b"x" * length)))
    link = drawn["link"]
    path = write(folder / "drawn.pcap", packets, LINKTYPE_ETHERNET if link == "vlan" else link,
                 vlan=link == "vlan")
    if drawn["snaplen"] is not None:
        path = cut_at(path, folder / "drawn-cut.pcap", drawn["snaplen"])
    if drawn["cut_end"]:
        data = path.read_bytes()
        path.write_bytes(data[:max(24, len(data) - drawn["cut_end"])])
    return path


def _on_one_side(*steps: tuple[str, int, bool]) -> list[tuple]:
    """Segments from the first connection's client: (flags, payload bytes, TCP options),
    each at the sequence number its side has reached."""
    return [(0, True, flags, None, 0, length, False, options) for flags, length, options in steps]


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(capture)
# A pure ACK after a FIN, where the FIN took its sequence number: left out.
@example({"segments": _on_one_side(("S", 0, False), ("A", 0, False), ("PA", 7, False),
                                   ("FA", 0, False), ("A", 0, False), ("A", 0, False)),
          "link": LINKTYPE_ETHERNET, "snaplen": None, "cut_end": 0,
          "options": {"skip_acks": True}})
# Frames cut in their TCP options: the payload cut is counted from the options' end.
@example({"segments": _on_one_side(("S", 0, True), ("PA", 40, True), ("A", 0, True),
                                   ("PA", 40, True), ("A", 0, True)),
          "link": LINKTYPE_ETHERNET, "snaplen": 56, "cut_end": 0,
          "options": {"skip_acks": True}})
def test_drawn_captures_read_alike(tmp_path, drawn):
    path = build(drawn, tmp_path)
    assert_alike(path, **drawn["options"])
    assert_alike(path, followed=2, **drawn["options"])  # the table emptied again and again


# --- the pure-ACK filter's table: bounded, emptied when full, and no record changes

COURSE = sorted(Path(__file__).resolve().parent.parent.glob(
    "course/*/reference/*/capture.pcap"))


def records_of(segments: list) -> tuple:
    analyzer = Analyzer()
    analyzer.feed_all(segments)
    return analyzer.finish()


@pytest.mark.parametrize("followed", [2, 3, 4, 6])
def test_a_full_table_is_emptied_alike_and_no_record_changes(tmp_path, followed):
    # Forgetting a four-tuple whose connection goes on must not leave out a pure ACK the
    # analyzer would count: with a table of 4 directions, the mixed capture's keep-alive
    # probe was left out when forgetting set a direction back to "sent nothing yet".
    assert len(COURSE) >= 10
    for path in [*captures(tmp_path), *COURSE]:
        bounded = assert_alike(path, followed, skip_acks=True)
        room = everything(SegmentReader, path, skip_acks=True)
        assert room["skipped"] >= bounded["skipped"], path  # it forgets, it never guesses
        every = everything(SegmentReader, path)
        assert records_of(bounded["segments"]) == records_of(every["segments"]), path


def test_the_table_is_emptied_only_when_full(tmp_path):
    path = write(tmp_path / "x.pcap", mixed_capture())  # 3 four-tuples: 6 directions
    room = everything(SegmentReader, path, skip_acks=True)
    # Full when a new four-tuple comes and finds as many directions as it may follow.
    assert everything(SegmentReader, path, followed=5, skip_acks=True) == room
    forgot = everything(SegmentReader, path, followed=4, skip_acks=True)
    assert forgot["skipped"] < room["skipped"]
