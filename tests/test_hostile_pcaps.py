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
import functools
import io
import json
import os
import random
import re
import signal
import struct
import subprocess
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
from conftest import KALAB, ROOT, run_kalab
from reliability import tally
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from kalab import cli, evidence
from kalab.pcap import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, PcapError, SegmentReader
from kalab.pcap_fast import FastSegmentReader

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
        seqs[side] += len(data) + (1 if "S" in flags or "F" in flags else 0)
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

    def interface(options: bytes) -> bytes:
        return block(1, struct.pack("<HHI", 1, 0, 0) + options)

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


def read_all(path: Path, fast: bool) -> tuple:
    """What the fast reader or the reference hands on: segments, error, records."""
    reader = (FastSegmentReader if fast else SegmentReader)(path)
    segments, error = [], None
    try:
        for batch in reader.batches():
            segments += batch
    except PcapError as exc:
        error = (str(exc), exc.offset)
    return segments, error, reader.records


def test_an_ip_length_that_ends_inside_the_headers_is_dropped_by_both_readers(tmp_path):
    # The fast reader handed on such a packet (its flags: here the server's FIN) where
    # the generic one dropped it: the same file made two different reports.
    data, starts = classic(keep_alive())
    path = tmp_path / "short-ip.pcap"
    for total in (20, 39):
        path.write_bytes(with_field(data, starts[-3] + 16 + 14 + 2, ">H", total))
        fast, generic = read_all(path, fast=True), read_all(path, fast=False)
        assert fast == generic
        assert len(fast[0]) == len(starts) - 1 and fast[0][-2].flags & 0x01  # the client's FIN


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


def test_kalab_analyze_reads_a_status_code_of_5000_digits_as_no_status_line(tmp_path):
    # int() refused the 5,000 digits: a ValueError, a traceback, exit 1 and no report.
    status = b"HTTP/1.1 " + b"2" * 5000 + b" OK\r\nContent-Length: 2\r\n\r\nok"
    path = tmp_path / "status.pcap"
    path.write_bytes(classic(connection([([GET % b"a"], [ok()]), ([GET % b"b"], [status])]))[0])
    done = run_kalab("analyze", str(path), "--json")
    assert done.returncode == 0 and done.stderr == ""
    requests = strict_json(done.stdout)["runs"][0]["requests"]
    assert [(r["target"], r["status"]) for r in requests] == [("/a", 200), ("/b", None)]


def test_kalab_analyze_writes_a_keep_alive_timeout_of_400_digits_as_null(tmp_path):
    # float() made it inf, written as Infinity: JavaScript's JSON.parse refuses the report.
    header = b"Keep-Alive: timeout=" + b"9" * 400 + b", max=100\r\n"
    path = tmp_path / "timeout.pcap"
    path.write_bytes(classic(connection([([GET % b"a"], [ok(headers=header)])]))[0])
    done = run_kalab("analyze", str(path), "--json")
    assert done.returncode == 0, done.stderr
    run = strict_json(done.stdout)["runs"][0]
    (request,), (conn,) = run["requests"], run["connections"]
    assert request["advertised_timeout"] is None and conn["advertised_timeout"] is None
    assert request["response_keep_alive"] == "timeout=" + "9" * 400 + ", max=100"
    assert run["capture"]["problems"] == []


# --- the corpus: hundreds of variants of real-looking captures

AREA = "Capture files (kalab analyze)"


@dataclass
class Case:
    """One hostile file, and what `kalab analyze` must make of it besides surviving."""

    name: str
    data: bytes
    names_byte: int | None = None  # exit 2, naming this byte: where the bad record starts
    whole: bool = False  # read to its end: exit 0 or 3
    check: Callable[[dict], str | None] | None = None  # what is wrong with the report, if any


@dataclass
class Outcome:
    code: int | None  # None: it raised
    stdout: bytes
    stderr: str


