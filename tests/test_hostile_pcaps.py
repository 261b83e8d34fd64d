"""Capture files from strangers: whatever they hold, `kalab analyze` answers, never a traceback.

First each defect that hostile pcaps found, in a test of its own. Then the
corpus: a few real-looking captures built with scapy (a keep-alive
connection, a chunked response, pipelining, IPv6 on Linux cooked capture,
pcapng) and hundreds of seeded variants of them. Each variant goes through
`kalab analyze` in this process (`cli.main`, for speed), with and without
``--json``, and a sample through the real command: exit 0, 2 or 3 only, no
traceback, every JSON strict (no NaN or Infinity), and a file cut short
exits 2 naming the byte where its record starts.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from kalab import evidence
from kalab.pcap import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2

T0 = 1_700_000_000.0
ETHERNET, SLL2 = LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2
GET = b"GET /%s HTTP/1.1\r\nHost: lab\r\n\r\n"
KEEP_ALIVE = b"Connection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\n"


def ok(body: bytes = b"ok", headers: bytes = KEEP_ALIVE) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), headers, body)


# --- captures, built as tcpdump and dumpcap would write them


def connection(exchanges: list[tuple[list[bytes], list[bytes]]], client: str = "10.0.0.1",
               server: str = "10.0.0.2", start: float = T0) -> list[tuple[float, object]]:
    """A TCP connection carrying each exchange (the client's segments, then the server's),
    closed by the server after five idle seconds: (capture time, IP packet) pairs."""
    ip = IPv6 if ":" in client else IP
    cport, sport = 40000, 8080
    seqs = {"c": 1000, "s": 5000}
    packets: list[tuple[float, object]] = []
    t = start

    def send(side: str, flags: str, data: bytes = b"") -> None:
        nonlocal t
        src, dst, a, b = (client, server, cport, sport) if side == "c" else \
            (server, client, sport, cport)
        other = "s" if side == "c" else "c"
        packet = ip(src=src, dst=dst) / TCP(sport=a, dport=b, flags=flags, seq=seqs[side],
                                            ack=seqs[other] if "A" in flags else 0)
        packets.append((t, packet / Raw(load=data) if data else packet))
        seqs[side] = (seqs[side] + len(data) + (1 if "S" in flags or "F" in flags else 0))
        t += 0.001

    send("c", "S")
    send("s", "SA")
    send("c", "A")
    for up, down in exchanges:
        t += 0.05
        for piece in up:
            send("c", "PA", piece)
        for piece in down:
            send("s", "PA", piece)
        send("c", "A")
    t += 5
    send("s", "FA")
    send("c", "FA")
    send("s", "A")
    return packets


def framed(linktype: int, packet: object) -> bytes:
    if linktype == SLL2:  # protocol, reserved, ifindex, hatype, pkttype, address length
        proto = 0x86DD if packet.version == 6 else 0x0800
        return struct.pack("!HHIHBB8s", proto, 0, 1, 1, 0, 6, b"\x02" * 6) + bytes(packet)
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / packet)


def classic(packets: list[tuple[float, object]], linktype: int = ETHERNET,
            snaplen: int = 262144) -> tuple[bytes, list[int]]:
    """A microsecond pcap, and where each of its records starts."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))
    starts = []
    for ts, packet in packets:
        frame = packet if isinstance(packet, bytes) else framed(linktype, packet)
        starts.append(len(out))
        sec = int(ts)
        out += struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(frame), len(frame))
        out += frame
    return bytes(out), starts


def block(kind: int, body: bytes) -> bytes:
    """A pcapng block: its type, its length before and after, the body padded to 32 bits."""
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


NANOSECONDS = option(9, b"\x09") + option(0, b"")  # if_tsresol 10^-9 s, as dumpcap writes


