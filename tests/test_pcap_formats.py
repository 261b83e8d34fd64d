"""Every capture file kalab meets: formats, link types, IPv6, several servers, damage.

The same conversation, written as Ethernet, Linux cooked (SLL and SLL2),
loopback (NULL, LOOP), raw IP, VLAN-tagged, pcapng and nanosecond pcap,
must give the same records. Real captures by tcpdump and dumpcap of real
traffic (IPv4 and IPv6 servers at once) must agree with each other and with
tshark. A file cut short or corrupt ends with an error naming the byte, exit
2, and the report of what came before it.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import json
import lzma
import marshal
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import tshark_referee
from conftest import KALAB, ROOT, run_kalab
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from kalab import evidence
from kalab.analyzer import Analyzer, Segment
from kalab.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PcapError,
    PcapWriter,
    SegmentReader,
    read_frames,
)
from kalab.pcap_fast import FastSegmentReader

T0 = 1_700_000_000.0
GET = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


def sides(client: str, server: str, cport: int, sport: int) -> tuple[Callable, Callable]:
    """(a packet from the client, one from the server) of a four-tuple: flags, seq, ack,
    payload in; an IP packet out."""
    ip = IPv6 if ":" in client else IP

    def up(flags: str, seq: int, ack: int, data: bytes = b""):
        return ip(src=client, dst=server) / TCP(sport=cport, dport=sport, flags=flags,
                                                 seq=seq, ack=ack) / Raw(load=data)

    def down(flags: str, seq: int, ack: int, data: bytes = b""):
        return ip(src=server, dst=client) / TCP(sport=sport, dport=cport, flags=flags,
                                                 seq=seq, ack=ack) / Raw(load=data)

    return up, down


def conversation(client: str, server: str, cport: int, sport: int, start: float,
                 paths: list[str]) -> list[tuple[float, object]]:
    """One keep-alive connection carrying ``paths``, then idle with three TCP keep-alive
    probes (two zero-length from the client, one of a byte from the server), each answered
    by an ACK, closed by the server, as IP packets."""
    up, down = sides(client, server, cport, sport)
    cseq, sseq, t = 1000, 5000, start
    packets = [(t, up("S", cseq, 0)), (t + 0.001, down("SA", sseq, cseq + 1)),
               (t + 0.002, up("A", cseq + 1, sseq + 1))]
    cseq, sseq, t = cseq + 1, sseq + 1, t + 0.01
    for path in paths:
        request = GET % path.encode()
        packets += [(t, up("PA", cseq, sseq, request)),
                    (t + 0.001, down("PA", sseq, cseq + len(request), OK)),
                    (t + 0.002, up("A", cseq + len(request), sseq + len(OK)))]
        cseq, sseq, t = cseq + len(request), sseq + len(OK), t + 0.1
    for when in (0.3, 0.5):
        packets += [(t + when, up("A", cseq - 1, sseq)), (t + when + 0.001, down("A", sseq, cseq))]
    packets += [(t + 0.7, down("A", sseq - 1, cseq, b"\x00")), (t + 0.701, up("A", cseq, sseq))]
    packets += [(t + 1, down("FA", sseq, cseq)), (t + 1.001, up("FA", cseq, sseq + 1)),
                (t + 1.002, down("A", sseq + 1, cseq + 1))]
    return packets


def mixed_capture() -> list[tuple[float, object]]:
    """Two IPv4 servers on two ports and an IPv6 one, interleaved."""
    packets = (conversation("10.0.0.1", "10.0.0.2", 40000, 8080, T0, ["a1", "a2"])
               + conversation("10.0.0.1", "10.0.0.3", 40001, 9090, T0 + 0.005, ["b1"])
               + conversation("fd00::1", "fd00::2", 40002, 8080, T0 + 0.0075, ["c1", "c2", "c3"]))
    return sorted(packets, key=lambda p: p[0])


def cooked(linktype: int, packet) -> bytes:
    """The link-layer header ``linktype`` puts before an IP packet."""
    v6 = packet.version == 6
    proto = 0x86DD if v6 else 0x0800
    if linktype == LINKTYPE_ETHERNET:
        return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / packet)
    if linktype == LINKTYPE_LINUX_SLL:  # pkttype, hatype, halen, address, protocol
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6, proto) + bytes(packet)
    if linktype == LINKTYPE_LINUX_SLL2:  # protocol, reserved, ifindex, hatype, pkttype, ...
        return struct.pack("!HHIHBB8s", proto, 0, 1, 1, 0, 6, b"\x02" * 6) + bytes(packet)
    if linktype == LINKTYPE_NULL:  # the family in the writer's byte order
        return struct.pack("<I", 30 if v6 else 2) + bytes(packet)
    if linktype == LINKTYPE_LOOP:  # the family in network byte order
        return struct.pack("!I", 24 if v6 else 2) + bytes(packet)
    assert linktype == LINKTYPE_RAW
    return bytes(packet)


def write(path: Path, packets, linktype: int = LINKTYPE_ETHERNET, vlan: bool = False) -> Path:
    with PcapWriter(path, linktype) as writer:
        for ts, packet in packets:
            if vlan:
                frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                              / Dot1Q(vlan=7) / packet)
            else:
                frame = cooked(linktype, packet)
            writer.write(ts, frame)
    return path


def records(path: Path, ports: set[int] | None = None, wire_stories: bool = False
            ) -> tuple[list, list]:
    analysis = evidence.analyze_capture(path, ports, wire_stories=wire_stories)
    assert analysis.error is None
    return analysis.connections, analysis.requests


def summary(path: Path, ports: set[int] | None = None):
    connections, requests = records(path, ports)
    return ([(c.client, c.server, c.first_fin_by, c.requests, c.complete, c.keepalive_probes)
             for c in connections],
            [(r.id, r.connection, r.depth, r.target, r.status) for r in requests])


EXPECTED = (
    [("10.0.0.1:40000", "10.0.0.2:8080", "server", ["w1", "w4"], True, 3),
     ("10.0.0.1:40001", "10.0.0.3:9090", "server", ["w2"], True, 3),
     ("[fd00::1]:40002", "[fd00::2]:8080", "server", ["w3", "w5", "w6"], True, 3)],
    [("w1", 1, 1, "/a1", 200), ("w2", 2, 1, "/b1", 200), ("w3", 3, 1, "/c1", 200),
     ("w4", 1, 2, "/a2", 200), ("w5", 3, 2, "/c2", 200), ("w6", 3, 3, "/c3", 200)])


@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2,
                                      LINKTYPE_NULL, LINKTYPE_LOOP, LINKTYPE_RAW])
def test_every_link_type_gives_the_same_records(tmp_path, linktype):
    path = write(tmp_path / "x.pcap", mixed_capture(), linktype)
    assert summary(path) == EXPECTED
    assert {f[0] for f in read_frames(path)} == {linktype}


def test_vlan_tagged_ethernet(tmp_path):
    assert summary(write(tmp_path / "vlan.pcap", mixed_capture(), vlan=True)) == EXPECTED


@pytest.mark.skipif(shutil.which("editcap") is None, reason="editcap is not installed")
@pytest.mark.parametrize("tool, form", [("editcap", "pcapng"), ("editcap", "nsecpcap"),
                                        ("tshark", "pcapng")])
def test_converted_files_give_the_same_records_and_times(tmp_path, tool, form):
    source = write(tmp_path / "x.pcap", mixed_capture())
    target = tmp_path / f"x.{form}"
    argv = ["editcap", "-F", form, str(source), str(target)] if tool == "editcap" else \
        ["tshark", "-r", str(source), "-F", form, "-w", str(target)]
    subprocess.run(argv, check=True, capture_output=True)
    assert target.read_bytes()[:4] == (b"\x0a\x0d\x0d\x0a" if form == "pcapng"
                                       else b"\x4d\x3c\xb2\xa1")
    assert summary(target) == EXPECTED
    ours, theirs = records(source), records(target)
    assert [c.first_fin_at for c in ours[0]] == pytest.approx(
        [c.first_fin_at for c in theirs[0]], rel=0, abs=1e-6)


def big_endian(little: bytes) -> bytes:
    """The same classic pcap with its file and record headers written big-endian."""
    out = bytearray(struct.pack(">IHHiIII", *struct.unpack("<IHHiIII", little[:24])))
    offset = 24
    while offset < len(little):
        sec, usec, caplen, length = struct.unpack_from("<IIII", little, offset)
        out += struct.pack(">IIII", sec, usec, caplen, length)
        out += little[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen
    return bytes(out)


def test_big_endian_pcap(tmp_path):
    little = write(tmp_path / "le.pcap", mixed_capture())
    big = tmp_path / "be.pcap"
    big.write_bytes(big_endian(little.read_bytes()))
    assert summary(big) == EXPECTED


def test_ports_choose_the_servers(tmp_path):
    path = write(tmp_path / "x.pcap", mixed_capture())
    both = summary(path, {8080, 9090})
    assert both == EXPECTED
    conns, reqs = summary(path, {9090})
    assert conns == [("10.0.0.1:40001", "10.0.0.3:9090", "server", ["w1"], True, 3)]
    assert [r[3] for r in reqs] == ["/b1"]
    done = run_kalab("analyze", str(path), "--port", "8080", "--port", "9090", "--json")
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    assert run["options"]["ports"] == [8080, 9090]
    assert [c["server"] for c in run["connections"]] == ["10.0.0.2:8080", "10.0.0.3:9090",
                                                         "[fd00::2]:8080"]


def test_default_ports_are_those_that_answered_a_syn(tmp_path):
    packets = mixed_capture()
    # A SYN nobody answered, to a port that answered no other: no server of this capture.
    lone = IP(src="10.0.0.1", dst="10.0.0.9") / TCP(sport=40009, dport=7070, flags="S", seq=1)
    packets.insert(3, (T0 + 0.0051, lone))
    path = write(tmp_path / "x.pcap", packets)
    assert summary(path) == EXPECTED
    done = run_kalab("analyze", str(path), "--json")
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    assert run["options"]["ports"] == [8080, 9090]
    assert [c["id"] for c in run["connections"]] == [1, 2, 3]


# --- damage: the error names the byte, the report keeps what came before


def test_truncated_pcap_keeps_what_was_read(tmp_path):
    path = write(tmp_path / "x.pcap", mixed_capture())
    data = path.read_bytes()
    frames = list(read_frames(path))
    # Cut inside the 12th record: eleven whole records stay (three handshakes, then the
    # first request and its response).
    offset = 24 + sum(16 + len(f[2]) for f in frames[:11])
    path.write_bytes(data[:offset + 20])
    analysis = evidence.analyze_capture(path)
    assert isinstance(analysis.error, PcapError)
    assert analysis.error.offset == offset
    assert analysis.records == 11
    assert f"byte {offset}: truncated record" in str(analysis.error)
    assert len(analysis.connections) == 3
    assert [(r.target, r.status) for r in analysis.requests] == [("/a1", 200)]

    done = run_kalab("analyze", str(path), "--json")
    assert done.returncode == 2
    assert f"byte {offset}" in done.stderr and "truncated record" in done.stderr
    report = json.loads(done.stdout)
    assert report["exit_code"] == 2 and report["verdict"] == "inconclusive"
    (run,) = report["runs"]
    assert any(f"cut short at byte {offset}" in p for p in run["capture"]["problems"])
    assert len(run["connections"]) == 3


def test_corrupt_record_length_is_named(tmp_path):
    path = write(tmp_path / "x.pcap", mixed_capture())
    data = bytearray(path.read_bytes())
    first = struct.unpack_from("<I", data, 24 + 8)[0]
    second = 24 + 16 + first
    struct.pack_into("<I", data, second + 8, 0x7FFFFFFF)  # the second record's length
    path.write_bytes(bytes(data))
    done = run_kalab("analyze", str(path))
    assert done.returncode == 2
    assert f"byte {second}: record length 2147483647 is corrupt" in done.stderr
    assert "cut short" in done.stdout  # the summary of the one record before it


@pytest.mark.skipif(shutil.which("editcap") is None, reason="editcap is not installed")
def test_truncated_and_corrupt_pcapng(tmp_path):
    source = write(tmp_path / "x.pcap", mixed_capture())
    ng = tmp_path / "x.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(source), str(ng)], check=True)
    data = ng.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[:len(data) // 2])
    analysis = evidence.analyze_capture(cut)
    assert analysis.error is not None and analysis.records > 0
    assert "truncated block" in str(analysis.error)
    assert data[analysis.error.offset:analysis.error.offset + 4] == struct.pack("<I", 6)
    corrupt = bytearray(data)
    offset = analysis.error.offset
    struct.pack_into("<I", corrupt, offset + 4, 13)  # a block length not a multiple of 4
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(bytes(corrupt))
    done = run_kalab("analyze", str(bad), "--json")
    assert done.returncode == 2
    assert f"byte {offset}: corrupt block length 13" in done.stderr
    assert json.loads(done.stdout)["runs"][0]["connections"]


def test_not_a_capture_is_refused_without_a_report(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a capture\n")
    done = run_kalab("analyze", str(path), "--json")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "byte 0: not a pcap or pcapng file" in done.stderr


# --- pure ACKs: left out where they change nothing, kept where they are all there is


def test_skipping_pure_acks_changes_no_record(tmp_path):
    path = write(tmp_path / "x.pcap", mixed_capture())
    reader = SegmentReader(path, skip_acks=True)
    kept = list(reader)
    everything = list(SegmentReader(path))
    assert reader.skipped == len(everything) - len(kept) > 0
    assert all(not s.payload and not s.flags & 0x07 for s in everything if s not in kept)
    # the zero-length keep-alive probes are pure ACKs too, and are kept
    assert sum(1 for s in kept if not s.payload and s.flags == 0x10 and s.seq == 1000
               + len(GET % b"a1") + len(GET % b"a2")) == 2
    slow, fast = Analyzer(), Analyzer()
    for seg in everything:
        slow.feed(seg)
    for seg in kept:
        fast.feed(seg)
    assert slow.finish() == fast.finish()


def test_a_connection_seen_only_as_a_pure_ack_is_reported(tmp_path):
    packets = conversation("10.0.0.1", "10.0.0.2", 40000, 8080, T0, ["a1"])
    late = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40005, dport=8080, flags="A",
                                                     seq=77, ack=88)
    path = write(tmp_path / "x.pcap", [*packets, (T0 + 5, late)])
    reader = SegmentReader(path, skip_acks=True)
    assert any(s.sport == 40005 for s in reader)  # the first of its four-tuple: handed on
    done = run_kalab("analyze", str(path), "--json")
    assert done.returncode == 3  # a connection whose SYN the capture missed: inconclusive
    run = json.loads(done.stdout)["runs"][0]
    late_conn = run["connections"][-1]
    assert late_conn["client"] == "10.0.0.1:40005" and late_conn["complete"] is False
    assert any("no SYN seen for connection(s) 2" in p for p in run["capture"]["problems"])


# --- memory: the body's bytes pass through, an ended connection's parsers go


def test_memory_does_not_follow_the_packet_count():
    def feed(analyzer: Analyzer, segments: int) -> int:
        tracemalloc.start()
        c, s = ("10.0.0.1", 40000), ("10.0.0.2", 8080)
        analyzer.feed(Segment(T0, *c, *s, 0x02, 100))
        analyzer.feed(Segment(T0, *s, *c, 0x12, 900, 101))
        request = GET % b"big"
        analyzer.feed(Segment(T0, *c, *s, 0x18, 101, 901, request))
        body = b"y" * 1400
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (segments * len(body))
        analyzer.feed(Segment(T0, *s, *c, 0x18, 901, 0, head))
        seq = 901 + len(head)
        for n in range(segments):
            analyzer.feed(Segment(T0 + n * 1e-5, *s, *c, 0x18, seq, 0, body))
            seq += len(body)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    small, large = feed(Analyzer(), 100), feed(Analyzer(), 20_000)  # 140 kB and 28 MB of body
    assert large < small + 64 * 1024, (small, large)


def test_an_ended_connection_lets_its_parsers_go(tmp_path):
    path = write(tmp_path / "x.pcap", conversation("10.0.0.1", "10.0.0.2", 40000, 8080, T0,
                                                   ["a1"]))
    analyzer = Analyzer()
    for seg in SegmentReader(path):
        analyzer.feed(seg)
    (conn,) = {conn for conn, _ in analyzer._live.values()}  # still open: no bound passed
    assert conn.request_stream is conn.response_stream  # the shared "ended" parser
    assert conn.request_stream.mode == "dead"
    (record,), (request,) = analyzer.finish()
    assert record.closed_by == "server" and request.status == 200


# --- real captures: tcpdump (Ethernet, SLL2, SLL, nanoseconds) and dumpcap (pcapng)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def free_port() -> int:
    for port in range(18700, 18800):
        with socket.socket(socket.AF_INET6) as a, socket.socket() as b:
            try:
                a.bind(("::1", port))
                b.bind(("127.0.0.1", port + 100))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18700-18800")


def talk(address: tuple[str, int], family: int, requests: int) -> None:
    with socket.socket(family) as sock:
        sock.settimeout(5)
        sock.connect(address)
        for n in range(requests):
            sock.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
            answer = b""
            while not answer.endswith(b"ok"):
                chunk = sock.recv(4096)
                assert chunk
                answer += chunk


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpdump") is None
                    or shutil.which("dumpcap") is None, reason="needs root, tcpdump, dumpcap")
def test_real_captures_agree_with_each_other_and_with_tshark(tmp_path):
    v6_port = free_port()
    v4_port = v6_port + 100
    servers = [ThreadingHTTPServer(("127.0.0.1", v4_port), Handler),
               V6Server(("::1", v6_port), Handler)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    bpf = f"tcp port {v4_port} or tcp port {v6_port}"
    tools = {
        "ethernet.pcap": ["tcpdump", "-i", "lo", "-w"],
        "sll2.pcap": ["tcpdump", "-i", "any", "-y", "LINUX_SLL2", "-w"],
        "sll.pcap": ["tcpdump", "-i", "any", "-y", "LINUX_SLL", "-w"],
        "nano.pcap": ["tcpdump", "-i", "lo", "--time-stamp-precision", "nano", "-w"],
        "dumpcap.pcapng": ["dumpcap", "-q", "-i", "lo", "-f", bpf, "-w"],
    }
    captures = {}
    try:
        for name, argv in tools.items():
            tail = [] if argv[0] == "dumpcap" else [bpf]
            captures[name] = child = subprocess.Popen(
                [*argv, str(tmp_path / name), *tail], stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True)
            while True:  # until it says it is listening
                line = child.stderr.readline()
                assert line, f"{name}: the capture tool exited"
                if "listening on" in line or "Capturing on" in line:
                    break
        time.sleep(0.2)
        talk(("127.0.0.1", v4_port), socket.AF_INET, 2)
        talk(("::1", v6_port), socket.AF_INET6, 3)
        talk(("127.0.0.1", v4_port), socket.AF_INET, 1)
        time.sleep(1.0)
    finally:
        for child in captures.values():
            child.send_signal(signal.SIGINT)
        for child in captures.values():
            child.communicate(timeout=20)
        for server in servers:
            server.shutdown()
            server.server_close()
    linktypes = {name: next(read_frames(tmp_path / name))[0] for name in tools}
    assert linktypes == {"ethernet.pcap": 1, "sll2.pcap": 276, "sll.pcap": 113, "nano.pcap": 1,
                         "dumpcap.pcapng": 1}
    results = {}
    for name in tools:
        done = run_kalab("analyze", str(tmp_path / name), "--json")
        assert done.returncode == 0, (name, done.stderr)
        (run,) = json.loads(done.stdout)["runs"]
        assert run["options"]["ports"] == sorted([v4_port, v6_port])
        assert tshark_referee.compare(run, tmp_path / name, {v4_port, v6_port}) == [], name
        results[name] = (
            [(c["client"], c["server"], c["first_fin_by"], c["requests"])
             for c in run["connections"]],
            [(r["id"], r["connection"], r["depth"], r["target"], r["status"])
             for r in run["requests"]])
    reference = results["ethernet.pcap"]
    assert all(result == reference for result in results.values()), results
    connections, requests = reference
    assert [c[1] for c in connections] == [f"127.0.0.1:{v4_port}", f"[::1]:{v6_port}",
                                           f"127.0.0.1:{v4_port}"]
    assert [(r[1], r[2], r[3]) for r in requests] == [
        (1, 1, "/0"), (1, 2, "/1"), (2, 1, "/0"), (2, 2, "/1"), (2, 3, "/2"), (3, 1, "/0")]


def test_a_lab_run_whose_pcap_is_cut_short_is_inconclusive(tmp_path):
    from kalab import handoff
    from kalab.scenario import parse

    packets = conversation("10.213.0.2", "10.213.0.1", 40000, 5000, T0, ["keep-alive"])
    data = write(tmp_path / handoff.CAPTURE_PCAP, packets).read_bytes()
    (tmp_path / handoff.CAPTURE_PCAP).write_bytes(data[:-7])  # the observer died mid-write
    handoff.write_json(tmp_path / handoff.CAPTURE_STATS, {
        "interface": "veth", "filter": "tcp port 5000", "pcap": handoff.CAPTURE_PCAP,
        "started_at": T0 - 1, "stopped_at": T0 + 5, "packets": len(packets),
        "duplicates_dropped": 0, "kernel_drops": 0, "problems": []})
    scenario = parse("sessions: [{steps: [get: /keep-alive]}]\n"
                     "engines: [{engine: werkzeug, expect: [connections: 1]}]\n", "lab.yaml")
    run = evidence.engine_run(tmp_path, scenario, scenario.engines[0], "capture.pcap")
    assert run.verdict == "inconclusive"
    assert any("cut short at byte" in p for p in run.capture.problems)
    assert [(r.target, r.status) for r in run.requests] == [("/keep-alive", 200)]


def test_report_json_is_asdict_with_one_record_a_line(tmp_path):
    import dataclasses

    from kalab import report

    connections, requests = records(write(tmp_path / "x.pcap", mixed_capture()))
    requests[0].client = {"ref": "1", "urllib3": ["Starting new HTTP connection (1)"],
                          "nested": {"n": [1, 2.5, None, True]}}
    run = report.EngineRun(engine="capture", kind="unknown", description="x", version=None,
                           listen=None, options={"ports": [8080, 9090], 1: "int key"},
                           capture=report.Capture(problems=["a"]), connections=connections,
                           requests=requests)
    document = report.Report(schema=report.SCHEMA, scenario=None, name="x", runtime="analyze",
                             started_at=T0, finished_at=T0 + 1, runs=[run], verdict="observed",
                             exit_code=0)
    text = report.to_json(document)
    assert json.loads(text) == json.loads(json.dumps(dataclasses.asdict(document)))
    lines = text.splitlines()
    assert sum(line.lstrip().startswith('{"id":') for line in lines) == 3 + 6
    assert lines[0] == "{" and lines[1] == '  "schema": "kalab.report/2",'


# --- two ways to read a classic pcap, two ways to write a report: the same result


def _read(path: Path, **options) -> tuple:
    """Everything a reader hands on, its counters and the error that ended it: the fast
    one, or the reference with ``fast=False``."""
    kind = FastSegmentReader if options.pop("fast", True) else SegmentReader
    reader = kind(path, **{k: v for k, v in options.items() if k != "background"})
    batches, error, positions = [], None, []
    try:
        for batch in (reader.background_batches() if options.get("background")
                      else reader.batches()):
            batches.append(batch)
            positions.append(reader.position)
    except PcapError as exc:
        error = (str(exc), exc.offset)
    positions.append(reader.position)  # at the end: the whole file, or where it went bad
    return batches, error, reader.records, reader.segments, reader.skipped, positions


def damaged_captures(tmp_path: Path) -> list[Path]:
    """Every link type, VLAN tags, a big-endian file, and files cut short or corrupt."""
    paths = [write(tmp_path / f"{linktype}.pcap", mixed_capture(), linktype)
             for linktype in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2,
                              LINKTYPE_NULL, LINKTYPE_LOOP, LINKTYPE_RAW)]
    paths.append(write(tmp_path / "vlan.pcap", mixed_capture(), vlan=True))
    data = paths[0].read_bytes()
    (tmp_path / "be.pcap").write_bytes(big_endian(data))
    (tmp_path / "cut.pcap").write_bytes(data[:len(data) - 30])
    corrupt = bytearray(data)
    struct.pack_into("<I", corrupt, 24 + 16 + struct.unpack_from("<I", data, 32)[0] + 8, 1 << 30)
    (tmp_path / "corrupt.pcap").write_bytes(bytes(corrupt))
    # Compressed, as incident captures are kept: whole, and a gzip cut in its middle.
    (tmp_path / "1.pcap.gz").write_bytes(gzip.compress(data))
    (tmp_path / "sll.pcap.xz").write_bytes(lzma.compress(paths[1].read_bytes()))  # refused
    (tmp_path / "vlan.pcap.bz2").write_bytes(bz2.compress(paths[-1].read_bytes()))
    packed = gzip.compress(data)
    (tmp_path / "cut.pcap.gz").write_bytes(packed[:len(packed) // 2])
    return [*paths, *(tmp_path / name for name in (
        "be.pcap", "cut.pcap", "corrupt.pcap", "1.pcap.gz", "sll.pcap.xz", "vlan.pcap.bz2",
        "cut.pcap.gz"))]


@pytest.mark.parametrize("options", [{}, {"skip_acks": True}, {"skip_acks": True,
                                                                  "ports": {9090}}])
def test_the_fast_path_and_the_generic_path_read_the_same(tmp_path, options):
    # `FastSegmentReader._classic` decodes the usual frame inline and reads the file in
    # one loop; the reference `SegmentReader` reads any format a frame at a time. On
    # every link type, damage included, they must hand on the same segments, count the
    # same, and stop at the same byte.
    for path in damaged_captures(tmp_path):
        fast, generic = _read(path, **options), _read(path, fast=False, **options)
        assert [s for b in fast[0] for s in b] == [s for b in generic[0] for s in b], path
        assert fast[1:] == generic[1:], path
        assert all(type(s) is Segment for b in fast[0] for s in b)


def test_a_big_capture_reads_the_same_either_way(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    import synth

    path = tmp_path / "big.pcap"
    synth.write(path, 1500, segments_per_body=3)  # megabytes: records across read blocks
    for options in ({}, {"skip_acks": True}):
        fast, generic = _read(path, **options), _read(path, fast=False, **options)
        assert [s for b in fast[0] for s in b] == [s for b in generic[0] for s in b]
        assert fast[1:] == generic[1:]
        # How far each batch has read (a progress line's): onwards, to the file's end.
        positions = fast[5]
        assert len(positions) > 10 and positions == sorted(positions)
        assert positions[-1] == path.stat().st_size


def test_a_background_reader_hands_on_what_this_process_would(tmp_path, monkeypatch):
    from kalab import pcap_fast

    monkeypatch.setattr(pcap_fast, "_BACKGROUND_MIN_SIZE", 0)  # fork even for a small file
    for path in damaged_captures(tmp_path):
        for options in ({}, {"skip_acks": True, "ports": {8080}}):
            assert _read(path, background=True, **options) == _read(path, **options), path


def test_a_background_reader_that_dies_is_taken_over(tmp_path, monkeypatch):
    from kalab import pcap_fast

    def send_one_then_die(reader, out):
        batch = next(reader.batches())
        data = marshal.dumps([tuple(s) for s in batch])
        out.write(pcap_fast._FRAME.pack(False, len(data), reader.position) + data)
        out.flush()
        os._exit(1)

    path = write(tmp_path / "x.pcap", mixed_capture() * 200)  # several batches
    monkeypatch.setattr(pcap_fast, "_BACKGROUND_MIN_SIZE", 0)
    monkeypatch.setattr(pcap_fast.FastSegmentReader, "_send", send_one_then_die)
    here = _read(path, skip_acks=True)
    assert len(here[0]) > 1
    assert _read(path, background=True, skip_acks=True) == here


def test_the_report_is_the_same_however_it_is_written(tmp_path, monkeypatch):
    from kalab import report

    connections, requests = records(write(tmp_path / "x.pcap", mixed_capture()))
    requests[0].client = {"ref": "1", "urllib3": ["Starting new HTTP connection (1)"],
                          "nested": {"n": [1, 2.5, None, True], "deeper": [{"a": []}]}}
    requests[1].target = '/odd "quote", comma: \\ and\nnewline, },{"id": caf\u00e9'
    connections[0].requests = []
    run = report.EngineRun(engine="capture", kind="unknown", description="x", version=None,
                           listen=None, options={"ports": [8080], 1: "int key"},
                           capture=report.Capture(), connections=connections,
                           requests=requests)
    document = report.Report(schema=report.SCHEMA, scenario=None, name="x", runtime="analyze",
                             started_at=T0, finished_at=T0 + 1, runs=[run], verdict="observed",
                             exit_code=0)
    run.client_errors = [connections[1], {"error": "refused"}]  # a record among other things
    orjson = report.orjson
    assert orjson is not None, "the project's dependencies install orjson"
    written = {"orjson": report.to_json_bytes(document)}
    monkeypatch.setattr(report, "orjson", None)
    written["json"] = report.to_json_bytes(document)
    monkeypatch.undo()
    assert len(set(written.values())) == 1, written
    assert json.loads(written["json"]) == json.loads(json.dumps(dataclasses.asdict(document)))
    lines = written["json"].decode().splitlines()
    assert sum(line.lstrip().startswith('{"id":') for line in lines) == len(connections) + len(
        requests) + 1
    # An object nested in a record that starts like a record: still one record a line.
    requests[2].client = {"tries": [{"id": 1}, {"id": 2}]}
    for writer in (orjson, None):
        monkeypatch.setattr(report, "orjson", writer)
        text = report.to_json(document)
        assert json.loads(text) == json.loads(json.dumps(dataclasses.asdict(document)))
        assert sum(line.lstrip().startswith('{"id":') for line in text.splitlines()) == len(
            connections) + len(requests) + 1


def test_kalab_analyze_of_a_big_capture_says_what_the_plain_path_says(tmp_path, monkeypatch):
    # Big enough for `kalab analyze` to read in a second process: the records must be
    # those of the one-process path, field for field.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    import synth

    from kalab import pcap_fast

    path = tmp_path / "big.pcap"
    synth.write(path, 4000)
    assert path.stat().st_size >= pcap_fast._BACKGROUND_MIN_SIZE
    done = run_kalab("analyze", str(path), "--json")
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    connections, requests = records(path, wire_stories=True)  # as kalab analyze tells them
    assert len(connections) == 4000 and len(requests) == 8000
    assert run["connections"] == [dataclasses.asdict(c) for c in connections]
    assert run["requests"] == [dataclasses.asdict(r) for r in requests]
    # The reader leaves after the first bytes (`| head`): a quiet exit, not a traceback.
    with subprocess.Popen([*KALAB, "analyze", str(path), "--json"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}) as partial:
        assert partial.stdout.read(10) == b'{\n  "schem'
        partial.stdout.close()
        assert partial.wait(timeout=120) == 1
        assert partial.stderr.read() == b""


def test_kalab_analyze_shows_a_big_capture_s_first_rows_and_counts_the_rest(tmp_path,
                                                                           monkeypatch):
    # A terminal of 4,000 connections' rows helps nobody, and held them all in memory.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    import synth

    from kalab.summary import ROWS_SHOWN

    path = tmp_path / "big.pcap"
    synth.write(path, 4000)
    done = run_kalab("analyze", str(path))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"... and {8000 - ROWS_SHOWN:,} more requests: the JSON report has them all" in text
    assert f"... and {4000 - ROWS_SHOWN:,} more connections: the JSON report has them all" \
        in text
    stories = re.findall(r"^  #(\d+) \(", text, re.M)
    assert stories == [str(n) for n in range(1, ROWS_SHOWN + 1)]
    assert f"#{ROWS_SHOWN} " in text and f"#{ROWS_SHOWN + 1} " not in text
    assert f"w{ROWS_SHOWN} " in text and f"w{ROWS_SHOWN + 1} " not in text


# --- frames cut at a snap length: nothing lost, the rest unknown


def cut_at(source: Path, target: Path, snaplen: int) -> Path:
    """``source`` (a classic little-endian pcap) as `tcpdump -s SNAPLEN` would have written
    it: each record keeps its first ``snaplen`` bytes and says its length on the wire."""
    data = source.read_bytes()
    header = bytearray(data[:24])
    struct.pack_into("<I", header, 16, snaplen)
    out, offset = [bytes(header)], 24
    while offset < len(data):
        sec, usec, caplen, wirelen = struct.unpack_from("<IIII", data, offset)
        kept = min(caplen, snaplen)
        out += [struct.pack("<IIII", sec, usec, kept, wirelen),
                data[offset + 16:offset + 16 + kept]]
        offset += 16 + caplen
    target.write_bytes(b"".join(out))
    return target


def wire_facts(connections: list) -> list[tuple]:
    """What a connection's packets say, whatever their payload."""
    return [(c.client, c.server, c.syn_at, c.established_at, c.first_fin_by, c.first_fin_at,
             c.second_fin_at, c.closed_by, c.closed_with, c.last_data_at, c.idle_before_close,
             c.keepalive_probes, c.complete, c.gaps, c.history, c.conn_state, c.completeness,
             c.client_bytes, c.server_bytes) for c in connections]