@contextmanager
def no_longer_than(seconds: float) -> Iterator[None]:
    """A hang made a failure: the reading and the analysis are Python, the alarm's
    handler runs between two of their bytecodes."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def kalab_here(path: Path, *flags: str) -> Outcome:
    """`kalab analyze PATH` in this process, as the command runs: exit code, output."""
    out, err = io.BytesIO(), io.StringIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    code: int | None = None
    try:
        with redirect_stdout(stdout), redirect_stderr(err), no_longer_than(10):
            code = cli.main(["analyze", str(path), *flags])
    except Exception:  # the command would have printed a traceback
        err.write(traceback.format_exc())
    finally:
        stdout.flush()
        stdout.detach()
    return Outcome(code, out.getvalue(), err.getvalue())


@functools.cache
def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / "schema" / "report.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def trouble(case: Case, runs: list[Outcome]) -> str | None:
    """Why ``case`` did not survive ``runs`` (with --json first, then without), or None."""
    for run in runs:
        if run.code not in (0, 2, 3) or "Traceback" in run.stderr:
            return f"exit {run.code}: {run.stderr[-400:]}"
        try:
            run.stdout.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"output is not UTF-8: {exc}"
    codes = {run.code for run in runs}
    if len(codes) > 1:
        return f"exit codes differ with and without --json: {codes}"
    code, errors = runs[0].code, runs[0].stderr
    if code == 2 and not re.search(r": byte \d+: ", errors):
        return f"exit 2 without naming a byte: {errors!r}"
    if case.names_byte is not None and f": byte {case.names_byte}: " not in errors:
        return f"exit {code}, not naming byte {case.names_byte}: {errors!r}"
    if case.whole and code == 2:
        return f"not read to its end: {errors!r}"
    if not runs[0].stdout:
        return None if code == 2 else f"exit {code} without a report"
    try:
        report = strict_json(runs[0].stdout)
    except ValueError as exc:
        return f"not strict JSON: {exc}"
    if report["exit_code"] != code:
        return f"the report says exit {report['exit_code']}, the command exits {code}"
    wrong = [f"{e.json_path}: {e.message}" for e in schema_validator().iter_errors(report)]
    if wrong:
        return f"the report does not match its schema: {wrong[:3]}"
    return case.check(report) if case.check else None


def survive(tmp_path: Path, tried: str, cases: list[Case], text_every: int = 1) -> None:
    """Every case through `kalab analyze` here, with --json (and, for every
    ``text_every``-th, without); tally what survived, then insist that all did."""
    failures = []
    path = tmp_path / "hostile.pcap"
    for number, case in enumerate(cases):
        path.write_bytes(case.data)
        runs = [kalab_here(path, "--json")]
        if number % text_every == 0:
            runs.append(kalab_here(path))
        problem = trouble(case, runs)
        if problem is not None:
            failures.append(f"{case.name}: {problem}")
    tally(AREA, tried, len(cases), len(cases) - len(failures))
    assert not failures, f"{len(failures)} of {len(cases)} did not survive:\n" + "\n".join(
        failures[:8])


@functools.cache
def bases() -> dict[str, tuple[bytes, tuple[int, ...]]]:
    """The real-looking captures: name -> (file, where each record or block starts)."""
    chunked = connection([
        ([GET % b"stream"], [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + KEEP_ALIVE
                             + b"\r\n5;ext=1\r\nhello\r\n", b"6\r\n world\r\n",
                             b"0\r\nX-Trailer: t\r\n\r\n"]),
        ([GET % b"after"], [ok()])])
    one, two, three = ok(b"one"), ok(b"two"), ok(b"three")
    pipelined = connection([([GET % b"1" + GET % b"2" + GET % b"3"],
                             [one + two[:20], two[20:] + three])])
    made = {"keep-alive": classic(keep_alive()),
            "chunked": classic(chunked),
            "pipelined": classic(pipelined),
            "IPv6, Linux cooked": classic(keep_alive(("a", "b"), client="fd00::1",
                                                     server="fd00::2"), linktype=SLL2),
            "pcapng": pcapng(keep_alive())}
    return {name: (data, tuple(starts)) for name, (data, starts) in made.items()}


def is_pcapng(data: bytes) -> bool:
    return data[:4] == b"\x0a\x0d\x0d\x0a"


def cut_short() -> list[Case]:
    """Each capture cut at its record boundaries and inside every header and record."""
    cases = []
    for name, (data, starts) in bases().items():
        ng = is_pcapng(data)
        bounds = [*starts, len(data)]
        points = {0, 1, 3, 4, 5, 12, 23}
        for start, end in zip(bounds, bounds[1:], strict=False):
            points |= {start, start + 1, start + 8, start + 11, start + 15, start + 16,
                       start + 27, (start + end) // 2, end - 1}
        for cut in sorted(p for p in points if p < len(data)):
            if cut and (cut in starts or (not ng and cut == 24)):
                cases.append(Case(f"{name} cut at byte {cut}", data[:cut], whole=True))
                continue
            # The byte the error names: the start of the record (or file header) cut short.
            named = 0 if cut < 4 else 4 if not ng and cut < 24 else max(
                s for s in [0, *starts] if s <= cut)
            cases.append(Case(f"{name} cut at byte {cut}", data[:cut], names_byte=named))
    return cases


def flipped() -> list[Case]:
    """Seeded random bytes set anywhere, or in the first 40 bytes of a record (its
    lengths, its clock, the link, IP and TCP headers)."""
    cases = []
    for name, (data, starts) in bases().items():
        for number in range(40):
            rng = random.Random(f"{name} {number}")
            hostile = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                if rng.random() < 0.5:
                    where = rng.randrange(len(hostile))
                else:
                    where = min(rng.choice(starts) + rng.randrange(40), len(hostile) - 1)
                hostile[where] = rng.choice((0, 0xFF, rng.randrange(256)))
            cases.append(Case(f"{name}, random bytes seeded {number}", bytes(hostile)))
    return cases


def with_field(data: bytes, offset: int, form: str, value: int) -> bytes:
    """``data`` with the field at ``offset`` (a struct ``form``) set to ``value``."""
    hostile = bytearray(data)
    struct.pack_into(form, hostile, offset, value)
    return bytes(hostile)


def absurd_lengths() -> list[Case]:
    """Record and block lengths from 0 to 4 GiB, at the first, a middle and the last."""
    cases = []
    for name, (data, starts) in bases().items():
        records = starts[2:] if is_pcapng(data) else starts
        for start in (records[0], records[len(records) // 2], records[-1]):
            if is_pcapng(data):
                length = struct.unpack_from("<I", data, start + 4)[0]
                caplen = struct.unpack_from("<I", data, start + 20)[0]
                # The length before the block: every change is corrupt, or disagrees with
                # the length after it.
                for value in (0, 4, 8, 12, 13, 28, 32, length - 4, length + 4, 16 * 262144 + 4,
                              0xFFFFFFFC, 0xFFFFFFFF):
                    cases.append(Case(f"{name}: block at {start} says {value} bytes",
                                      with_field(data, start + 4, "<I", value),
                                      names_byte=start))
                for value in (caplen + 4, length - 31, 65535, 0xFFFFFFFF):
                    cases.append(Case(f"{name}: packet at {start} says {value} bytes",
                                      with_field(data, start + 20, "<I", value),
                                      names_byte=start))
                continue
            caplen = struct.unpack_from("<I", data, start + 8)[0]
            left = len(data) - start - 16
            for value in (0, 1, 13, 54, caplen - 1, caplen + 1, 65535, 262144, 262145,
                          16 * 262144 + 1, 0x7FFFFFFF, 0xFFFFFFFF):
                # Past the file's end (and so past the bound): that record is named. A
                # shorter one puts the next record header inside this record: anything
                # may follow.
                cases.append(Case(f"{name}: record at {start} says {value} bytes",
                                  with_field(data, start + 8, "<I", value),
                                  names_byte=start if value > left else None))
            for value in (0, 0xFFFFFFFF):  # the length on the wire: never needed
                cases.append(Case(f"{name}: record at {start} was {value} bytes on the wire",
                                  with_field(data, start + 12, "<I", value), whole=True))
    return cases


def absurd_headers() -> list[Case]:
    """File headers: link types, snap lengths, versions, magic; pcapng interfaces and
    their clocks."""
    data, starts = bases()["keep-alive"]
    cases = [Case(f"link type {value:#x}", with_field(data, 20, "<I", value), names_byte=20)
             for value in (2, 147, 0xFFFF, 0x0FFFFFFF, 0xFFFFFFFF)]
    # Link types read with the FCS bits masked, and wrong but supported ones: read to the
    # end, the frames decoded as that link type says.
    cases += [Case(f"link type {value:#x}", with_field(data, 20, "<I", value), whole=True)
              for value in (0, 12, 101, 108, 113, 228, 229, 276, 0x10000001, 0xF0000001)]
    cases += [Case(f"snap length {value:#x}", with_field(data, 16, "<I", value), whole=True)
              for value in (0, 1, 14, 65535, 0x7FFFFFFF, 0xFFFFFFFF)]
    cases.append(Case("snap length 4 GiB, and a record of 4 GiB", with_field(with_field(
        data, 16, "<I", 0xFFFFFFFF), starts[1] + 8, "<I", 0xFFFFFFF0), names_byte=starts[1]))
    cases += [Case(f"version {value:#x}", with_field(data, 4, "<I", value), whole=True)
              for value in (0, 0xFFFFFFFF)]
    cases += [Case("nanosecond magic on microseconds", b"\x4d\x3c\xb2\xa1" + data[4:],
                   whole=True),
              Case("big-endian magic on a little-endian file", b"\xa1\xb2\xc3\xd4" + data[4:],
                   names_byte=20),
              Case("no magic at all", b"\0\0\0\0" + data[4:], names_byte=0)]
    packets = keep_alive()
    ng, ng_starts = pcapng(packets)
    idb = ng_starts[1]
    cases += [Case(f"pcapng link type {value:#x}", with_field(ng, idb + 8, "<H", value),
                   names_byte=idb) for value in (2, 147, 0xFFFF)]
    cases += [Case(f"pcapng snap length {value:#x}", with_field(ng, idb + 12, "<I", value),
                   whole=True) for value in (0, 0xFFFFFFFF)]
    cases += [Case(f"pcapng section length {value}", with_field(ng, 16, "<q", value),
                   whole=True) for value in (-2, 2**63 - 1)]
    cases += [Case("pcapng byte order magic garbled", with_field(ng, 8, "<I", 0x12345678),
                   names_byte=0)]

    def clock(options: bytes, expect: str, tick: float = 1e-9) -> Case:
        """A pcapng file whose interface has these options; ``expect``: the interface is
        named, or its first packet is (a time no report can hold), or all is read."""
        hostile, where = pcapng(packets, options=options, tick=tick)
        named = {"interface": where[1], "first packet": where[2], "whole": None}[expect]
        return Case(f"pcapng interface options {options.hex()}", hostile, names_byte=named,
                    whole=expect == "whole")

    for value in (20, 0x7F, 0xC0, 0xFF):  # finer than 10^-19 or 2^-63 s
        cases.append(clock(option(9, bytes([value])), "interface"))
    for value in (0, 3, 6):  # nanoseconds read as seconds, ms or µs: after the year 9999
        cases.append(clock(option(9, bytes([value])), "first packet"))
    for value in (-2**63, 2**63 - 1, -2 * int(T0)):  # if_tsoffset: before 1970, after 9999
        cases.append(clock(option(14, struct.pack("<q", value)), "first packet", tick=1e-6))
    cases += [clock(option(9, b"\x9e"), "whole", tick=2.0**-30),
              clock(option(14, struct.pack("<q", 1000)), "whole", tick=1e-6),
              clock(struct.pack("<HH", 9, 0xFFFF) + b"\x06\0\0\0", "interface"),
              clock(option(2, bytes(300)) + option(9, b"\x09"), "whole")]
    return cases


def exchange(request: bytes, response: list[bytes]) -> bytes:
    """The keep-alive capture, its second exchange made of these bytes."""
    return classic(connection([([GET % b"a"], [ok(b"a")]), ([request], response),
                               ([GET % b"c"], [ok(b"c")])]))[0]


def second(check: Callable[[dict], bool], what: str) -> Callable[[dict], str | None]:
    """A check of the report's second request (the first must be what it always is)."""
    def look(report: dict) -> str | None:
        requests = report["runs"][0]["requests"]
        if requests[0]["target"] != "/a" or requests[0]["status"] != 200:
            return f"the first request is not GET /a answered 200: {requests[0]}"
        if len(requests) < 2 or not check(requests[1]):
            return f"the second request is not {what}: {requests[1:2]}"
        return None

    return look