def pcapng(packets: list[tuple[float, object]], linktype: int = ETHERNET,
           options: bytes = NANOSECONDS, tick: float = 1e-9) -> tuple[bytes, list[int]]:
    """A pcapng file (section header, one interface, enhanced packets of ``tick`` seconds),
    and where each of its blocks starts."""
    out = bytearray(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
    starts = [0, len(out)]
    out += block(1, struct.pack("<HHI", linktype, 0, 262144) + options)
    for ts, packet in packets:
        frame = packet if isinstance(packet, bytes) else framed(linktype, packet)
        ticks = round(ts / tick)
        starts.append(len(out))
        out += block(6, struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame),
                                    len(frame)) + frame)
    return bytes(out), starts


def keep_alive(paths: tuple[str, ...] = ("a", "b", "c"), **where) -> list[tuple[float, object]]:
    return connection([([GET % p.encode()], [ok(p.encode())]) for p in paths], **where)


# --- each defect that hostile pcaps found, in a test of its own


def analysis_of(tmp_path, data: bytes) -> evidence.WireAnalysis:
    path = tmp_path / "hostile.pcap"
    path.write_bytes(data)
    return evidence.analyze_capture(path)


def test_a_snap_length_of_4_gib_is_no_licence_for_a_record_of_4_gib(tmp_path):
    # The header's snap length raised the record limit: a record of 4 GiB was read as
    # one allocation (a MemoryError where memory is short) before being found cut short.
    data, starts = classic(keep_alive(), snaplen=0xFFFFFFFF)
    second = starts[1]
    for length in (16 * 262144 + 1, 0xFFFFFFF0):
        hostile = bytearray(data)
        struct.pack_into("<I", hostile, second + 8, length)
        analysis = analysis_of(tmp_path, bytes(hostile))
        assert str(analysis.error).endswith(f"byte {second}: record length {length} is corrupt")
        assert analysis.records == 1
    # Up to the bound, a big snap length is taken at its word (only records use it).
    frame = framed(ETHERNET, IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2))
    big, _ = classic([*keep_alive(), (T0 + 9, frame + bytes(300_000))], snaplen=0xFFFFFFFF)
    assert analysis_of(tmp_path, big).error is None


def test_pcapng_blocks_shorter_than_their_fields_are_corrupt(tmp_path):
    # Each was read past its block: a struct.error or an IndexError, a traceback.
    data, starts = pcapng(keep_alive())
    idb, first = starts[1], starts[2]
    section = data[:idb]
    interface = lambda options: block(1, struct.pack("<HHI", 1, 0, 0) + options)  # noqa: E731
    cases = {
        "if_tsresol without its value": (section + interface(struct.pack("<HH", 9, 1)),
                                         idb, "interface option 9 runs past its block"),
        "if_tsoffset of 4 bytes, not 8": (section + interface(struct.pack("<HH", 14, 8)
                                                              + b"\0" * 4),
                                          idb, "interface option 14 runs past its block"),
        "an enhanced packet of 12 bytes at the end": (data[:first] + block(6, b""), first,
                                                      "corrupt block length 12"),
        "an interface of 12 bytes": (section + block(1, b""), idb, "corrupt block length 12"),
        "a simple packet of 12 bytes": (data[:first] + block(3, b""), first,
                                        "corrupt block length 12"),
    }
    for name, (hostile, offset, message) in cases.items():
        analysis = analysis_of(tmp_path, hostile)
        assert str(analysis.error).endswith(f"byte {offset}: {message}"), name


