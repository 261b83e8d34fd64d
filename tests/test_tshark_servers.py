"""Real servers, real clients, the observer's capture: kalab and tshark must read the same wire.

Each test starts a real engine on a loopback port of its own (Werkzeug's
development server, gunicorn sync, gunicorn gthread) serving a small Flask
app, captures the port with `observer.capture.Capture` while a requests
client (or a raw socket) talks to it, then runs `kalab analyze --json` on the
pcap and `tests/tshark_referee.compare` against tshark: connection count,
each request's connection and depth, who sent the first FIN, and the first
FIN and RST times to the millisecond. Each test also checks what the wire
must show for that engine, so a test fails when kalab and tshark agree on
something wrong.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import conftest
import pytest
import requests
import tshark_referee
from conftest import ROOT, capturing, run_kalab

from kalab.apps import AppFile
from kalab.scenario import Engine
from server.__main__ import stop_engine, wait_until_accepting
from server.engines import plan

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="packet capture needs root"),
    pytest.mark.skipif(not tshark_referee.available(), reason="tshark is not installed"),
]

APP = '''
from flask import Flask, Response, request

from server.app import keep_alive  # the tutorial's own view

app = Flask(__name__)
app.add_url_rule("/keep-alive", view_func=keep_alive)


@app.route("/echo", methods=["POST"])
def echo():
    return f"{len(request.get_data())} bytes"


@app.route("/stream")
def stream():
    return Response((f"part {i}\\n" for i in range(3)), mimetype="text/plain")


@app.route("/empty")
def empty():
    return "", 204
'''


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("app")
    (folder / "kalab_t5_app.py").write_text(APP)
    return folder


def free_port() -> int:
    return conftest.free_port(18400, 18999)


def werkzeug(port: int, app_dir: Path) -> list[str]:
    # kalab's own Werkzeug runner loads only the project's apps, or an app file.
    app = str(AppFile(str(app_dir / "kalab_t5_app.py"), "app"))
    return _argv(Engine("werkzeug", "werkzeug"), port, app)


def gunicorn(port: int, worker: str, keep_alive: float = 2) -> list[str]:
    return _argv(Engine("gunicorn", "gunicorn", worker=worker, keep_alive=keep_alive), port)


def _argv(engine: Engine, port: int, app: str = "kalab_t5_app:app") -> list[str]:
    """The server role's own command line for this engine."""
    (launch,) = plan(engine, app, "127.0.0.1", port, Path("."), Path("."))
    return launch.argv