def status_line(code: str) -> Case:
    response = f"HTTP/1.1 {code} OK\r\nContent-Length: 2\r\n\r\nok".encode("latin-1")
    return Case(f"status code {code[:12]!r} ({len(code)} characters)",
                exchange(GET % b"b", [response]), whole=True,
                check=second(lambda r: r["status"] is None, "unanswered"))


def response_length(value: str) -> Case:
    response = f"HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\nok".encode("latin-1")
    return Case(f"Content-Length {value[:12]!r} ({len(value)} characters)",
                exchange(GET % b"b", [response]), whole=True,
                check=second(lambda r: r["status"] == 200, "answered 200"))


def request_length(value: str) -> Case:
    request = f"POST /b HTTP/1.1\r\nContent-Length: {value}\r\n\r\n".encode("latin-1")
    return Case(f"a request's Content-Length {value[:12]!r} ({len(value)} characters)",
                exchange(request, [ok(b"b")]), whole=True,
                check=second(lambda r: (r["method"], r["target"]) == ("POST", "/b"), "POST /b"))


def chunk_size(value: str) -> Case:
    response = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%s\r\nok\r\n0\r\n\r\n"
                % value.encode("latin-1"))
    return Case(f"chunk-size {value[:12]!r} ({len(value)} characters)",
                exchange(GET % b"b", [response]), whole=True,
                check=second(lambda r: r["status"] == 200, "answered 200"))