@pytest.mark.parametrize("snaplen", [96, 128])
def test_a_capture_cut_at_its_snap_length_loses_nothing(tmp_path, snaplen):
    source = write(tmp_path / "whole.pcap", mixed_capture())
    cut = cut_at(source, tmp_path / f"cut-{snaplen}.pcap", snaplen)
    whole = evidence.analyze_capture(source)
    analysis = evidence.analyze_capture(cut)
    longer = sum(len(frame) > snaplen for _, _, frame in read_frames(source))
    assert analysis.truncated == longer > 0 and analysis.snaplen == snaplen
    assert evidence.capture_problems(analysis) == []
    assert evidence.wire_problems(analysis.connections) == []
    # Every packet is there: times, closes, bytes, Zeek's and Wireshark's words.
    assert wire_facts(analysis.connections) == wire_facts(whole.connections)
    # At 128 bytes only IPv6's responses (20 bytes more of header) are cut.
    assert [c.truncated > 0 for c in analysis.connections] == [snaplen == 96] * 2 + [True]
    # Every request line and status line was kept: the same requests, the same answers.
    assert [(r.id, r.connection, r.depth, r.method, r.target, r.status, r.response_at)
            for r in analysis.requests] == \
        [(r.id, r.connection, r.depth, r.method, r.target, r.status, r.response_at)
         for r in whole.requests]
    # What the cut hid is unknown, not guessed: the responses' headers, and on IPv6
    # (20 more bytes of header) the requests' too.
    for request in analysis.requests:
        v6 = analysis.connections[request.connection - 1].client.startswith("[")
        if snaplen == 96:
            assert request.unknown is not None
            assert "response_connection" in request.unknown
            assert request.response_connection is None and request.response_end_at is None
            assert ("request_connection" in request.unknown) is v6
        for name in request.unknown or ():
            if getattr(request, name) is not None:  # kept as far as the bytes showed it
                assert getattr(request, name) == getattr(whole.requests[0], name) or \
                    name in ("request_body_len", "response_body_len")
    # The two readers agree, and so does a pcapng of the same cut frames.
    assert list(FastSegmentReader(cut, skip_acks=True)) == \
        list(SegmentReader(cut, skip_acks=True))
    if shutil.which("editcap") is not None:
        ng = tmp_path / f"cut-{snaplen}.pcapng"
        subprocess.run(["editcap", "-F", "pcapng", str(cut), str(ng)], check=True,
                       capture_output=True)
        again = evidence.analyze_capture(ng)  # its times differ in the last bit: not compared
        assert again.truncated == longer and again.snaplen == snaplen
        assert [(c.history, c.truncated, c.requests) for c in again.connections] == \
            [(c.history, c.truncated, c.requests) for c in analysis.connections]
        assert [(r.target, r.status, r.unknown) for r in again.requests] == \
            [(r.target, r.status, r.unknown) for r in analysis.requests]
    done = run_kalab("analyze", str(cut), "--json")
    assert done.returncode == 0, done.stderr  # observed: nothing was lost
    (run,) = json.loads(done.stdout)["runs"]
    assert run["verdict"] == "observed" and run["capture"]["problems"] == []
    assert run["capture"]["snaplen"] == snaplen and run["capture"]["truncated_frames"] == longer
    assert tshark_referee.compare(run, cut, {8080, 9090}) == []
    text = run_kalab("analyze", str(cut)).stdout
    assert f"cut at the snap length ({snaplen} bytes): no packet was lost" in " ".join(
        text.split())
    # The response headers the cut hid are "?" in the table, not "-" (none said).
    cells = [line.split("│")[7].strip() for line in text.splitlines() if " /" in line]
    assert cells == ["?" if "response_connection" in (r["unknown"] or ()) else
                     r["response_connection"] or "-" for r in run["requests"]]
    assert "?" in cells