@contextmanager
def server(argv: list[str], port: int, app_dir: Path) -> Iterator[None]:
    env = {**os.environ, "PYTHONPATH": f"{app_dir}{os.pathsep}{ROOT}"}
    child = subprocess.Popen(argv, cwd=app_dir, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        # ready before the capture starts, so its probe is not on the wire
        wait_until_accepting("127.0.0.1", port, child, 20)
        probe_closed(port)  # and its FINs: a loaded machine's server closes it late
        yield
    finally:
        stop_engine(child)


def probe_closed(port: int, timeout: float = 10) -> None:
    """Wait until no connection to ``port`` is half closed: the readiness probe closed its
    end, and the server's FIN for it has passed (else it starts the capture as a
    connection joined mid-stream, and the capture is inconclusive)."""
    deadline = time.monotonic() + timeout
    states = sum((["state", s] for s in ("fin-wait-1", "fin-wait-2", "close-wait",
                                         "last-ack", "closing")), [])
    while True:
        half = subprocess.run(["ss", "-Htan", *states, f"( sport = :{port} or dport = :{port} )"],
                              capture_output=True, text=True, check=True).stdout
        if not half.strip():
            return
        assert time.monotonic() < deadline, f"the probe's connection is still open: {half}"
        time.sleep(0.05)


def record(tmp_path: Path, app_dir: Path, engine: Callable[[int], list[str]],
           client: Callable[[int], None]) -> tuple[Path, int, dict]:
    """Run ``client`` against the engine under capture; the pcap, port and kalab's run."""
    port = free_port()
    pcap = tmp_path / "capture.pcap"
    with server(engine(port), port, app_dir), capturing(port, pcap, linger=0.3) as capture:
        client(port)
    assert capture.stats.kernel_drops == 0
    done = run_kalab("analyze", str(pcap), "--json")  # ports: those that answered a SYN
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    assert run["options"]["ports"] == [port]
    problems = tshark_referee.compare(run, pcap, port)
    assert problems == [], problems
    return pcap, port, run


def placement(run: dict) -> list[tuple[str, int, int]]:
    """(target, connection, depth) of each request, in the order sent."""
    return [(r["target"], r["connection"], r["depth"]) for r in run["requests"]]


def test_werkzeug_one_connection_per_request(tmp_path, app_dir):
    def client(port: int) -> None:
        with requests.Session() as session:
            for _ in range(3):
                assert session.get(f"http://127.0.0.1:{port}/keep-alive").status_code == 200
                time.sleep(0.2)

    _, _, run = record(tmp_path, app_dir, lambda port: werkzeug(port, app_dir), client)
    assert placement(run) == [("/keep-alive", 1, 1), ("/keep-alive", 2, 1),
                              ("/keep-alive", 3, 1)]
    assert [c["first_fin_by"] for c in run["connections"]] == ["server"] * 3
    assert all(r["response_connection"] == "keep-alive, close" for r in run["requests"])


def test_gunicorn_sync_closes_after_each_response(tmp_path, app_dir):
    def client(port: int) -> None:
        with requests.Session() as session:
            for path in ("/keep-alive", "/stream", "/empty"):
                session.get(f"http://127.0.0.1:{port}{path}").raise_for_status()

    _, _, run = record(tmp_path, app_dir, lambda port: gunicorn(port, "sync"), client)
    assert placement(run) == [("/keep-alive", 1, 1), ("/stream", 2, 1), ("/empty", 3, 1)]
    assert [r["status"] for r in run["requests"]] == [200, 200, 204]
    assert all(r["response_connection"] == "close" for r in run["requests"])
    # Who closes first is a race here (the facts file): only that both FINs came.
    assert all(c["second_fin_at"] is not None for c in run["connections"])


def test_gunicorn_gthread_reuses_then_closes_when_idle(tmp_path, app_dir):
    def client(port: int) -> None:
        with requests.Session() as session:
            base = f"http://127.0.0.1:{port}"
            session.get(f"{base}/keep-alive").raise_for_status()
            session.post(f"{base}/echo", data=b"x" * 5000).raise_for_status()  # body: 2 segments
            session.get(f"{base}/stream").raise_for_status()  # chunked
            time.sleep(2.2)  # past --keep-alive 1: the server closes, urllib3 reconnects
            session.get(f"{base}/empty").raise_for_status()

    _, _, run = record(tmp_path, app_dir, lambda port: gunicorn(port, "gthread", 1), client)
    assert placement(run) == [("/keep-alive", 1, 1), ("/echo", 1, 2), ("/stream", 1, 3),
                              ("/empty", 2, 1)]
    first, second = run["connections"]
    assert first["first_fin_by"] == "server"
    assert 0.9 <= first["idle_before_close"] <= 2.1  # --keep-alive 1, from a 1 s poll loop
    assert second["closed_by"] == "client"  # session.close() before the server's timeout
    stream = run["requests"][2]
    assert stream["status"] == 200 and stream["response_end_at"] is not None


def test_a_client_that_closes_first(tmp_path, app_dir):
    def client(port: int) -> None:
        session = requests.Session()
        for _ in range(2):
            session.get(f"http://127.0.0.1:{port}/keep-alive").raise_for_status()
        time.sleep(0.3)
        session.close()

    _, _, run = record(tmp_path, app_dir, lambda port: gunicorn(port, "gthread", 10), client)
    (conn,) = run["connections"]
    assert placement(run) == [("/keep-alive", 1, 1), ("/keep-alive", 1, 2)]
    assert conn["first_fin_by"] == "client" and conn["closed_by"] == "client"
    assert 0.25 <= conn["idle_before_close"] <= 1.0


def raw_exchange(port: int, payload: bytes, reset: bool) -> bytes:
    """Send ``payload`` on a fresh connection, read until the server has answered it all
    (or closed), then close with a FIN, or with a RST when ``reset`` (SO_LINGER 0)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(payload)
        answer = b""
        while answer.count(b"HTTP/1.") < payload.count(b" HTTP/1."):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        time.sleep(0.05)
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return answer
    finally:
        sock.close()


def test_a_reset_and_pipelined_requests(tmp_path, app_dir):
    get = b"GET /keep-alive HTTP/1.1\r\nHost: x\r\n\r\n"

    def client(port: int) -> None:
        raw_exchange(port, get, reset=True)
        time.sleep(0.2)
        raw_exchange(port, get + b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n", reset=False)

    _, _, run = record(tmp_path, app_dir, lambda port: gunicorn(port, "gthread", 5), client)
    reset, pipelined = run["connections"]
    assert reset["rst_by"] == "client" and reset["closed_by"] == "client" \
        and reset["closed_with"] == "rst"
    assert placement(run) == [("/keep-alive", 1, 1), ("/keep-alive", 2, 1), ("/empty", 2, 2)]
    # Pipelined responses pair with their requests in order (tshark 4.0 gets this wrong).
    assert [r["status"] for r in run["requests"]] == [200, 200, 204]
    assert pipelined["first_fin_by"] == "client"


def test_http_1_0_100_continue_and_a_half_close_on_werkzeug(tmp_path, app_dir):
    def client(port: int) -> None:
        raw_exchange(port, b"GET /keep-alive HTTP/1.0\r\n\r\n", reset=False)
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        with sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 100")
            sock.sendall(b"data")
            answer = b""
            while b"4 bytes" not in answer:
                chunk = sock.recv(4096)
                assert chunk, "the server closed before answering"
                answer += chunk
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)  # half-closed: the answer still comes
            while sock.recv(4096):
                pass

    _, _, run = record(tmp_path, app_dir, lambda port: werkzeug(port, app_dir), client)
    assert placement(run) == [("/keep-alive", 1, 1), ("/echo", 2, 1), ("/stream", 3, 1)]
    old, post, streamed = run["requests"]
    assert old["version"] == "HTTP/1.0" and old["status"] == 200
    assert post["method"] == "POST" and post["status"] == 200  # the 100 answers nothing
    assert post["response_at"] > post["sent_at"]
    half_closed = run["connections"][2]
    assert half_closed["first_fin_by"] == "client"
    assert streamed["status"] == 200 and streamed["response_end_at"] is not None


def test_gunicorn_max_requests_closes_as_announced(tmp_path, app_dir):
    def client(port: int) -> None:
        with requests.Session() as session:
            for _ in range(4):
                session.get(f"http://127.0.0.1:{port}/keep-alive").raise_for_status()
                time.sleep(0.1)

    engine = Engine("gunicorn", "gunicorn", worker="gthread", keep_alive=5, max_requests=3)
    pcap, _, run = record(tmp_path, app_dir, lambda port: _argv(engine, port), client)
    first = run["connections"][0]
    assert placement(run)[:3] == [("/keep-alive", 1, 1), ("/keep-alive", 1, 2),
                                  ("/keep-alive", 1, 3)]
    assert [r["response_connection"] for r in run["requests"][:3]] == \
        ["keep-alive", "keep-alive", "close"]
    assert first["close_announced_by"] == "server" and first["closed_as_announced"] is True
    assert first["enforced_minus_advertised"] is None
    summary = run_kalab("analyze", str(pcap)).stdout
    assert "as its last response announced (Connection: close)" in summary


@contextmanager
def tcpdumps(port: int, paths: dict[int, Path]) -> Iterator[None]:
    """`tcpdump -s SNAPLEN` of the port on lo into each path, listening before the body runs.
    Immediate mode: else the packets in the kernel's current block (up to tcpdump's 1 s
    timeout) are not read before the interrupt stops it."""
    children = []
    try:
        for snaplen, path in paths.items():
            child = subprocess.Popen(["tcpdump", "--immediate-mode", "-i", "lo", "-s",
                                      str(snaplen), "-w", str(path),
                                      f"tcp port {port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
            children.append(child)
            while "listening on" not in (line := child.stderr.readline()):
                assert line, "tcpdump exited"
        yield
    finally:
        time.sleep(0.3)  # the last FINs and ACKs
        for child in children:
            child.send_signal(2)
        for child in children:
            child.communicate(timeout=20)


@pytest.mark.skipif(not conftest.shutil.which("tcpdump"), reason="tcpdump is not installed")
def test_tcpdump_with_a_short_snap_length_loses_nothing(tmp_path, app_dir):
    """The same exchange captured whole (the observer) and by tcpdump -s 96 and -s 128:
    the cut captures show every connection, close and request line, tshark agrees, and
    nothing is inconclusive."""
    port = free_port()
    whole = tmp_path / "whole.pcap"
    cut = {96: tmp_path / "s96.pcap", 128: tmp_path / "s128.pcap"}
    with server(gunicorn(port, "gthread", 1), port, app_dir), tcpdumps(port, cut), \
            capturing(port, whole, linger=0.3):
        with requests.Session() as session:
            base = f"http://127.0.0.1:{port}"
            session.get(f"{base}/keep-alive").raise_for_status()
            session.post(f"{base}/echo", data=b"x" * 5000).raise_for_status()  # body cut too
            session.get(f"{base}/stream").raise_for_status()  # chunked
            time.sleep(2.2)  # past --keep-alive 1: the server closes
            session.get(f"{base}/empty").raise_for_status()
    reference = json.loads(run_kalab("analyze", str(whole), "--json").stdout)["runs"][0]
    for snaplen, pcap in cut.items():
        done = run_kalab("analyze", str(pcap), "--json")
        assert done.returncode == 0, done.stderr
        (run,) = json.loads(done.stdout)["runs"]
        capture = run["capture"]
        assert capture["problems"] == [] and run["verdict"] == "observed"
        assert capture["snaplen"] == snaplen and capture["truncated_frames"] > 0
        assert tshark_referee.compare(run, pcap, port) == [], snaplen
        assert placement(run) == placement(reference)
        assert [r["status"] for r in run["requests"]] == [200, 200, 200, 204]
        for key in ("first_fin_by", "closed_by", "closed_with", "history", "conn_state",
                    "completeness"):
            assert [c[key] for c in run["connections"]] == \
                [c[key] for c in reference["connections"]], (snaplen, key)
        for key in ("first_fin_at", "idle_before_close"):  # two tools' clocks: to the ms
            assert [c[key] for c in run["connections"]] == pytest.approx(
                [c[key] for c in reference["connections"]], rel=0, abs=0.001), (snaplen, key)
        assert all(c["truncated"] for c in run["connections"])
        # The response headers were cut: unknown, not "none said".
        assert all("response_connection" in r["unknown"] for r in run["requests"])
        assert all(r["response_connection"] is None for r in run["requests"])


def lifetimes(pcap: Path) -> dict[int, tuple[float, float]]:
    """tshark's reading of each stream's life, by client port: its first frame's time, and
    the time of the frame that closed its second side (each side's first FIN or RST), or
    while a side stays open, of its last frame (Zeek's duration)."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=\t", "-e", "tcp.stream",
         "-e", "frame.time_epoch", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e",
         "tcp.flags.syn", "-e", "tcp.flags.ack", "-e", "tcp.flags.fin", "-e", "tcp.flags.reset"],
        capture_output=True, text=True, check=True).stdout
    first: dict[int, tuple[float, int]] = {}  # stream -> (time, client port)
    closed: dict[int, dict[int, float]] = {}  # stream -> sender port -> its first FIN or RST
    last: dict[int, float] = {}  # stream -> its last frame's time
    for line in out.splitlines():
        stream, at, sport, dport, syn, ack, fin, rst = line.split("\t")
        at, sport, dport = float(at), int(sport), int(dport)
        if int(stream) not in first:  # a SYN's sender is the client
            first[int(stream)] = (at, sport if syn in ("1", "True") and ack in ("0", "False")
                                  else dport)
        last[int(stream)] = at
        if fin in ("1", "True") or rst in ("1", "True"):
            closed.setdefault(int(stream), {}).setdefault(sport, at)
    return {port: (at, max(closed[stream].values()) if len(closed.get(stream, {})) == 2
                   else last[stream]) for stream, (at, port) in first.items()}


