"""Streaming analysis: records handed out as connections end equal the records made at the end.

The reference is an `Analyzer` without bounds (``close_linger=None, idle_bound=None``):
nothing is final before the end of the capture, as before streaming. The streaming one
looks after every segment (``sweep_every=1``) and makes an over connection final at once
(``close_linger=0``): the harshest setting a capture file can meet. On every capture the
tests have (the course's reference runs, the hostile corpus), both must write the same
records.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import test_hostile_pcaps as hostile
from scapy.layers.inet import IP, TCP
from test_pcap_formats import T0, conversation, write

from kalab import evidence, pcap_fast, report, spool, summary
from kalab.analyzer import Analyzer, Segment, assemble
from kalab.pcap import PcapError
from kalab.pcap_fast import FastSegmentReader
from kalab.report import Records

ROOT = Path(__file__).resolve().parent.parent


def segments(path: Path) -> list:
    """What `kalab analyze` feeds: the fast reader's segments, up to a bad record."""
    fed = []
    try:
        for batch in FastSegmentReader(path, None, skip_acks=True).batches():
            fed += batch
    except PcapError:
        pass
    return fed


def as_json(records: tuple[list, list]) -> str:
    connections, requests = records
    return json.dumps([[dataclasses.asdict(c) for c in connections],
                       [dataclasses.asdict(r) for r in requests]], default=str)


def whole(fed: list) -> tuple[list, list]:
    analyzer = Analyzer(close_linger=None, idle_bound=None)
    analyzer.feed_all(fed)
    return analyzer.finish()


def streamed(fed: list, **bounds) -> tuple[tuple[list, list], int, int]:
    """The records handed out segment by segment, then at the end; how many were handed
    out before the end; the most connections held at once."""
    analyzer = Analyzer(**{"close_linger": 0, "sweep_every": 1, **bounds})
    final, held = [], 0
    for seg in fed:
        analyzer.feed(seg)
        final += analyzer.finished()
        held = max(held, len({conn for conn, _ in analyzer._live.values()}))
    early = len(final)
    analyzer.end()
    final += analyzer.finished()
    return assemble(final, analyzer.ports, analyzer.server_ports()), early, held


def report_of(analysis: evidence.WireAnalysis) -> report.Report:
    run = report.EngineRun(
        engine="capture", kind="unknown", description="", version=None, listen=None,
        options={}, capture=report.Capture(pcap="capture.pcap"),
        connections=analysis.connections, requests=analysis.requests, verdict="observed")
    return report.Report(schema=report.SCHEMA, scenario=None, name="capture",
                         runtime="analyze", started_at=0.0, finished_at=0.0, runs=[run],
                         verdict="observed", exit_code=0)


COURSE = sorted(ROOT.glob("course/*/reference/*/capture.pcap"))


def test_the_course_captures_stream_to_the_same_records(tmp_path, monkeypatch):
    # The spool sorts requests in runs of 2 and keeps 2 connections at hand: every
    # capture's requests then go through several merged runs (the pipelined one has
    # three sent at the same instant) and come back from the file.
    monkeypatch.setattr(spool, "_RUN", 2)
    monkeypatch.setattr(spool, "_RECENT", 2)
    assert len(COURSE) >= 10
    early = 0
    pipelined = tmp_path / "pipelined.pcap"
    pipelined.write_bytes(hostile.bases()["pipelined"][0])
    for path in [*COURSE, pipelined]:
        fed = segments(path)
        records, handed, _ = streamed(fed)
        assert as_json(records) == as_json(whole(fed)), path
        early += handed
        # What `kalab analyze` reads with its own batches and default bounds, the records
        # kept in lists or spooled to disk and read back: the same, and the same report.
        kept = evidence.analyze_capture(path)
        assert as_json((kept.connections, kept.requests)) == as_json(whole(fed)), path
        try:
            spooled_as_kept(path)
        except AssertionError as exc:
            raise AssertionError(path) from exc
    assert early >= len(COURSE)  # records did go out before the end: the test can fail


def seen(connections: list) -> list[tuple[int, bool, bool]]:
    """What `Records.seen` gives, from the records themselves."""
    return [(c.id, c.syn_at is not None, bool(c.gaps)) for c in connections]