def test_absurd_pcapng_clocks_are_corrupt(tmp_path):
    packets = keep_alive()
    data, starts = pcapng(packets)
    for options, what in [(option(9, b"\x14"), "timestamp resolution 10^-20 s is absurd"),
                          (option(9, b"\xc0"), "timestamp resolution 2^-64 s is absurd"),
                          (option(9, b"\x7f"), "timestamp resolution 10^-127 s is absurd")]:
        analysis = analysis_of(tmp_path, pcapng(packets, options=options)[0])
        assert str(analysis.error).endswith(f"byte {starts[1]}: {what}"), what
    # Nanoseconds read as seconds, or offset by 2^62 s either way: before 1970 or after
    # the year 9999, which no report can show.
    for options in (option(9, b"\x00"), option(14, struct.pack("<q", -2**62)),
                    option(14, struct.pack("<q", 2**62))):
        hostile, where = pcapng(packets, options=options)
        analysis = analysis_of(tmp_path, hostile)
        assert "is absurd (not between the years 1970 and 9999)" in str(analysis.error)
        assert analysis.error.offset == where[2] and analysis.records == 0
    # The finest resolutions Wireshark reads are read (64 bits of them last 1.8 s).
    early = [(i * 1e-3, packet) for i, (_, packet) in enumerate(packets)]
    for options, tick in [(option(9, b"\x13"), 1e-19), (option(9, b"\xbf"), 2.0**-63)]:
        analysis = analysis_of(tmp_path, pcapng(early, options=options, tick=tick)[0])
        assert analysis.error is None
        assert analysis.connections[0].established_at == pytest.approx(1e-3, abs=1e-12)


def strict_json(text: str | bytes) -> object:
    """json.loads, refusing NaN and Infinity as JavaScript's JSON.parse does."""
    def refuse(word: str) -> None:
        raise ValueError(f"not strict JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_every_way_of_writing_the_report_writes_strict_json(tmp_path, monkeypatch):
    # json wrote Infinity and NaN, which strict parsers refuse; orjson writes null, and
    # a record with an infinite timeout was sent to json to match it.
    from kalab import report

    analysis = analysis_of(tmp_path, classic(keep_alive())[0])
    connections, requests = analysis.connections, analysis.requests
    nan, inf = float("nan"), float("inf")
    requests[0].advertised_timeout = inf
    requests[1].client = {"sent_at": nan, "tries": [inf, 1.5, {"lag": -inf}]}
    connections[0].enforced_minus_advertised = -inf
    run = report.EngineRun(engine="capture", kind="unknown", description="x", version=None,
                           listen=None, options={"ports": [8080], "idle": nan},
                           capture=report.Capture(started_at=inf), connections=connections,
                           requests=requests, client_errors=[connections[0], {"at": nan}])
    document = report.Report(schema=report.SCHEMA, scenario=None, name="x", runtime="analyze",
                             started_at=T0, finished_at=nan, runs=[run], verdict="observed",
                             exit_code=0)
    # What the document says, every number JSON cannot write as null.
    expected = json.loads(json.dumps(dataclasses.asdict(document)), parse_constant=lambda _: None)
    written = {"orjson": report.to_json_bytes(document)}
    monkeypatch.setattr(report, "_HELPED_MIN", 1)  # the first list of records to a helper
    written["orjson, helper"] = report.to_json_bytes(document, parallel=True)
    monkeypatch.setattr(report, "orjson", None)
    written["json, helper"] = report.to_json_bytes(document, parallel=True)
    monkeypatch.setattr(report, "_BOUNDARY", b"no such bytes")  # a record at a time
    written["json, a record at a time"] = report.to_json_bytes(document)
    monkeypatch.undo()
    monkeypatch.setattr(report, "orjson", None)
    written["json"] = report.to_json_bytes(document)
    stream = io.BytesIO()  # as report.write and `kalab analyze --json` write it
    report.write_json(document, stream)
    written["json, streamed"] = stream.getvalue()
    assert len(set(written.values())) == 1, written
    assert strict_json(written["json"]) == expected
    assert expected["runs"][0]["requests"][0]["advertised_timeout"] is None


def test_handoff_files_are_strict_json(tmp_path):
    from kalab import handoff

    path = tmp_path / handoff.CLIENT_RECORDS
    handoff.write_json(path, {"requests": [{"sent_at": float("nan"), "lag": [float("-inf")]}],
                              "count": 1, "ratio": 0.5})
    assert strict_json(path.read_text()) == {"requests": [{"sent_at": None, "lag": [None]}],
                                             "count": 1, "ratio": 0.5}
