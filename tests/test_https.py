"""The lab over HTTPS (`tls: true`): the run's own CA, every engine that can serving TLS,
every client trusting that CA alone and writing its key log, and the observer's
analysis taking the key log.

tshark is the referee: on the pcap of a real run, with the key log the client
wrote (``-o tls.keylog_file:``), it must show every request the client sent,
in TLS 1.2 and in TLS 1.3, and the report, read with the same key log, must
agree with it as a plain HTTP report does.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
import tshark_referee
from conftest import ROOT, can_run_lab, capturing, free_port, requires_lab, run_kalab

from client.sessions import run_sessions
from kalab import evidence, handoff
from kalab.certs import client_tls, make_server_tls
from kalab.kinds import client_kinds, engine_kinds
from kalab.scenario import ScenarioError, parse
from kalab.tls import KeyLog
from server.__main__ import stop_engine
from server.engines import plan

TLS_ENGINES = [name for name, kind in engine_kinds().items() if kind.serves_tls]
NOT_TLS = [name for name, kind in engine_kinds().items() if not kind.serves_tls]
CLIENTS = list(client_kinds())
SERVER_HELLO_VERSION = {"1.2": "0x0303", "1.3": "0x0304"}


def scenario_text(engine: str, body: str = "tls: true\n", port: int = 5000,
                  clients: tuple[str, ...] = ("requests",)) -> str:
    # a pause between the two: uvicorn under asgiref answers 500 now and then to a request
    # that follows a response at once ("CurrentThreadExecutor already quit"), with or
    # without TLS
    sessions = "".join(f"  - {{name: {c}, client: {c}, steps: [get: /keep-alive, sleep: 0.3, "
                       f"get: /keep-alive?n=2]}}\n" for c in clients)
    return f"{body}port: {port}\nengines: [{{engine: {engine}}}]\nsessions:\n{sessions}"


# ------------------------------------------------------------------ the scenario


@pytest.mark.parametrize("text, version", [("tls: true", None), ("tls: false", "plain"),
                                           ('tls: {version: "1.2"}', "1.2"),
                                           ("tls: {version: '1.3'}", "1.3")])
def test_tls_says_https_and_the_version_the_client_offers(text, version):
    scenario = parse(scenario_text("gunicorn", text + "\n"))
    if version == "plain":
        assert scenario.tls is None
    else:
        assert scenario.tls is not None and scenario.tls.version == version


@pytest.mark.parametrize("text, message", [
    ("tls: 1.2", 'tls: expected true, false or {version: "1.2" or "1.3"}'),
    ("tls: {version: 1.2}", "tls.version: expected a string"),
    ('tls: {version: "1.1"}', "tls.version: unknown value '1.1'"),
    ('tls: {version: "1.3", verify: false}', "tls.verify: unknown field"),
    ("tls: [true]", "tls: expected"),
    ("tls: {}", "tls.version: missing"),
])
def test_a_bad_tls_is_refused_naming_the_line_and_field(text, message):
    with pytest.raises(ScenarioError) as caught:
        parse(scenario_text("gunicorn", text + "\n"), "https.yaml")
    assert str(caught.value).startswith("https.yaml:1: ") and message in str(caught.value)


@pytest.mark.parametrize("engine", NOT_TLS)
def test_an_engine_that_cannot_serve_tls_is_refused_before_anything_starts(tmp_path, engine):
    path = tmp_path / "bad.yaml"
    path.write_text(scenario_text(engine))
    done = run_kalab("check", str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"bad.yaml:3: engines[0].engine: {engine} cannot serve TLS" in done.stderr


def test_the_engines_that_serve_tls():
    # waitress has no TLS; uWSGI's --http11-socket has none (its HTTPS is its router's)
    assert set(NOT_TLS) == {"waitress", "uwsgi"}
    assert {"werkzeug", "gunicorn", "uvicorn", "hypercorn", "apache", "nginx",
            "haproxy"} <= set(TLS_ENGINES)


# ------------------------------------------------------------- the certificates


def _tls_server(tls, context_version=None):
    """A one-shot TLS server on loopback with the engine's certificate: its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        with listener:
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.recv(1)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def test_the_run_s_ca_signs_the_engine_s_certificate_and_nothing_else_is_trusted(tmp_path):
    folder, scratch, other = tmp_path / "engine", tmp_path / "scratch", tmp_path / "other"
    for made in (folder, scratch, other, other / "s"):
        made.mkdir()
    tls = make_server_tls(folder, scratch, "10.0.0.1", ["server"])
    # the CA and the certificate in the engine's folder; the key only in scratch, 0600
    assert sorted(p.name for p in folder.iterdir()) == [handoff.TLS_CA, handoff.TLS_CERT]
    assert tls.key.parent == scratch and (tls.key.stat().st_mode & 0o777) == 0o600
    assert b"PRIVATE KEY" not in tls.ca.read_bytes() + tls.cert.read_bytes()
    client = client_tls(folder, None)
    for name in ("127.0.0.1", "localhost", "server", "10.0.0.1"):
        port = _tls_server(tls)
        with socket.create_connection(("127.0.0.1", port)) as sock, \
                client.context().wrap_socket(sock, server_hostname=name) as conn:
            assert conn.version() == "TLSv1.3"
    # a name the certificate does not hold is refused
    port = _tls_server(tls)
    with socket.create_connection(("127.0.0.1", port)) as sock, \
            pytest.raises(ssl.SSLCertVerificationError):
        client.context().wrap_socket(sock, server_hostname="elsewhere")
    # another run's CA does not trust this run's engine
    make_server_tls(other, other / "s", "127.0.0.1", [])
    port = _tls_server(tls)
    with socket.create_connection(("127.0.0.1", port)) as sock, \
            pytest.raises(ssl.SSLCertVerificationError):
        client_tls(other, None).context().wrap_socket(sock, server_hostname="127.0.0.1")
    # the client's context writes the key log it is given
    assert len(KeyLog((folder / handoff.TLS_KEYLOG).read_text())) >= 4


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_the_client_offers_the_version_the_scenario_says(tmp_path, version):
    (tmp_path / "s").mkdir()
    tls = make_server_tls(tmp_path, tmp_path / "s", "127.0.0.1", [])
    port = _tls_server(tls)
    with socket.create_connection(("127.0.0.1", port)) as sock, \
            client_tls(tmp_path, version).context().wrap_socket(
                sock, server_hostname="127.0.0.1") as conn:
        assert conn.version() == f"TLSv{version}"