def test_zeek_logs_agree_with_tshark(tmp_path, app_dir):
    """`kalab analyze --zeek`: conn.log's ts and duration from tshark's frames, http.log's
    requests where tshark puts them, and Zeek's words for a FIN close and a RST."""
    get = b"GET /keep-alive HTTP/1.1\r\nHost: x\r\n\r\n"

    def client(port: int) -> None:
        with requests.Session() as session:
            base = f"http://127.0.0.1:{port}"
            session.get(f"{base}/keep-alive").raise_for_status()
            session.post(f"{base}/echo", data=b"x" * 5000).raise_for_status()
            session.get(f"{base}/stream").raise_for_status()  # chunked
            time.sleep(1.6)  # past --keep-alive 1: the server closes
        raw_exchange(port, get, reset=True)
        raw_exchange(port, get + b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n", reset=False)

    pcap, port, run = record(tmp_path, app_dir, lambda port: gunicorn(port, "gthread", 1), client)
    done = run_kalab("analyze", str(pcap), "--zeek", str(tmp_path / "zeek"))
    assert done.returncode == 0, done.stderr
    conns, http = [[json.loads(line) for line in (tmp_path / "zeek" / name).read_text()
                    .splitlines()] for name in ("conn.log", "http.log")]
    life = lifetimes(pcap)
    assert sorted(c["id.orig_p"] for c in conns) == sorted(life) and len(conns) == 3
    for conn, ours in zip(conns, run["connections"], strict=True):
        start, end = life[conn["id.orig_p"]]
        assert conn["ts"] == pytest.approx(start, abs=tshark_referee.TOLERANCE)
        assert conn["duration"] == pytest.approx(end - start, abs=tshark_referee.TOLERANCE)
        assert (conn["conn_state"], conn["history"]) == (ours["conn_state"], ours["history"])
        assert conn["id.resp_p"] == port and conn["service"] == "http"
    assert [c["conn_state"] for c in conns] == ["SF", "RSTO", "SF"]
    assert "R" in conns[1]["history"] and conns[0]["history"].startswith("ShAD")
    # Requests: tshark's, in order on each stream, with their depth.
    theirs = tshark_referee.streams(pcap, port)
    uid_of = {c["uid"]: c["id.orig_p"] for c in conns}
    expected = sorted((s.client_port, depth, method, uri) for s in theirs.values()
                      for depth, (_, method, uri) in enumerate(s.requests, 1))
    assert sorted((uid_of[h["uid"]], h["trans_depth"], h["method"], h["uri"])
                  for h in http) == expected and len(http) == 6
    assert [h["status_code"] for h in http] == [200, 200, 200, 200, 200, 204]
    assert [(h["request_body_len"], h["response_body_len"]) for h in http][1:3] == \
        [(5000, len("5000 bytes")), (0, len("part 0\npart 1\npart 2\n"))]
    assert all(h["version"] == "1.1" and h["tags"] == [] for h in http)
