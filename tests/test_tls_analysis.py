"""The analyzer over TLS (issue 14): HTTPS captures get the report plain HTTP gets.

tshark is the referee (``-d tcp.port==PORT,tls -o tls.keylog_file:KEYLOG``), on
captures made here from real servers (gunicorn's gthread worker ending TLS
itself, nginx in front of gunicorn; TLS 1.2 and 1.3) and on captures built with
scapy from real TLS records (two `ssl.SSLObject`s over memory BIOs, as
test_tls makes them) at times the test chooses. With the key log the report
must be plain HTTP's: connections, requests per connection, depths, methods,
targets, statuses, first FIN and RST and their times. Without it: the same
connections, closes and times, the requests inferred from the records (their
number, depths and times), and what the records say of TLS itself.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import tshark_referee
from conftest import ROOT, can_run_lab, capturing, free_port, run_kalab
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw
from scapy.utils import wrpcap
from test_tls import make_pki, memory_tls

from client.sessions import run_sessions
from kalab import evidence, handoff
from kalab.analyzer import Analyzer, Segment
from kalab.certs import client_tls, make_server_tls
from kalab.report import SCHEMA, Capture, EngineRun, Report, to_json
from kalab.scenario import parse
from kalab.tls import KeyLog
from server.__main__ import stop_engine
from server.engines import plan

needs_tshark = pytest.mark.skipif(not tshark_referee.available(), reason="needs tshark")

# ------------------------------------------------------ captures from real servers

# Two requests on a connection, then idle past the server's 2 s timeout: the server
# closes; the third request opens a new connection, which the client closes.
STEPS = ("[get: /keep-alive, sleep: 0.3, get: /keep-alive?n=2, sleep: 2.8, "
         "get: /keep-alive?n=3, sleep: 0.3, close]")
SERVERS = {"gunicorn": ", worker: gthread, keep_alive: 2", "nginx": ", keepalive_timeout: 2"}
CASES = [(engine, version) for engine in SERVERS for version in ("1.2", "1.3")]


@dataclass
class Made:
    pcap: Path
    keylog: Path
    port: int
    records: dict


def serve(folder: Path, engine: str, version: str) -> Made:
    """``engine`` over HTTPS as the server role runs it, the client role's requests to it,
    captured on lo as the observer captures."""
    port = free_port(47000, 48000)
    scenario = parse(f'tls: {{version: "{version}"}}\nport: {port}\n'
                     f"engines: [{{engine: {engine}{SERVERS[engine]}}}]\n"
                     f"sessions:\n  - {{steps: {STEPS}}}\n")
    scratch = folder / ".scratch"
    folder.mkdir()
    scratch.mkdir(mode=0o700)
    tls = make_server_tls(folder, scratch, "127.0.0.1", [])
    (eng,) = scenario.engines
    children = []
    pcap = folder / "capture.pcap"
    with open(folder / "server.log", "wb") as log:
        try:
            for launch in plan(eng, scenario.app, "127.0.0.1", port, folder, scratch, tls):
                child = subprocess.Popen(launch.argv, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **launch.env}, cwd=ROOT)
                children.append(child)
                eng.kind_class.ready(launch, child, 30)
            with capturing(port, pcap, 0.5):
                records = run_sessions(scenario, f"https://127.0.0.1:{port}", None,
                                       client_tls(folder, version))
        finally:
            for child in reversed(children):
                stop_engine(child)
    return Made(pcap, folder / handoff.TLS_KEYLOG, port, records)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[tuple[str, str], Made]:
    why = can_run_lab()
    if why is not None:
        pytest.skip(why)
    work = tmp_path_factory.mktemp("tls-servers")
    return {(engine, version): serve(work / f"{engine}-{version}", engine, version)
            for engine, version in CASES}


def analyse(pcap: Path, port: int, keylog: Path | None) -> dict:
    """The engine run `kalab analyze` would report, as JSON."""
    keys = None if keylog is None else KeyLog(keylog.read_text())
    analysis = evidence.analyze_capture(pcap, {port}, keylog=keys)
    return json.loads(to_json_run(analysis))


def to_json_report(analysis: evidence.WireAnalysis) -> str:
    """The report `kalab analyze` would write of ``analysis``, as JSON."""
    run = EngineRun(engine="capture", kind="unknown", description="", version=None,
                    listen=None, options={}, capture=Capture(),
                    connections=analysis.connections, requests=analysis.requests)
    return to_json(Report(schema=SCHEMA, scenario=None, name="x", runtime="analyze",
                          started_at=0.0, finished_at=0.0, runs=[run], verdict="observed",
                          exit_code=0))


def to_json_run(analysis: evidence.WireAnalysis) -> str:
    return json.dumps(json.loads(to_json_report(analysis))["runs"][0])


def tshark_close_notifies(pcap: Path, port: int, keylog: Path
                          ) -> list[tuple[int, int, float]]:
    """(source port, destination port, time) of every frame with a close_notify alert, as
    tshark decrypts."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},tls", "-o",
         f"tls.keylog_file:{keylog}", "-Y", "tls.alert_message.desc == 0", "-T", "fields",
         "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "frame.time_epoch"],
        capture_output=True, text=True, check=True).stdout
    return [(int(src), int(dst), float(at))
            for src, dst, at in (line.split("\t") for line in out.splitlines())]