def spooled_as_kept(path: Path) -> None:
    """`kalab analyze`'s spool gives back what the lists hold: records, report, problems."""
    kept, spooled = evidence.analyze_capture(path), evidence.analyze_capture(path, spool=True)
    assert isinstance(spooled.connections, Records) and isinstance(spooled.requests, Records)
    assert as_json((list(spooled.connections), list(spooled.requests))) == \
        as_json((kept.connections, kept.requests))
    written = io.BytesIO()
    report.write_json(report_of(spooled), written)
    assert written.getvalue() == report.to_json_bytes(report_of(kept))
    assert list(spooled.connections.seen()) == seen(kept.connections)
    assert spooled.connections.origin() == min(
        (c.syn_at or c.established_at for c in kept.connections
         if not c.probe and (c.syn_at or c.established_at) is not None), default=None)
    assert evidence.wire_problems(spooled.connections) == \
        evidence.wire_problems(kept.connections)
    # The terminal's summary: its time origin and its stories from what the spool kept
    # and from records read alone (`Records.seen`, `Records.at`), not from whole walks.
    assert summary.as_text(report_of(spooled)) == summary.as_text(report_of(kept))
    for records, listed in ((spooled.connections, kept.connections),
                            (spooled.requests, kept.requests)):
        assert [records[i] for i in range(-len(listed), len(listed))] == [*listed, *listed]


@pytest.mark.reliability
def test_the_hostile_corpus_spools_to_the_same_report(tmp_path):
    # Odd bytes, absurd headers and numbers, holes: written as JSON lines and read back,
    # each record must be what the lists hold, and its line what the writer writes.
    path = tmp_path / "hostile.pcap"
    cases = [(name, data) for name, (data, _) in hostile.bases().items()]
    for make in (hostile.absurd_headers, hostile.huge_numbers, hostile.nan_ish,
                 hostile.odd_bytes, hostile.flipped):
        cases += [(case.name, case.data) for case in make()]
    gaps = 0
    for name, data in cases:
        path.write_bytes(data)
        try:
            spooled_as_kept(path)
        except AssertionError as exc:
            raise AssertionError(name) from exc
        gaps += any(c.gaps for c in evidence.analyze_capture(path).connections)
    assert gaps  # the `Records.seen` of a connection with holes was checked


def test_without_orjson_the_spool_writes_and_reads_with_json(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "orjson", None)
    for path in COURSE[:3]:
        spooled_as_kept(path)


@pytest.mark.reliability
def test_the_hostile_corpus_streams_to_the_same_records(tmp_path):
    cases = [(name, data) for name, (data, _) in hostile.bases().items()]
    for make in (hostile.cut_short, hostile.flipped, hostile.absurd_lengths,
                 hostile.absurd_headers, hostile.huge_numbers, hostile.nan_ish,
                 hostile.odd_bytes, hostile.odd_frames):
        cases += [(case.name, case.data) for case in make()]
    path = tmp_path / "hostile.pcap"
    differ, early = [], 0
    for name, data in cases:
        path.write_bytes(data)
        # Each file holds one connection: two segments of another, a second apart, after
        # its last let the looks find it over (or quiet) before the end.
        fed = segments(path)
        last = max((seg.ts for seg in fed), default=T0)
        fed += [Segment(last + n, "192.0.2.1", 1, "192.0.2.2", 2, 0x10, 0, 0, b"", 0)
                for n in (1, 2)]
        records, handed, _ = streamed(fed)
        early += handed
        if as_json(records) != as_json(whole(fed)):
            differ.append(name)
    assert not differ, f"{len(differ)} of {len(cases)} differ: {differ[:8]}"
    # Many files are cut before their connection is over: still, records did go out early.
    assert early >= len(cases) // 3