def keep_alive_header(value: str, seconds: float | None) -> Case:
    response = ok(b"b", b"Keep-Alive: %s\r\n" % value.encode("latin-1"))
    return Case(f"Keep-Alive {value[:20]!r} ({len(value)} characters)",
                exchange(GET % b"b", [response]), whole=True,
                check=second(lambda r: r["advertised_timeout"] == seconds
                             and r["response_keep_alive"] == value,
                             f"advertising {seconds} with the header as sent"))


def huge_numbers() -> list[Case]:
    cases = [status_line(code) for code in ("2" * 5000, "2" * 4301, "2" * 400, "2000", "20",
                                            "", "-200", "+20", "2_0", "\u00b200")]
    cases += [response_length(value) for value in ("9" * 19, "9" * 400, "9" * 5000, "-1",
                                                   "-99999", "+5", "5_0", "0x10", "5, 6",
                                                   str(2**64), "0" * 400 + "2", "")]
    cases += [request_length(value) for value in ("9" * 400, "9" * 5000, "-1", "-60", "+2",
                                                  "0" * 400 + "0")]
    cases += [chunk_size(value) for value in ("f" * 17, "f" * 400, "1" * 5000, "-1", "-ffff",
                                              "0x5", "+5", "5_0", "g", "", "0" * 400 + "2")]
    cases += [keep_alive_header(value, seconds) for value, seconds in [
        ("timeout=" + "9" * 400, None), ("timeout=" + "9" * 309, None),
        ("timeout=" + "9" * 11, None), ("timeout=5" + "0" * 400, None),
        ("timeout=" + "0" * 400 + "5", 5.0), ("timeout=5." + "9" * 400, 6.0),
        ("timeout=9999999999, max=" + "9" * 500, 9999999999.0),
        ("max=" + "9" * 500 + ", timeout=5", 5.0)]]
    return cases