def test_frames_cut_inside_their_tcp_header_are_a_capture_problem(tmp_path):
    source = write(tmp_path / "whole.pcap", mixed_capture())
    cut = cut_at(source, tmp_path / "cut-60.pcap", 60)  # IPv6's headers take 74 bytes
    analysis = evidence.analyze_capture(cut)
    v6 = sum(1 for _, _, frame in read_frames(source) if frame[12:14] == b"\x86\xdd")
    assert analysis.headers_cut == v6 > 0
    assert [c.server for c in analysis.connections] == ["10.0.0.2:8080", "10.0.0.3:9090"]
    done = run_kalab("analyze", str(cut), "--json")
    assert done.returncode == 3  # inconclusive: those segments are missing
    (run,) = json.loads(done.stdout)["runs"]
    assert any("cut inside their TCP header" in p for p in run["capture"]["problems"])


# --- Zeek's JSON logs (kalab analyze --zeek DIR)

# Zeek's Conn::Info and HTTP::Info fields, in their order (base/protocols/conn/main.zeek,
# base/protocols/http/main.zeek), a conn_id flattened as Zeek's JSON writer does.
ZEEK_ID = ["id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"]
ZEEK_CONN = ["ts", "uid", *ZEEK_ID, "proto", "service", "duration", "orig_bytes", "resp_bytes",
             "conn_state", "local_orig", "local_resp", "missed_bytes", "history", "orig_pkts",
             "orig_ip_bytes", "resp_pkts", "resp_ip_bytes", "tunnel_parents", "ip_proto"]