def test_memory_follows_the_open_connections(tmp_path):
    # 60 keep-alive connections one after another, a few open at once.
    packets = sorted((p for n in range(60) for p in conversation(
        "10.0.0.1", "10.0.0.2", 40000 + n, 8080, T0 + 0.5 * n, ["a", "b"])),
        key=lambda p: p[0])
    fed = segments(write(tmp_path / "x.pcap", packets))
    records, early, held = streamed(fed)
    assert as_json(records) == as_json(whole(fed))
    assert len(records[0]) == 60 and len(records[1]) == 120
    assert early >= 57 and held <= 4, (early, held)
    # At the default bounds (5 s after the close), fed in batches as `kalab analyze` does.
    analyzer, final, held = Analyzer(sweep_every=64), [], 0
    for start in range(0, len(fed), 64):
        analyzer.feed_all(fed[start:start + 64])
        final += analyzer.finished()
        held = max(held, len({conn for conn, _ in analyzer._live.values()}))
    # One connection ends every 0.5 s and a look comes every 64 segments (2 s): a
    # connection is final 5 s after its end and two looks, 7.5 to 9.5 s. Those of the last
    # 9.5 s are still held, and those open: about 22.
    assert len(final) >= 40 and held <= 24, (len(final), held)


def test_one_wild_capture_time_makes_nothing_final(tmp_path):
    # A corrupt record 10^7 seconds ahead, in the middle of a keep-alive connection.
    packets = conversation("10.0.0.1", "10.0.0.2", 40000, 8080, T0, ["a", "b", "c"])
    stray = IP(src="10.0.0.9", dst="10.0.0.2") / TCP(sport=1234, dport=8080, flags="A")
    packets.insert(7, (T0 + 1e7, stray))
    fed = segments(write(tmp_path / "x.pcap", packets))
    (connections, requests), _, _ = streamed(fed)
    assert as_json((connections, requests)) == as_json(whole(fed))
    assert [c.requests for c in connections] == [["w1", "w2", "w3"], []]


def test_a_connection_quiet_past_the_idle_bound_goes_on_as_a_new_one(tmp_path):
    # The bound the report states, at 0.2 s: the keep-alive probes come 0.3 s after the
    # last request, with the other connection's segments between them.
    packets = sorted(conversation("10.0.0.1", "10.0.0.2", 40000, 8080, T0, ["a", "b"])
                     + conversation("10.0.0.1", "10.0.0.2", 40001, 8080, T0, ["c"]),
                     key=lambda p: p[0])
    fed = segments(write(tmp_path / "x.pcap", packets))
    (connections, _), _, _ = streamed(fed, idle_bound=0.2)
    assert len(whole(fed)[0]) == 2
    assert len(connections) > 2
    assert [c.syn_at is not None for c in connections[:2]] == [True, True]
    assert all(c.syn_at is None and not c.complete for c in connections[2:])


def test_a_conversation_cut_by_the_idle_bound_is_said_to_be_one(tmp_path, monkeypatch):
    # What `kalab analyze` says of it: not only "no SYN seen" (a capture started late),
    # but that these connections go on conversations the bound cut.
    packets = sorted(conversation("10.0.0.1", "10.0.0.2", 40000, 8080, T0, ["a", "b"])
                     + conversation("10.0.0.1", "10.0.0.2", 40001, 8080, T0, ["c"]),
                     key=lambda p: p[0])
    path = write(tmp_path / "x.pcap", packets)
    monkeypatch.setattr(evidence, "Analyzer", functools.partial(
        Analyzer, idle_bound=0.2, sweep_every=1))
    monkeypatch.setattr(pcap_fast, "_BATCH", 1)  # a look after every segment
    analysis = evidence.analyze_capture(path, spool=True)
    connections = list(analysis.connections)
    cut = [c for c in connections if c.syn_at is None]
    assert cut and analysis.continued_after_idle == len(cut)
    problems = evidence.capture_problems(analysis)
    assert f"{len(cut)} connection(s) whose SYN was not seen go on a conversation that was " \
        "quiet longer than the analysis' idle bound (0.2 s)" in " ".join(problems)
    # Without the bound nothing is cut, and nothing is said.
    monkeypatch.setattr(evidence, "Analyzer", functools.partial(Analyzer, idle_bound=None))
    whole_file = evidence.analyze_capture(path)
    assert whole_file.continued_after_idle == 0 and len(whole_file.connections) == 2
    assert not any("idle bound" in p for p in evidence.capture_problems(whole_file))