def nan_ish() -> list[Case]:
    words = ("NaN", "nan", "Infinity", "-Infinity", "inf", "1e400", "1e308", "-0", "1_0")
    cases = [keep_alive_header(f"timeout={word}, max={word}", None) for word in words]
    cases += [status_line(word) for word in ("NaN", "inf", "1e3")]
    cases += [response_length(word) for word in words]
    cases += [chunk_size(word) for word in words]
    target = b"/NaN?x=Infinity&y=-Infinity&z=1e400"
    cases.append(Case("NaN and Infinity in a request target",
                      exchange(b"GET %s HTTP/1.1\r\n\r\n" % target, [ok(b"NaN")]), whole=True,
                      check=second(lambda r: r["target"] == target.decode(), "as sent")))
    return cases


# Bytes a request or response line or header should not hold: controls, terminal
# escapes, Latin-1, broken UTF-8, Rich markup, bidi overrides.
ODD = (b"\x00", b"\x1b[2J\x1b]0;owned\x07", b"\x7f", b"\xff\xfe", "\u00e9".encode(), b"\xc3\x28",
       b"\xed\xa0\x80", b"[bold red]x[/]", b"[/]", b"\t", b"\r", b"\n", b"\r\n", b"\x85",
       "\u202e".encode(), b"%s%n", b"\\u0000")