def tshark_hellos(pcap: Path, port: int) -> list[tuple[str, str]]:
    """(version the ServerHello chose, ALPN it chose) per ServerHello, as tshark reads."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},tls", "-Y",
         "tls.handshake.type == 2", "-T", "fields", "-e",
         "tls.handshake.extensions.supported_version", "-e", "tls.handshake.version",
         "-e", "tls.handshake.extensions_alpn_str"],
        capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("\t")) for line in out.splitlines()]


@needs_tshark
@pytest.mark.parametrize("engine, version", CASES)
def test_with_the_key_log_the_report_is_plain_https_and_tsharks(made, engine, version):
    m = made[(engine, version)]
    assert [r["status"] for r in m.records["requests"]] == [200, 200, 200]
    run = analyse(m.pcap, m.port, m.keylog)
    assert tshark_referee.compare(run, m.pcap, m.port, m.keylog) == []
    assert [(r["connection"], r["depth"], r["method"], r["target"], r["status"],
             r["inferred"]) for r in run["requests"]] == [
        (1, 1, "GET", "/keep-alive", 200, False), (1, 2, "GET", "/keep-alive?n=2", 200, False),
        (2, 1, "GET", "/keep-alive?n=3", 200, False)]
    first, second = run["connections"]
    assert (first["closed_by"], second["closed_by"]) == ("server", "client")
    # the server's idle close: timed from the last response, not from its close_notify
    assert 1.9 <= first["idle_before_close"] <= 3.0
    for conn in run["connections"]:
        tls = conn["tls"]
        assert tls["version"] == f"TLS {version}" and tls["decryption"] == "decrypting"
        assert tls["undecrypted_records"] == 0 and tls["notes"] == []
        assert tls["alpn_known"] and tls["handshake_inferred"] is False
        assert 0 < tls["handshake_seconds"] < 1
    # close_notify: who and when, as tshark decrypts it
    client_port = {c["id"]: int(c["client"].rsplit(":", 1)[1]) for c in run["connections"]}
    seen = tshark_close_notifies(m.pcap, m.port, m.keylog)
    for conn in run["connections"]:
        tls = conn["tls"]
        mine = [(src, at) for src, dst, at in seen
                if {src, dst} == {client_port[conn["id"]], m.port}]
        if not mine:
            assert tls["close_notify"] == "none" and tls["close_notify_by"] is None
            continue
        port, at = mine[0]
        assert tls["close_notify"] == "seen"
        assert tls["close_notify_by"] == ("server" if port == m.port else "client")
        assert abs(tls["close_notify_at"] - at) <= tshark_referee.TOLERANCE
        assert tls["close_notify_before_fin"] == round(conn["first_fin_at"] - at, 6)
    # nginx says close_notify before its FIN when it closes an idle connection;
    # gunicorn's worker just closes the socket
    assert (first["tls"]["close_notify_by"], first["tls"]["close_notify"]) == (
        ("server", "seen") if engine == "nginx" else (None, "none"))


@needs_tshark
@pytest.mark.parametrize("engine, version", CASES)
def test_without_keys_the_requests_are_inferred_where_tshark_has_them(made, engine, version):
    m = made[(engine, version)]
    run = analyse(m.pcap, m.port, None)
    # tshark, with the key log, is the referee: the same connections, closes and times,
    # requests per connection, depths and times; their content is unknown
    assert tshark_referee.compare(run, m.pcap, m.port, m.keylog) == []
    assert [(r["connection"], r["depth"], r["method"], r["target"], r["status"],
             r["inferred"]) for r in run["requests"]] == [
        (1, 1, None, None, None, True), (1, 2, None, None, None, True),
        (2, 1, None, None, None, True)]
    keyed = analyse(m.pcap, m.port, m.keylog)
    assert [r["sent_at"] for r in run["requests"]] == [r["sent_at"] for r in keyed["requests"]]
    assert [r["response_at"] is not None for r in run["requests"]] == [True] * 3
    hellos = tshark_hellos(m.pcap, m.port)
    assert len(hellos) == len(run["connections"]) == 2
    for conn, (supported, legacy, alpn) in zip(run["connections"], hellos, strict=True):
        tls = conn["tls"]
        assert tls["decryption"] == "no_keylog" and tls["undecrypted_records"] > 0
        assert tls["version"] == {"0x0304": "TLS 1.3", "0x0303": "TLS 1.2"}[supported or legacy]
        assert tls["sni"] is None  # the client asked for an address
        if version == "1.2":  # ALPN is in the clear in TLS 1.2 (when the server chose one)
            assert (tls["alpn"], tls["alpn_known"]) == (alpn or None, True)
        else:  # and encrypted in TLS 1.3
            assert (tls["alpn"], tls["alpn_known"]) == (None, False)
    first = run["connections"][0]
    if engine == "nginx" and version == "1.2":
        # an alert is a record of its own type: seen, not read
        assert first["tls"]["alerts"] == ["server encrypted"]
        assert first["tls"]["close_notify"] == "unknown"
    if version == "1.3":
        assert first["tls"]["close_notify"] == "unknown" and first["tls"]["alerts"] == []
    # gunicorn sends no alert: the idle time needs no keys
    if engine == "gunicorn" or version == "1.2":
        assert first["idle_before_close"] == keyed["connections"][0]["idle_before_close"]


@pytest.mark.parametrize("engine, version", [CASES[1]])
def test_kalab_analyze_keylog(made, tmp_path, engine, version):
    m = made[(engine, version)]
    done = run_kalab("analyze", str(m.pcap), "--keylog", str(m.keylog), "--json")
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    assert [(r["method"], r["target"], r["status"]) for r in run["requests"]] == [
        ("GET", "/keep-alive", 200), ("GET", "/keep-alive?n=2", 200),
        ("GET", "/keep-alive?n=3", 200)]
    summary = run_kalab("analyze", str(m.pcap), "--keylog", str(m.keylog))
    assert "#1 TLS 1.3" in summary.stdout and "(127.0.0.1:" in summary.stdout
    assert "TLS 1.3) carried w1, w2: closed by the server" in summary.stdout
    plain = run_kalab("analyze", str(m.pcap))
    assert plain.returncode == 0
    assert "its requests are inferred from its TLS records" in plain.stdout
    # a key log that holds other connections' secrets: those are inferred, and said so
    other = tmp_path / "other.log"
    other.write_text(f"CLIENT_RANDOM {'ab' * 32} {'cd' * 48}\n")
    done = run_kalab("analyze", str(m.pcap), "--keylog", str(other), "--json")
    assert done.returncode == 3
    (problem,) = json.loads(done.stdout)["runs"][0]["capture"]["problems"]
    assert problem.startswith(f"--keylog {other} did not decrypt the TLS of connection(s) 1, 2 "
                              "(no_keys")


def test_a_bad_key_log_is_one_line_and_exit_2(tmp_path):
    pcap = tmp_path / "empty.pcap"
    wrpcap(str(pcap), [IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=443,
                                                                 flags="S")])
    garbage, folder, fifo = tmp_path / "garbage.log", tmp_path / "dir", tmp_path / "fifo"
    garbage.write_bytes(b"\x00\xff not a key log\nCLIENT_RANDOM zz yy\n")
    folder.mkdir()
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(garbage)
    for path, words in ((garbage, "holds no TLS secrets"), (tmp_path / "none", "cannot be read"),
                        (folder, "is not a regular file"), (fifo, "is not a regular file"),
                        (link, "cannot be read")):
        done = run_kalab("analyze", str(pcap), "--keylog", str(path))
        assert done.returncode == 2, (path, done.stderr)
        assert done.stdout == ""
        assert done.stderr.startswith(f"kalab: --keylog {path} {words}"), done.stderr
        assert done.stderr.count("\n") == 1


# ------------------------------------------- captures built from memory TLS records

CLIENT, SERVER = ("10.9.0.1", 40000), ("10.9.0.2", 443)
T0 = 1_800_000_000.0


def frames(wire: list[tuple[str, bytes]], times: list[float],
           closes: list[tuple[str, float]]) -> list:
    """A TCP connection carrying ``wire`` (each chunk at its time, cut in 1400-byte
    segments), its FINs at ``closes`` (side, time), as scapy packets in time order."""
    seq = {"client": 1000, "server": 5000}
    events: list[tuple[float, int, object]] = []

    def segment(side: str, at: float, flags: str, data: bytes = b"") -> None:
        src, dst = (CLIENT, SERVER) if side == "client" else (SERVER, CLIENT)
        other = "server" if side == "client" else "client"
        packet = IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags,
                                                  seq=seq[side], ack=seq[other])
        if data:
            packet = packet / Raw(data)
        packet.time = at
        events.append((at, len(events), packet))
        seq[side] += len(data) + (1 if "S" in flags or "F" in flags else 0)

    segment("client", T0 - 0.003, "S")
    segment("server", T0 - 0.002, "SA")
    segment("client", T0 - 0.001, "A")
    moments = sorted([(at, 0, side, data) for (side, data), at in zip(wire, times, strict=True)]
                     + [(at, 1, side, b"") for side, at in closes])
    for at, kind, side, data in moments:
        if kind == 1:
            segment(side, at, "FA")
            continue
        for start in range(0, len(data), 1400):
            segment(side, at, "PA", data[start:start + 1400])
    return [packet for _, _, packet in sorted(events, key=lambda e: (e[0], e[1]))]


def segments(packets: list) -> list[Segment]:
    out = []
    for p in packets:
        ip, tcp = p[IP], p[TCP]
        out.append(Segment(float(p.time), ip.src, tcp.sport, ip.dst, tcp.dport, int(tcp.flags),
                           tcp.seq, tcp.ack, bytes(tcp.payload)))
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def memory_connection(pki, folder: Path, version: str, exchanges: int, idle: float
                      ) -> tuple[list[tuple[str, bytes]], list[float], str]:
    """Real TLS records of a connection with ``exchanges`` requests, 0.5 s apart, its
    last chunk (the server's close_notify) ``idle`` s after the last response."""
    wire, keys, _, _ = memory_tls(pki, folder, version, exchanges=exchanges)
    times, at = [], T0
    # the handshake's chunks 1 ms apart; each request 0.5 s after the response before it
    requests = [n for n, (side, data) in enumerate(wire) if side == "client"
                and data[0] == 23 and (n == 0 or wire[n - 1][0] == "server")]
    for n, _ in enumerate(wire):
        at += 0.5 if n in requests[1:] else 0.001
        times.append(at)
    times[-1] = times[-2] + idle
    return wire, times, keys


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_inferred_exchanges_are_the_decrypted_requests_by_place_and_time(pki, tmp_path,
                                                                         version):
    wire, times, keys = memory_connection(pki, tmp_path, version, 3, 0.7)
    keylog = KeyLog(keys)
    fin_at = times[-1] + 0.002
    packets = frames(wire, times, [("server", fin_at), ("client", fin_at + 0.001)])
    keyed, plain = Analyzer({443}, keylog), Analyzer({443})
    for analyzer in (keyed, plain):
        analyzer.feed_all(segments(packets))
    (conn_k,), requests_k = keyed.finish()
    (conn_p,), requests_p = plain.finish()
    assert [(r.method, r.target, r.status, r.inferred) for r in requests_k] == [
        ("GET", f"/m{n}", 200, False) for n in range(3)]
    assert [(r.depth, r.method, r.status, r.inferred) for r in requests_p] == [
        (n, None, None, True) for n in (1, 2, 3)]
    # the same instants: the records are the messages' carriers; but TLS 1.3 hides the
    # server's close_notify among its data, so that the last response seems to end there
    ends = [r.response_end_at for r in requests_k]
    if version == "1.3":
        ends[-1] = times[-1]
    assert [(r.sent_at, r.response_at, r.response_end_at) for r in requests_p] == [
        (r.sent_at, r.response_at, end) for r, end in zip(requests_k, ends, strict=True)]
    assert conn_p.requests == conn_k.requests == ["w1", "w2", "w3"]
    # a connection that carried requests is no probe, TLS or not
    assert not conn_p.probe and conn_p.tls.decryption == "no_keylog"
    # the idle time runs from the last response, not from the server's close_notify
    assert conn_k.idle_before_close == round(fin_at - requests_k[-1].response_end_at, 6)
    assert conn_k.tls.close_notify_by == "server"
    if version == "1.2":  # the alert's record type is in the clear: not data
        assert conn_p.idle_before_close == conn_k.idle_before_close
    else:  # TLS 1.3 hides it among the data: the idle time counts from it (documented)
        assert conn_p.idle_before_close == round(fin_at - times[-1], 6)
        assert conn_p.tls.close_notify == "unknown"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("order", ["before", "after"])
def test_close_notify_against_the_first_fin(pki, tmp_path, version, order):
    """The server's close_notify 2 ms before its FIN (the first); or after the client's
    FIN, 3 ms (the server answering the client's close). tshark decrypts the same."""
    wire, times, log = memory_connection(pki, tmp_path, version, 1, 1.0)
    notify_at = times[-1]
    if order == "before":
        closes = [("server", notify_at + 0.002), ("client", notify_at + 0.004)]
    else:
        closes = [("client", notify_at - 0.003), ("server", notify_at + 0.001)]
    packets = frames(wire, times, closes)
    pcap = tmp_path / f"close-{version}-{order}.pcap"
    wrpcap(str(pcap), packets)
    keys = tmp_path / "keys.log"
    keys.write_text(log)
    analysis = evidence.analyze_capture(pcap, {443}, keylog=KeyLog(log))
    (conn,) = analysis.connections
    tls = conn.tls
    assert (tls.close_notify, tls.close_notify_by) == ("seen", "server")
    assert tls.close_notify_at == pytest.approx(notify_at, abs=1e-6)
    assert conn.first_fin_by == closes[0][0]
    assert tls.close_notify_before_fin == pytest.approx(closes[0][1] - notify_at, abs=1e-6)
    assert (tls.close_notify_before_fin > 0) == (order == "before")
    # the summary says it in words
    from kalab.summary import connection_story

    story = connection_story(conn)
    assert f"close_notify by the server {abs(closes[0][1] - notify_at) * 1000:.1f} ms " \
        f"{order} the first FIN" in story
    if tshark_referee.available():
        assert tshark_close_notifies(pcap, 443, keys) == [
            (443, CLIENT[1], pytest.approx(notify_at, abs=1e-6))]
        run = json.loads(to_json_run(analysis))
        assert tshark_referee.compare(run, pcap, 443, keys) == []



def test_a_report_with_tls_reads_back_and_an_older_one_still_reads(pki, tmp_path):
    from kalab.report import Tls, from_dict

    wire, times, keys = memory_connection(pki, tmp_path, "1.2", 1, 0.5)
    analysis = evidence.analyze_capture(_pcap(tmp_path, wire, times), {443},
                                        keylog=KeyLog(keys))
    document = json.loads(to_json_report(analysis))
    (conn,) = from_dict(document).runs[0].connections
    assert isinstance(conn.tls, Tls) and conn.tls == analysis.connections[0].tls
    # a report from before: no tls, no inferred
    for record in document["runs"][0]["connections"]:
        del record["tls"]
    for record in document["runs"][0]["requests"]:
        del record["inferred"]
    (run,) = from_dict(document).runs
    assert run.connections[0].tls is None and run.requests[0].inferred is False


def _pcap(folder: Path, wire: list[tuple[str, bytes]], times: list[float]) -> Path:
    pcap = folder / "made.pcap"
    wrpcap(str(pcap), frames(wire, times, [("client", times[-1] + 0.01),
                                           ("server", times[-1] + 0.011)]))
    return pcap


@pytest.mark.parametrize("seed", range(20))
def test_hostile_bytes_after_a_client_hello_never_raise(pki, tmp_path, seed):
    """Real records cut anywhere, shuffled a little, cut by a snap length, then garbage:
    the analyzer answers with records, never an exception, and never more requests
    than the client sent."""
    import random

    rng = random.Random(seed)
    wire, _, keys = memory_connection(pki, tmp_path, rng.choice(["1.2", "1.3"]), 2, 0.1)
    if seed % 3 == 0:
        wire = [*wire[:rng.randrange(1, len(wire))], (rng.choice(["client", "server"]),
                                                        rng.randbytes(rng.randrange(1, 300)))]
    seq = {"client": 1001, "server": 5001}
    fed = [Segment(T0, *CLIENT, *SERVER, 0x02, 1000), Segment(T0, *SERVER, *CLIENT, 0x12, 5000)]
    at = T0
    for side, data in wire:
        src, dst = (CLIENT, SERVER) if side == "client" else (SERVER, CLIENT)
        pos = 0
        while pos < len(data):
            size = rng.choice([1, 2, 5, 7, 100, 1400])
            piece = data[pos:pos + size]
            cut = rng.randrange(len(piece)) if seed % 4 == 1 and rng.random() < 0.1 else 0
            at += 0.001
            fed.append(Segment(at, *src, *dst, 0x18, seq[side], 0, piece[:len(piece) - cut],
                               cut))
            seq[side] += len(piece)
            pos += size
    head, tail = fed[:3], fed[3:]
    if seed % 5 == 2:  # some segments a little out of order
        for k in range(0, len(tail) - 1, 7):
            tail[k], tail[k + 1] = tail[k + 1], tail[k]
    fed = head + tail + [Segment(at + 1, *CLIENT, *SERVER, 0x11, seq["client"])]
    for keylog in (None, KeyLog(keys)):
        analyzer = Analyzer({443}, keylog)
        analyzer.feed_all(fed)
        (conn,), requests = analyzer.finish()
        assert conn.tls is not None and len(requests) <= 2 + (seed % 3 == 0)