ZEEK_HTTP = ["ts", "uid", *ZEEK_ID, "trans_depth", "method", "host", "uri", "referrer",
             "version", "user_agent", "origin", "request_body_len", "response_body_len",
             "status_code", "status_msg", "info_code", "info_msg", "tags", "username",
             "password", "proxied"]


def zeek_logs(folder: Path) -> tuple[list[dict], list[dict]]:
    """conn.log and http.log, each line checked to be Zeek's fields in Zeek's order."""
    logs = []
    for name, order in (("conn.log", ZEEK_CONN), ("http.log", ZEEK_HTTP)):
        lines = [json.loads(line) for line in (folder / name).read_text().splitlines()]
        for line in lines:
            assert list(line) == [key for key in order if key in line], (name, list(line))
        logs.append(lines)
    return logs[0], logs[1]


def test_zeek_logs_of_a_capture(tmp_path):
    packets = mixed_capture()
    pcap = write(tmp_path / "mixed.pcap", packets)
    done = run_kalab("analyze", str(pcap), "--json", "--zeek", str(tmp_path / "zeek"))
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    conns, http = zeek_logs(tmp_path / "zeek")
    # Each conversation: its first packet, and the client's FIN answering the server's.
    starts = [T0, T0 + 0.005, T0 + 0.0075]
    ends = {p[TCP].sport: ts for ts, p in packets if p[TCP].flags == "FA"
            and p[TCP].sport in (40000, 40001, 40002)}
    assert [c["ts"] for c in conns] == pytest.approx(starts, abs=1e-6)
    assert [c["duration"] for c in conns] == pytest.approx(
        [ends[port] - start
         for port, start in zip((40000, 40001, 40002), starts, strict=True)], abs=1e-6)
    assert [(c["id.orig_h"], c["id.orig_p"], c["id.resp_h"], c["id.resp_p"]) for c in conns] \
        == [("10.0.0.1", 40000, "10.0.0.2", 8080), ("10.0.0.1", 40001, "10.0.0.3", 9090),
            ("fd00::1", 40002, "fd00::2", 8080)]
    assert all(c["proto"] == "tcp" and c["service"] == "http" and c["ip_proto"] == 6
               and c["missed_bytes"] == 0 and c["conn_state"] == "SF" for c in conns)
    assert [c["history"] for c in conns] == [c["history"] for c in run["connections"]]
    assert [c["orig_bytes"] for c in conns] == [len(GET % b"a1") * 2, len(GET % b"b1"),
                                                len(GET % b"c1") * 3]
    # (the server's keep-alive probe repeats a byte already sent: no new byte)
    assert [c["resp_bytes"] for c in conns] == [len(OK) * 2, len(OK), len(OK) * 3]
    uids = [c["uid"] for c in conns]
    assert len(set(uids)) == 3 and all(re.fullmatch(r"C[0-9A-Za-z]{17}", u) for u in uids)
    assert [(uids.index(h["uid"]), h["trans_depth"], h["method"], h["uri"]) for h in http] == \
        [(0, 1, "GET", "/a1"), (1, 1, "GET", "/b1"), (2, 1, "GET", "/c1"),
         (0, 2, "GET", "/a2"), (2, 2, "GET", "/c2"), (2, 3, "GET", "/c3")]
    assert [h["ts"] for h in http] == pytest.approx([r["sent_at"] for r in run["requests"]],
                                                    abs=1e-6)
    assert all(h["version"] == "1.1" and h["status_code"] == 200 and h["request_body_len"] == 0
               and h["response_body_len"] == 2 and h["tags"] == [] for h in http)
    # The same capture, the same uids: a second folder is the first's copy.
    again = run_kalab("analyze", str(pcap), "--zeek", str(tmp_path / "again"))
    assert again.returncode == 0
    for name in ("conn.log", "http.log"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "zeek" / name).read_bytes()