def odd_request(place: str, odd: bytes) -> Case:
    method, target, version, name, value = b"GET", b"/b" + odd, b"HTTP/1.1", b"X-Odd", odd
    if place == "method":
        method, target = b"G" + odd + b"T", b"/b"
    elif place == "version":
        target, version = b"/b", b"HTTP/1.1" + odd
    elif place in ("header name", "header value"):
        target = b"/b"
        name = b"X-" + odd if place == "header name" else name
    request = b"%s %s %s\r\n%s: %s\r\n\r\n" % (method, target, version, name, value)
    check = None
    if place == "target" and not set(odd) & set(b" \r\n"):
        sent = target.decode("latin-1")
        check = second(lambda r: r["target"] == sent, f"for {sent!r}")
    return Case(f"{odd!r} in a request's {place}", exchange(request, [ok(b"b")]), whole=True,
                check=check)


def odd_response(place: str, odd: bytes) -> Case:
    reason, name, value = b"OK", b"X-Odd", b"odd"
    if place == "reason":
        reason = b"O" + odd + b"K"
    elif place == "header name":
        name = b"X-" + odd
    elif place == "header value":
        value = odd
    else:  # Connection and Keep-Alive, which the report keeps
        name, value = b"Connection", b"keep-alive" + odd + b"\r\nKeep-Alive: timeout=5" + odd
    response = b"HTTP/1.1 200 %s\r\n%s: %s\r\nContent-Length: 2\r\n\r\nok" % (reason, name, value)
    return Case(f"{odd!r} in a response's {place}", exchange(GET % b"b", [response]),
                whole=True)


def odd_bytes() -> list[Case]:
    cases = [odd_request(place, odd) for place in ("method", "target", "version", "header name",
                                                   "header value") for odd in ODD]
    cases += [odd_response(place, odd) for place in ("reason", "header name", "header value",
                                                     "Connection") for odd in ODD]
    for number in range(40):
        rng = random.Random(f"odd bytes {number}")
        odd = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        if number % 2:
            cases.append(odd_request(rng.choice(("method", "target", "header value")), odd))
        else:
            cases.append(odd_response(rng.choice(("reason", "header value", "Connection")),
                                      odd))
    return cases


def odd_frames() -> list[Case]:
    """Records of no bytes, of 65535 and of 262144; a real frame of 65535 bytes; frames
    cut to their headers as tcpdump -s 54 cuts them; and records past the bound."""
    packets = keep_alive()
    frames = [(ts, framed(ETHERNET, packet)) for ts, packet in packets]
    middle = len(frames) // 2

    def inserted(frame: bytes, at: int, snaplen: int = 262144) -> bytes:
        ts = frames[min(at, len(frames) - 1)][0]
        return classic([*frames[:at], (ts, frame), *frames[at:]], snaplen=snaplen)[0]

    junk = random.Random("junk").randbytes(65535)
    cases = [Case(f"an empty record at {at}", inserted(b"", at), whole=True)
             for at in (0, middle, len(frames))]
    cases += [Case(f"65535 bytes of {name}", inserted(frame, middle), whole=True)
              for name, frame in (("zeros", bytes(65535)), ("0xff", b"\xff" * 65535),
                                  ("junk", junk))]
    cases += [Case("262144 bytes of junk", inserted(junk * 4 + junk[:4], middle), whole=True),
              Case("a record of 262145 bytes", inserted(bytes(262145), middle),
                   names_byte=classic(frames[:middle])[1][-1] + 16 + len(frames[middle - 1][1])),
              Case("a record of 4 MiB under a snap length of 4 GiB",
                   inserted(bytes(16 * 262144), middle, snaplen=0xFFFFFFFF), whole=True)]
    body = bytes(65535 - 54 - 100)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 * len(body))
    big = connection([([GET % b"big"], [head, body, body]), ([GET % b"next"], [ok()])])
    cases.append(Case("a body in frames of 65535 bytes", classic(big)[0], whole=True,
                      check=lambda report: None if [r["status"] for r in report["runs"][0][
                          "requests"]] == [200, 200] else "not two answered requests"))
    cut = [(ts, frame[:54]) for ts, frame in frames]  # what tcpdump -s 54 writes
    cases.append(Case("frames cut to their headers", classic(cut, snaplen=54)[0], whole=True))
    cases += [Case("pcapng: an empty packet", pcapng([*packets[:middle], (T0 + 0.1, b""),
                                                      *packets[middle:]])[0], whole=True),
              Case("pcapng: 65535 bytes of junk", pcapng([*packets[:middle], (T0 + 0.1, junk),
                                                         *packets[middle:]])[0], whole=True)]
    return cases