# ------------------------------------------------------------------- the key log


def test_the_key_log_is_read_as_hostile_input(tmp_path):
    random, secret = "ab" * 32, "cd" * 48
    missing = evidence.run_keys(tmp_path)
    assert "cannot be read" in missing.problem and len(missing.keylog) == 0
    log = tmp_path / handoff.TLS_KEYLOG
    log.write_text(f"# a comment\nCLIENT_RANDOM {random} {secret}\nnonsense\n{'x' * 9999}\n")
    keys = evidence.run_keys(tmp_path)
    assert keys.problem is None and len(keys.keylog) == 1 and keys.keylog.bad == 2
    log.write_text("# TLS secrets log file, generated by OpenSSL / Python\n")
    assert "holds no TLS secrets" in evidence.run_keys(tmp_path).problem
    log.unlink()
    log.symlink_to("/etc/passwd")  # a link is not followed
    assert "cannot be read" in evidence.run_keys(tmp_path).problem
    log.unlink()
    os.mkfifo(log)  # nobody writes to it: refused, never waited on
    assert "not a regular file" in evidence.run_keys(tmp_path).problem
    log.unlink()
    line = f"CLIENT_RANDOM {random} {secret}\n".encode()
    with open(log, "wb") as out:
        out.write(line * (evidence.MAX_KEYLOG_BYTES // len(line) + 10))
    big = evidence.run_keys(tmp_path)
    assert "only its start is read" in big.problem and len(big.keylog) == 1


# ------------------------------------- real engines and clients, tshark as referee


def tshark_http(pcap: Path, port: int, keylog: Path) -> list[tuple[int, str, str, str]]:
    """(tcp.stream, method, uri, status) of every HTTP message tshark decrypts."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},tls",
         "-o", f"tls.keylog_file:{keylog}", "-Y", "http", "-T", "fields", "-E",
         "separator=\t", "-e", "tcp.stream", "-e", "http.request.method", "-e",
         "http.request.uri", "-e", "http.response.code"],
        capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("\t")) for line in out.splitlines()]


def server_hello_versions(pcap: Path, port: int) -> set[str]:
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},tls", "-Y",
         "tls.handshake.type == 2", "-T", "fields", "-e",
         "tls.handshake.extensions.supported_version", "-e", "tls.handshake.version"],
        capture_output=True, text=True, check=True).stdout
    # TLS 1.3 says so in supported_versions; TLS 1.2 in the hello's own version
    return {(line.split("\t")[0] or line.split("\t")[1]) for line in out.splitlines()}


def serve_and_send(tmp_path: Path, engine: str, version: str, clients: tuple[str, ...],
                   pcap: Path | None = None) -> tuple[dict, Path, int]:
    """Serve ``engine`` over HTTPS as the server role does, send each client's two
    requests as the client role does (capturing on lo with ``pcap``); the records, the
    engine's folder and the port."""
    port = free_port(47000, 48000)
    scenario = parse(scenario_text(engine, f'tls: {{version: "{version}"}}\n', port,
                                   clients))
    folder, scratch = tmp_path / "engine", tmp_path / "engine" / ".scratch"
    folder.mkdir()
    scratch.mkdir(mode=0o700)
    tls = make_server_tls(folder, scratch, "127.0.0.1", [])
    (eng,) = scenario.engines
    children = []
    with open(folder / "server.log", "wb") as log:
        try:
            for launch in plan(eng, scenario.app, "127.0.0.1", port, folder, scratch, tls):
                child = subprocess.Popen(launch.argv, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **launch.env}, cwd=ROOT)
                children.append(child)
                eng.kind_class.ready(launch, child, 30)  # a verified TLS handshake
            if pcap is None:
                records = run_sessions(scenario, f"https://127.0.0.1:{port}", None,
                                       client_tls(folder, scenario.tls.version))
            else:
                with capturing(port, pcap, 0.5):
                    records = run_sessions(scenario, f"https://127.0.0.1:{port}", None,
                                           client_tls(folder, scenario.tls.version))
        finally:
            for child in reversed(children):
                stop_engine(child)
    return records, folder, port


def sent(records: dict) -> list[tuple[str, str]]:
    return sorted((r["method"], r["path"]) for r in records["requests"])


@pytest.mark.skipif(not tshark_referee.available(), reason="needs tshark")
@pytest.mark.skipif(can_run_lab() is not None, reason=str(can_run_lab()))
@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("engine", TLS_ENGINES)
def test_every_tls_engine_serves_and_tshark_reads_every_request_with_the_key_log(
        tmp_path, engine, version):
    pcap = tmp_path / "capture.pcap"
    records, folder, port = serve_and_send(tmp_path, engine, version, ("requests",), pcap)
    assert [r["error"] for r in records["requests"]] == [None, None]
    assert [r["status"] for r in records["requests"]] == [200, 200]
    assert records["base_url"].startswith("https://")
    assert server_hello_versions(pcap, port) == {SERVER_HELLO_VERSION[version]}
    seen = tshark_http(pcap, port, folder / handoff.TLS_KEYLOG)
    requests = [(method, uri) for _, method, uri, _ in seen if method]
    assert sorted(requests) == sent(records)
    assert sorted(status for *_, status in seen if status) == ["200", "200"]
    # without the key log tshark reads no HTTP at all: the requests were encrypted
    assert tshark_http(pcap, port, tmp_path / "no-such-keylog") == []


@pytest.mark.skipif(not tshark_referee.available(), reason="needs tshark")
@pytest.mark.skipif(can_run_lab() is not None, reason=str(can_run_lab()))
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_every_client_writes_a_key_log_that_tshark_reads(tmp_path, version):
    pcap = tmp_path / "capture.pcap"
    records, folder, port = serve_and_send(tmp_path, "gunicorn", version, tuple(CLIENTS),
                                           pcap)
    assert [r["error"] for r in records["requests"]] == [None] * 2 * len(CLIENTS)
    by_client = {}
    for record in records["requests"]:
        by_client.setdefault(record["client"], []).append(record)
    # each client reused its connection over TLS, as over plain HTTP; curl's invocation
    # ends at the sleep, and its connection with it
    assert {c: [r["new_connection"] for r in made] for c, made in by_client.items()} == \
        {c: [True, c == "curl"] for c in CLIENTS}
    seen = tshark_http(pcap, port, folder / handoff.TLS_KEYLOG)
    assert sorted((m, u) for _, m, u, _ in seen if m) == sent(records)
    assert server_hello_versions(pcap, port) == {SERVER_HELLO_VERSION[version]}
    # one TLS session per connection, every client's secrets in the one key log
    assert len(KeyLog((folder / handoff.TLS_KEYLOG).read_bytes())) == \
        sum(r["new_connection"] for r in records["requests"])


# ----------------------------------------------------------- kalab run over HTTPS


@pytest.fixture(scope="module")
def https_runs(tmp_path_factory):
    """scenarios/https.yaml as it is (TLS 1.3, negotiated), and with TLS 1.2."""
    work = tmp_path_factory.mktemp("https")
    text = (ROOT / "scenarios" / "https.yaml").read_text()
    tls12 = work / "https-12.yaml"
    tls12.write_text(text.replace("tls: true", 'tls: {version: "1.2"}'))
    runs = {}
    for version, path in (("1.3", ROOT / "scenarios" / "https.yaml"), ("1.2", tls12)):
        results = work / f"results-{version}"
        runs[version] = (run_kalab("run", str(path), "--results", str(results),
                                   timeout=600), results)
    return runs


@requires_lab
@pytest.mark.slow
@pytest.mark.skipif(not tshark_referee.available(), reason="needs tshark")
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_kalab_run_over_https_passes_read_with_the_key_log_as_tshark_reads_it(https_runs, version):
    done, results = https_runs[version]
    report = json.loads((results / "report.json").read_text())
    assert [r["engine"] for r in report["runs"]] == ["gunicorn-gthread-tls", "nginx-tls"], \
        done.stdout[-3000:] + done.stderr
    for run in report["runs"]:
        folder = results / run["engine"]
        client = json.loads((folder / handoff.CLIENT_RECORDS).read_text())
        assert [r["status"] for r in client["requests"]] == [200, 200, 200]
        pcap, port = results / run["capture"]["pcap"], int(run["listen"].rsplit(":", 1)[1])
        assert server_hello_versions(pcap, port) == {SERVER_HELLO_VERSION[version]}
        seen = tshark_http(pcap, port, folder / handoff.TLS_KEYLOG)
        requests = [(stream, m, u) for stream, m, u, _ in seen if m]
        assert sorted((m, u) for _, m, u in requests) == sent(client)
        # requests 1 and 2 share a TLS connection; the server closed it while idle, so
        # request 3 went on a new one
        streams = [stream for stream, *_ in requests]
        assert streams[0] == streams[1] != streams[2]
        # the private key never reaches the results
        assert not list(folder.rglob("*key.pem")) and not list(folder.rglob("*bundle*"))
        # the report reads the requests through the key log, as plain HTTP's: tshark,
        # decrypting with the same key log, agrees on connections, requests, depths,
        # statuses, closes and their times; every expectation is judged, and holds
        assert tshark_referee.compare(run, pcap, port, folder / handoff.TLS_KEYLOG) == []
        assert [(r["id"], r["method"], r["status"], r["inferred"]) for r in run["requests"]
                ] == [(str(n), "GET", 200, False) for n in (1, 2, 3)]
        assert run["capture"]["problems"] == [] and run["disagreements"] == []
        assert [c["tls"]["version"] for c in run["connections"] if c["requests"]] == \
            [f"TLS {version}"] * 2
        assert all(c["tls"]["decryption"] == "decrypting" for c in run["connections"]
                   if c["requests"])
        assert run["verdict"] == "pass" and len(run["expectations"]) == 4
    assert done.returncode == 0 and report["verdict"] == "pass"