def test_zeek_logs_leave_out_what_the_capture_cut(tmp_path):
    cut = cut_at(write(tmp_path / "whole.pcap", mixed_capture()), tmp_path / "cut.pcap", 96)
    done = run_kalab("analyze", str(cut), "--json", "--zeek", str(tmp_path / "zeek"))
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    _, http = zeek_logs(tmp_path / "zeek")
    assert len(http) == len(run["requests"]) == 6
    for line, request in zip(http, run["requests"], strict=True):
        unknown = request["unknown"] or []
        assert ("response_body_len" in line) is ("response_body_len" not in unknown)
        assert ("uri" in line) is ("target" not in unknown)
    assert any("response_body_len" not in line for line in http)


@pytest.mark.parametrize("existing", ["a file in it", "a file"])
def test_zeek_refuses_a_folder_with_something_in_it(tmp_path, existing):
    pcap = write(tmp_path / "mixed.pcap", mixed_capture())
    target = tmp_path / "zeek"
    if existing == "a file":
        target.write_text("mine")
    else:
        target.mkdir()
        (target / "conn.log").write_text("mine")
    done = run_kalab("analyze", str(pcap), "--zeek", str(target))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"kalab: --zeek: {target}")
    assert (target.read_text() if existing == "a file" else
            (target / "conn.log").read_text()) == "mine"
    assert len(list(target.iterdir())) == 1 if target.is_dir() else True