def test_a_segment_long_after_the_close_is_said_to_come_after_it(tmp_path, monkeypatch):
    # A RST long after both FINs, past the close linger (5 s): the closed connection's
    # record was final; the RST makes a connection of its own, whose missing SYN is not
    # blamed on a capture that started late only.
    packets = conversation("10.0.0.1", "10.0.0.2", 40000, 8080, T0, ["a"])
    last = packets[-1][0]
    # Another connection's segments first, 6 s on and after: the looks that find the
    # first one quiet.
    packets += [(last + 6 + n, p) for n, (_, p) in enumerate(
        conversation("10.0.0.3", "10.0.0.2", 40001, 8080, T0, ["b"]))]
    packets.append((packets[-1][0] + 1, IP(src="10.0.0.1", dst="10.0.0.2")
                    / TCP(sport=40000, dport=8080, flags="R", seq=1)))
    path = write(tmp_path / "x.pcap", packets)
    monkeypatch.setattr(evidence, "Analyzer", functools.partial(Analyzer, sweep_every=1))
    monkeypatch.setattr(pcap_fast, "_BATCH", 1)  # a look after every segment
    analysis = evidence.analyze_capture(path, spool=True)
    connections = list(analysis.connections)
    assert [(c.client, c.syn_at is not None) for c in connections] == [
        ("10.0.0.1:40000", True), ("10.0.0.3:40001", True), ("10.0.0.1:40000", False)]
    assert analysis.after_close == 1 and analysis.continued_after_idle == 0
    assert "1 connection(s) whose SYN was not seen came on the four-tuple of a connection " \
        "that had closed and been quiet for the analysis' close linger (5 s)" \
        in " ".join(evidence.capture_problems(analysis))
    # Read whole, the RST is the closed connection's: one connection, nothing said.
    whole_file = whole(segments(path))
    assert [c.client for c in whole_file[0]] == ["10.0.0.1:40000", "10.0.0.3:40001"]