@pytest.mark.reliability
def test_captures_cut_short(tmp_path):
    survive(tmp_path, "captures cut short at each record boundary and inside every record "
            "and header (exit 2 naming the record's byte)", cut_short(), text_every=5)


@pytest.mark.reliability
def test_random_bytes(tmp_path):
    survive(tmp_path, "captures with seeded random bytes, anywhere or in record headers",
            flipped(), text_every=2)


@pytest.mark.reliability
def test_absurd_record_and_block_lengths(tmp_path):
    survive(tmp_path, "record and block lengths from 0 to 4 GiB", absurd_lengths())


@pytest.mark.reliability
def test_absurd_file_headers(tmp_path):
    survive(tmp_path, "absurd link types, snap lengths, magic and pcapng clocks",
            absurd_headers())


@pytest.mark.reliability
def test_huge_numbers_in_http_headers(tmp_path):
    survive(tmp_path, "status codes, lengths, chunk sizes and Keep-Alive with up to 5,000 "
            "digits", huge_numbers())


@pytest.mark.reliability
def test_nan_and_infinity_in_http_headers(tmp_path):
    survive(tmp_path, "NaN, Infinity and 1e400 in status codes, lengths, chunk sizes, "
            "Keep-Alive and targets", nan_ish())


@pytest.mark.reliability
def test_control_and_non_ascii_bytes_in_http(tmp_path):
    survive(tmp_path, "control, non-ASCII and markup bytes in request and status lines and "
            "headers", odd_bytes())


@pytest.mark.reliability
def test_empty_and_huge_frames(tmp_path):
    survive(tmp_path, "empty, 65535-byte and 262144-byte frames, frames cut to headers",
            odd_frames())


@pytest.mark.reliability
def test_both_classic_readers_read_every_hostile_pcap_alike(tmp_path):
    # `FastSegmentReader._classic` decodes the usual frame inline, the reference
    # `SegmentReader` every frame with `_tcp`: on a hostile file too they must hand on
    # the same segments and stop at the same byte.
    cases = [case for make in (cut_short, flipped, absurd_lengths, absurd_headers, odd_frames)
             for case in make() if not is_pcapng(case.data)]
    path = tmp_path / "hostile.pcap"
    failures = []
    for case in cases:
        path.write_bytes(case.data)
        if read_all(path, fast=True) != read_all(path, fast=False):
            failures.append(case.name)
    tally(AREA, "the same hostile pcaps through both classic-pcap readers (the same "
          "segments, the same error)", len(cases), len(cases) - len(failures))
    assert not failures, failures[:8]


def kalab_command(path: Path, *flags: str) -> Outcome:
    """The real `kalab analyze PATH`, in a process of its own."""
    done = subprocess.run([*KALAB, "analyze", str(path), *flags], capture_output=True,
                          cwd=ROOT, timeout=120,
                          env={**os.environ, "COLUMNS": "120", "PYTHONPATH": str(ROOT)})
    return Outcome(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))