def test_the_bench_floor_reads_what_kalab_reads_and_finds_tshark_s_connections(
        tmp_path, monkeypatch):
    # bench/floor.py is the floor a time target is set against: it must do the reading
    # kalab does (in a second process, big enough), and no less, or it is no floor.
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import synth

    from kalab import pcap_fast

    path = tmp_path / "big.pcap"
    synth.write(path, 4000)
    assert path.stat().st_size >= pcap_fast._BACKGROUND_MIN_SIZE
    done = subprocess.run([*KALAB[:1], str(ROOT / "bench" / "floor.py"), str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    segments, connections = map(int, done.stdout.split())
    assert segments == sum(map(len, FastSegmentReader(path, skip_acks=True).batches()))
    streams = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "tcp.stream"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert connections == len(set(streams)) == 4000


def test_kalab_analyze_shows_on_a_terminal_how_far_a_big_capture_is_read(tmp_path,
                                                                       monkeypatch):
    # Minutes of silence over a capture of gigabytes look like a hang. On a terminal,
    # stderr has a line of the bytes read; it goes before the report, which is whole.
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import pty
    import select

    import synth

    from kalab.progress import READING_SHOWN_FROM

    path = tmp_path / "big.pcap"
    synth.write(path, 15000)
    assert path.stat().st_size >= READING_SHOWN_FROM
    terminal, its_end = pty.openpty()
    with subprocess.Popen([*KALAB, "analyze", str(path), "--json"], stdout=subprocess.PIPE,
                          stderr=its_end, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120",
                               "TERM": "xterm"}) as analysing:
        os.close(its_end)
        report = []
        reader = threading.Thread(target=lambda: report.append(analysing.stdout.read()))
        reader.start()
        shown = b""
        while select.select([terminal], [], [], 120)[0]:
            try:
                data = os.read(terminal, 1 << 16)
            except OSError:  # EIO: the other end closed with the process
                break
            if not data:
                break
            shown += data
        reader.join(120)
        assert analysing.wait(timeout=120) == 0
    os.close(terminal)
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", shown).decode()
    assert f"reading {path.name}" in text
    assert re.search(r"[0-9.]+/[0-9.]+ MB [0-9,]+ connections, ", text), text[-400:]
    assert shown.endswith(b"\x1b[2K")  # the line erased: nothing left of it above a summary
    (run,) = json.loads(report[0])["runs"]
    assert len(run["connections"]) == 15000
    # Anything but a terminal (a log, a pipe) gets no line at all.
    piped = run_kalab("analyze", str(path), "--json")
    assert piped.returncode == 0 and piped.stderr == ""


@pytest.mark.parametrize(("suffix", "compress"), [("gz", gzip.compress), ("bz2", bz2.compress)])
def test_a_compressed_capture_is_read_as_the_capture_it_holds(tmp_path, suffix, compress):
    # Incident captures are kept compressed; tshark reads them so, whatever their name.
    plain = write(tmp_path / "x.pcap", mixed_capture())
    packed = tmp_path / f"x.pcap.{suffix}"
    packed.write_bytes(compress(plain.read_bytes()))
    assert records(packed) == records(plain)
    done = run_kalab("analyze", str(packed), "--json")
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    assert len(run["connections"]) == 3 and len(run["requests"]) == 6
    if suffix == "gz":  # tshark 4.0 reads gzip (not xz or bzip2)
        assert tshark_referee.compare(run, packed, {8080, 9090}) == []


def test_a_compressed_capture_cut_short_is_reported_up_to_where_its_data_ends(tmp_path,
                                                                           monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import synth

    plain = tmp_path / "big.pcap"
    synth.write(plain, 600)
    packed = gzip.compress(plain.read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(packed[:len(packed) // 2])
    # What a gzip reader can give of it: the capture's first bytes, up to a record's middle.
    held = zlib.decompressobj(31).decompress(cut.read_bytes())
    assert 0 < len(held) < plain.stat().st_size
    before = tmp_path / "before.pcap"
    before.write_bytes(held)
    done = run_kalab("analyze", str(cut), "--json")
    assert done.returncode == 2  # a file cut short: bad input, with the report of what it held
    assert done.stderr == (f"kalab: {cut} (decompressed): byte {len(held)}: its data ends "
                           "there, cut short or corrupt (Compressed file ended before the "
                           "end-of-stream marker was reached)\n")
    (run,) = json.loads(done.stdout)["runs"]
    analysis = evidence.analyze_capture(before, wire_stories=True)  # the same, plainly cut
    assert analysis.error is not None and analysis.error.offset <= len(held)
    assert run["connections"] == [dataclasses.asdict(c) for c in analysis.connections]
    assert run["requests"] == [dataclasses.asdict(r) for r in analysis.requests]
    assert run["capture"]["problems"][0].startswith(
        f"the capture file is cut short at byte {len(held)}: the report covers the "
        f"{analysis.records} record(s) before it")


def stale_pool_race(start: float) -> list[tuple[float, object]]:
    """A pooled connection the server closes when idle, and the client's POST that leaves
    before the client has seen the FIN: answered with a RST (the proxy's 502)."""
    up, down = sides("10.0.0.1", "10.0.0.2", 40010, 8080)
    post = b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    first, second = GET % b"a", GET % b"b"
    c, s, t = 1001, 5001, start
    packets = [(t, up("S", 1000, 0)), (t + 0.001, down("SA", 5000, 1001)),
               (t + 0.002, up("A", c, s))]
    for request, at in ((first, t + 0.01), (second, t + 0.11)):
        packets += [(at, up("PA", c, s, request)), (at + 0.001, down("PA", s, c + len(request),
                                                                       OK)),
                    (at + 0.002, up("A", c + len(request), s + len(OK)))]
        c, s = c + len(request), s + len(OK)
    fin_at = t + 5.112  # the server's keep-alive ran out
    packets += [(fin_at, down("FA", s, c)), (fin_at + 0.0004, up("PA", c, s, post)),
                (fin_at + 0.0005, down("R", s + 1, 0))]
    return packets


def test_kalab_analyze_tells_each_request_s_story_from_the_wire(tmp_path):
    # An engineer's own capture has no client records: the wire alone still says which
    # request went on a connection the server had already closed (a stale pooled one).
    unanswered = [p for p in conversation("10.0.0.1", "10.0.0.3", 40020, 8080, T0 + 0.3,
                                          ["u"]) if not (p[1][TCP].sport == 8080
                                                         and bytes(p[1][TCP].payload)[:4]
                                                         == b"HTTP")]
    packets = sorted(stale_pool_race(T0) + conversation("10.0.0.1", "10.0.0.2", 40000, 8080,
                                                        T0 + 0.2, ["n"]) + unanswered,
                     key=lambda p: p[0])
    pcap = write(tmp_path / "race.pcap", packets)
    done = run_kalab("analyze", str(pcap), "--json")
    (run,) = json.loads(done.stdout)["runs"]
    stories = {r["target"]: r["story"] for r in run["requests"]}
    assert stories == {"/a": "new", "/b": "reused", "/c": "raced the FIN", "/n": "new",
                       "/u": "unanswered"}
    # tshark as referee: a request raced the FIN exactly when it left after the server's
    # FIN on its stream.
    fields = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", "tcp.port==8080,http", "-T", "fields", "-E",
         "separator=\t", "-e", "tcp.stream", "-e", "frame.time_epoch", "-e", "tcp.srcport",
         "-e", "tcp.flags.fin", "-e", "http.request.uri"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    server_fin: dict[str, float] = {}
    sent: dict[str, tuple[str, float]] = {}
    for line in fields:
        stream, at, port, fin, uri = (line.split("\t") + [""] * 5)[:5]
        if port == "8080" and fin in ("1", "True") and stream not in server_fin:
            server_fin[stream] = float(at)
        if uri:
            sent[uri] = (stream, float(at))
    raced = {uri for uri, (stream, at) in sent.items()
             if stream in server_fin and at > server_fin[stream]}
    assert raced == {t for t, story in stories.items() if story == "raced the FIN"}
    assert set(sent) == set(stories)
    text = " ".join(run_kalab("analyze", str(pcap)).stdout.split())
    assert "raced the FIN" in text and "unanswered" in text
    assert ("carried w1, w2, w5: reset by the server" in text or
            "carried w1, w2, w5: closed by the server" in text)
    assert "w5 left after the server's FIN: it raced the close (a pooled connection gone " \
        "stale)" in text


@pytest.mark.parametrize(("name", "head", "command"), [
    ("xz", None, "xz -dk"), ("zstd", b"\x28\xb5\x2f\xfd\x04\x58", "zstd -d"),
    ("lz4", b"\x04\x22\x4d\x18\x64\x40", "lz4 -d")])
def test_a_capture_compressed_in_a_way_not_read_is_refused_with_its_remedy(tmp_path, name, head,
                                                                        command):
    # xz's decoder takes the memory its file's header asks for (a hostile file's choice);
    # zstd and lz4 have no reader in Python's library. Each is named, with its undoing.
    plain = write(tmp_path / "x.pcap", mixed_capture()).read_bytes()
    packed = tmp_path / f"x.pcap.{name}"
    packed.write_bytes(lzma.compress(plain) if head is None else head + plain)
    done = run_kalab("analyze", str(packed))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"kalab: {packed}: byte 0: compressed with {name}, which is not "
                           f"read: decompress it first ({command} FILE)\n")