def test_zeek_logs_walk_the_records_once_and_hold_only_connections_with_requests_to_come(
        tmp_path):
    # The logs as written before they streamed: every connection by id, each request
    # named after its own. A request pipelined, inferred TLS ones, and connections
    # without requests are among the course captures.
    from kalab import zeek

    pipelined = tmp_path / "pipelined.pcap"
    pipelined.write_bytes(hostile.bases()["pipelined"][0])
    for path in [*COURSE, pipelined]:
        run = report_of(evidence.analyze_capture(path, spool=True)).runs[0]
        connections, requests = list(run.connections), list(run.requests)
        by_id = {c.id: c for c in connections}
        expected = ([zeek.conn_record(c) for c in connections],
                    [zeek.http_record(r, by_id[r.connection]) for r in requests
                     if not r.inferred])
        assert zeek.records(run) == expected, path
    # Held: 60 connections one after another, 2 requests each, at most a few at a time.
    packets = sorted((p for n in range(60) for p in conversation(
        "10.0.0.1", "10.0.0.2", 40000 + n, 8080, T0 + n, [f"a{n}", f"b{n}"])),
        key=lambda p: p[0])
    run = report_of(evidence.analyze_capture(write(tmp_path / "seq.pcap", packets),
                                             spool=True)).runs[0]
    walked = {"connections": 0, "requests": 0}

    def counting(records: Records, what: str) -> Records:
        def walk():
            for record in records:
                walked[what] += 1
                yield record
        return Records(len(records), walk)

    run.connections = counting(run.connections, "connections")
    run.requests = counting(run.requests, "requests")
    most = 0
    for _ in zeek.lines(run):
        most = max(most, walked["connections"] - walked["requests"] // 2)
    assert walked == {"connections": 60, "requests": 120}  # each walked once
    assert most <= 2


def test_a_capture_problem_names_20_connections_and_counts_the_rest():
    # A capture that started late may have thousands of connections without a SYN: the
    # problem names the first ones, as before, and counts the others.
    from types import SimpleNamespace

    def made(late: int, holes: int) -> list[str]:
        return evidence.wire_problems(
            SimpleNamespace(id=n, syn_at=None if n <= late else T0, gaps=int(n <= holes))
            for n in range(1, 2001))

    assert made(2, 0) == ["no SYN seen for connection(s) 1, 2: the capture started late "
                          "or lost packets"]
    named = ", ".join(str(n) for n in range(1, evidence.IDS_NAMED + 1))
    assert made(2000, 21) == [
        f"no SYN seen for connection(s) {named} and 1,980 more: the capture started late "
        "or lost packets",
        f"bytes missing from connection(s) {named} and 1 more: the capture lost packets"]


def test_the_frames_cut_sentence_names_20_connections_and_counts_the_rest():
    # A capture with a short snap length cuts frames of every connection: the terminal's
    # sentence names the first ones, like the capture problems.
    from types import SimpleNamespace

    from kalab.summary import truncation

    capture = report.Capture(pcap="x.pcap", snaplen=96, truncated_frames=3000)
    sentence = truncation(capture, [SimpleNamespace(id=n, truncated=n % 2) for n in
                                    range(1, 3001)])
    named = ", ".join(str(n) for n in range(1, 2 * evidence.IDS_NAMED, 2))
    assert sentence.endswith(f"; connection(s) {named} and 1,480 more had segments cut")
    assert truncation(capture, [SimpleNamespace(id=1, truncated=0)]).endswith(
        "what the cut hid is marked unknown")


def test_the_time_origin_leaves_out_what_numbering_leaves_out(tmp_path):
    # A SYN nobody answered, to a port that is no server of the capture, comes first: the
    # report leaves its connection out, and the terminal's times start at the next SYN.
    packets = [(T0, IP(src="10.0.0.9", dst="10.0.0.2") / TCP(sport=5000, dport=9999,
                                                               flags="S", seq=7))]
    packets += conversation("10.0.0.1", "10.0.0.2", 40000, 8080, T0 + 1, ["a"])
    path = write(tmp_path / "x.pcap", packets)
    spooled_as_kept(path)
    spooled = evidence.analyze_capture(path, spool=True)
    assert [c.server for c in spooled.connections] == ["10.0.0.2:8080"]
    assert spooled.connections.origin() == T0 + 1
    assert summary.time_zero(report_of(spooled).runs[0]) == T0 + 1


def test_a_temporary_file_that_cannot_grow_is_a_one_line_lab_error(tmp_path):
    # The kernel refuses to let the spool's file grow past 64 KiB (as a full TMPDIR would
    # refuse it): `kalab analyze` says where and why in one line, exit 4, no traceback.
    packets = sorted((p for n in range(300) for p in conversation(
        "10.0.0.1", "10.0.0.2", 30000 + n, 8080, T0 + n, ["a", "b"])), key=lambda p: p[0])
    path = write(tmp_path / "x.pcap", packets)
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    done = subprocess.run([sys.executable, "-m", "kalab.cli", "analyze", "--json", str(path)],
                          capture_output=True, text=True, cwd=ROOT, preexec_fn=small_files,
                          env={**os.environ, "TMPDIR": str(spool_dir)},
                          timeout=120)
    assert done.returncode == 4, done.stderr
    assert done.stderr.splitlines() == [
        f"kalab: the records' temporary file in {spool_dir}: File too large (TMPDIR names "
        "another folder; it needs about as much room as the JSON report)"]
    assert list(spool_dir.iterdir()) == []  # nothing left behind


def test_analyze_help_states_the_bounds_the_analyzer_uses(capsys):
    from kalab import analyzer, cli

    with pytest.raises(SystemExit):
        cli.main(["analyze", "--help"])
    words = " ".join(capsys.readouterr().out.split())
    assert f"is over and {analyzer.CLOSE_LINGER:g} s of capture time have passed" in words
    assert f"after {analyzer.IDLE_BOUND:g} s without a segment" in words
    assert "TMPDIR" in words
    from kalab.progress import COMPRESSED_HOLDS, READING_SHOWN_FROM

    assert (f"how far a capture of {READING_SHOWN_FROM >> 20} MiB or more (compressed, "
            f"{(READING_SHOWN_FROM // COMPRESSED_HOLDS) >> 20} MiB) is read") in words