@pytest.mark.reliability
def test_a_sample_through_the_real_command(tmp_path):
    # Four of each kind (the first and three drawn, seeded), each with and without --json,
    # eight processes at a time; each must also exit as it did in this process.
    rng = random.Random("sample")
    sample: list[Case] = []
    for make in (cut_short, flipped, absurd_lengths, absurd_headers, huge_numbers, nan_ish,
                 odd_bytes, odd_frames):
        cases = make()
        sample += [cases[0], *rng.sample(cases[1:], 3)]
    paths = []
    for number, case in enumerate(sample):
        paths.append(tmp_path / f"{number}.pcap")
        paths[-1].write_bytes(case.data)
    with ThreadPoolExecutor(8) as pool:
        with_json = list(pool.map(lambda path: kalab_command(path, "--json"), paths))
        as_text = list(pool.map(kalab_command, paths))
    failures = []
    for case, path, runs in zip(sample, paths, zip(with_json, as_text, strict=True),
                                strict=True):
        problem = trouble(case, list(runs))
        here = kalab_here(path, "--json").code
        if problem is None and here != runs[0].code:
            problem = f"exit {runs[0].code}, but {here} in the test's process"
        if problem is not None:
            failures.append(f"{case.name}: {problem}")
    tally(AREA, "a sample of all the above through the real command, with and without "
          "--json", len(sample), len(sample) - len(failures))
    assert not failures, "\n".join(failures[:8])


@pytest.mark.parametrize(("given", "said"), [("/dev/null", "not a regular file"),
                                             (".", "not a regular file"),
                                             ("absent.pcap", "no such file")])
def test_kalab_analyze_says_what_is_wrong_with_a_path_that_is_no_pcap(tmp_path, given, said):
    path = given if given.startswith("/") else str(tmp_path / given)
    done = run_kalab("analyze", path)
    assert done.returncode == 2
    assert done.stderr == f"kalab: {path}: {said}\n"


@pytest.mark.parametrize("port", ["0", "-5", "65536", "99999999"])
def test_kalab_analyze_takes_only_ports_a_segment_can_have(tmp_path, port):
    """A port no segment can have would match nothing, and the report would say
    "observed" of an empty capture: it is bad input, said before anything is read."""
    pcap = tmp_path / "empty.pcap"
    pcap.write_bytes(b"")  # a regular file, to be refused for its port before it is read
    done = run_kalab("analyze", str(pcap), "--port", "8000", "--port", port)
    assert done.returncode == 2
    assert done.stderr == f"kalab: --port: from 1 to 65535, got {port}\n"


@pytest.mark.parametrize("stats", [
    [1, 2],
    {"pcap": "capture.pcap", "complete": False, "problems": None},
    {"interface": "eth0", "filter": "tcp", "pcap": "capture.pcap", "packets": "many",
     "started_at": "yesterday", "kernel_drops": [1]},
    {"interface": "eth0", "filter": "tcp", "pcap": "capture.pcap", "kernel_drops": -5},
    {"interface": "eth0", "filter": "tcp", "pcap": "capture.pcap", "stopped_at": float("nan")},
])
def test_a_capture_json_beside_a_pcap_that_is_not_the_observer_s_is_no_accounting(
        tmp_path, stats):
    # capture.json beside a pcap says what the observer counted (kernel drops...); a
    # stranger's (or a broken) one is read as hostile: ignored, never a traceback, never
    # a report that breaks its own schema.
    from observer.capture import CaptureStats

    bench = ROOT / "bench"
    subprocess.run([str(KALAB[0]), "-c", f"import sys; sys.path.insert(0, {str(bench)!r}); "
                    f"import synth; synth.write({str(tmp_path / 'capture.pcap')!r}, 3)"],
                   check=True)
    (tmp_path / "capture.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError):
        CaptureStats.from_dict(stats)
    done = run_kalab("analyze", str(tmp_path / "capture.pcap"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    capture = report["runs"][0]["capture"]
    assert capture["kernel_drops"] is None and capture["packets"] == 0
    schema = json.loads((ROOT / "schema" / "report.schema.json").read_text())
    jsonschema.validate(report, schema)


def test_the_observer_s_capture_json_reads_back_as_it_was_written():
    from observer.capture import CaptureStats

    written = CaptureStats("eth0", "tcp port 5000", "capture.pcap", started_at=1.5,
                           stopped_at=2.0, packets=7, kernel_drops=1, problems=["x"],
                           complete=True)
    assert CaptureStats.from_dict(json.loads(json.dumps(written.to_dict()))) == written
