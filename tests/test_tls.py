"""kalab.tls against real TLS, with tshark as the referee; and against hostile bytes.

Real parts. The `capture` fixture (once for the file; root, tcpdump, tshark and
openssl) starts tcpdump on lo with a filter for this file's ports, waits until it
listens, then runs, all at once and each on a port of its own:

- Python `ssl` servers (a CA and certificates made here with `cryptography`)
  serving HTTP/1.1 keep-alive with `http.server`: TLS 1.2 with one cipher suite
  each (ECDHE-RSA and ECDHE-ECDSA with AES-128-GCM, AES-256-GCM and
  ChaCha20-Poly1305; RSA key exchange with AES-GCM), and TLS 1.3 (OpenSSL
  chooses TLS_AES_256_GCM_SHA384). To each, a `requests` Session that trusts
  the test CA (no verify=False), with SSLKEYLOGFILE set, sends four requests on
  one connection, pauses and closes; then a second Session's request is left
  idle until the server closes it, with close_notify first.
- Debian's openssl for what Python's ssl cannot force in TLS 1.3: s_server -HTTP
  and s_client with TLS_CHACHA20_POLY1305_SHA256; and TLS_AES_128_GCM_SHA256
  with a HelloRetryRequest (the client's key share is a group the server
  refuses) and a KeyUpdate each way in mid-connection.

tcpdump is then stopped with SIGINT. The pcap is read with
`kalab.pcap.SegmentReader`, each connection's payloads fed in order to a
`TlsConnection`, without and with the key log, and compared with tshark on the
same pcap, without keys and with ``-o tls.keylog_file``.

Without root, decryption is checked on TLS made in memory (`ssl.MemoryBIO`):
real records from OpenSSL, the endpoints themselves as referee.

Hostile input (marked reliability, tallied): random bytes, real streams with
bytes flipped, cut, repeated or inserted, absurd lengths, key logs with garbage.
Nothing raises, and decryption never hands on a byte that was not sent: what
comes out is always a prefix of the true plaintext.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import select
import shutil
import signal
import ssl
import subprocess
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from conftest import free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from reliability import tally
from requests.adapters import HTTPAdapter

from kalab import tls
from kalab.pcap import SegmentReader
from kalab.tls import KeyLog, TlsConnection, looks_like_tls

AREA = "TLS records and key logs"
SNI = "tls.kalab.test"
IDLE = 0.5  # the test servers close a connection idle this long, close_notify first
BIG = 200_000  # a response of many records, some across segments
PORTS = (19000, 19400)  # this file's loopback ports
SYN = 0x02

PHASES = {tls.PHASE_START, tls.PHASE_HANDSHAKE, tls.PHASE_HANDSHAKE_FAILED,
          tls.PHASE_APPLICATION, tls.PHASE_NOT_TLS, tls.PHASE_GAVE_UP}
DECRYPTIONS = {tls.DECRYPT_NO_KEYLOG, tls.DECRYPT_WAITING, tls.DECRYPT_NO_KEYS,
               tls.DECRYPT_UNSUPPORTED, tls.DECRYPT_ON, tls.DECRYPT_FAILED}


# --- a CA and two server certificates, made here


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(folder: Path) -> dict[str, str]:
    """A CA of the test's own, and an RSA and an ECDSA certificate for SNI it signed."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("kalab test CA"))
          .issuer_name(_name("kalab test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": str(folder / "ca.pem")}
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for kind, key in (("rsa", rsa.generate_private_key(65537, 2048)),
                      ("ec", ec.generate_private_key(ec.SECP256R1()))):
        cert = (x509.CertificateBuilder().subject_name(_name(SNI)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(SNI)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        paths[f"{kind}.pem"] = str(folder / f"{kind}.pem")
        paths[f"{kind}.key"] = str(folder / f"{kind}.key")
        (folder / f"{kind}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{kind}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pki: dict[str, str], version: str, ciphers: str | None,
                   cert: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # reads no SSLKEYLOGFILE
    context.minimum_version = context.maximum_version = (
        ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3)
    if ciphers:
        context.set_ciphers(ciphers)
    context.load_cert_chain(pki[f"{cert}.pem"], pki[f"{cert}.key"])
    context.set_alpn_protocols(["http/1.1"])
    return context


# --- the scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    version: str  # "1.2" | "1.3"
    suite: int  # the cipher suite the server must choose
    ciphers: str | None = None  # the Python server's TLS 1.2 cipher list
    cert: str = "rsa"
    kind: str = "python"  # python | openssl-http | openssl-hrr-keyupdate


SCENARIOS = [
    Scenario("tls12-ecdhe-rsa-aes128gcm", "1.2", 0xC02F, "ECDHE-RSA-AES128-GCM-SHA256"),
    Scenario("tls12-ecdhe-rsa-aes256gcm", "1.2", 0xC030, "ECDHE-RSA-AES256-GCM-SHA384"),
    Scenario("tls12-ecdhe-rsa-chacha20", "1.2", 0xCCA8, "ECDHE-RSA-CHACHA20-POLY1305"),
    Scenario("tls12-ecdhe-ecdsa-aes128gcm", "1.2", 0xC02B, "ECDHE-ECDSA-AES128-GCM-SHA256",
             "ec"),
    Scenario("tls12-ecdhe-ecdsa-aes256gcm", "1.2", 0xC02C, "ECDHE-ECDSA-AES256-GCM-SHA384",
             "ec"),
    Scenario("tls12-ecdhe-ecdsa-chacha20", "1.2", 0xCCA9, "ECDHE-ECDSA-CHACHA20-POLY1305",
             "ec"),
    Scenario("tls12-rsa-aes128gcm", "1.2", 0x009C, "AES128-GCM-SHA256"),
    Scenario("tls12-rsa-aes256gcm", "1.2", 0x009D, "AES256-GCM-SHA384"),
    Scenario("tls13-aes256gcm", "1.3", 0x1302),
    Scenario("tls13-chacha20-openssl", "1.3", 0x1303, kind="openssl-http"),
    Scenario("tls13-aes128gcm-hrr-keyupdate-openssl", "1.3", 0x1301,
             kind="openssl-hrr-keyupdate"),
]
PYTHON_SCENARIOS = [s for s in SCENARIOS if s.kind == "python"]
# What each client sends, in order, per connection.
PYTHON_REQUESTS = [[("GET", "/a"), ("GET", "/b?x=1"), ("POST", "/c"), ("GET", "/big")],
                   [("GET", "/last")]]
HRR_CLIENT = (b"GET /before HTTP/1.1\r\nHost: tls.kalab.test\r\n\r\n"
              b"GET /after HTTP/1.1\r\nHost: tls.kalab.test\r\n\r\n")
HRR_SERVER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n"
# What s_server -HTTP sends: the file it serves is the whole response.
OPENSSL_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nfrom file"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle(self) -> None:
        """HTTP/1.1 keep-alive; a connection idle for IDLE s is closed as a careful server
        closes it: close_notify, then FIN (Python's ssl sends no close_notify on close)."""
        connection = self.connection
        while True:
            if not connection.pending() and not select.select([connection], [], [], IDLE)[0]:
                connection.setblocking(False)
                try:
                    connection.unwrap()  # sends close_notify, then would wait for the client's
                except OSError:
                    pass
                return
            self.close_connection = True
            self.handle_one_request()
            if self.close_connection:
                return

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._answer(b"x" * BIG if self.path == "/big" else b"ok " + self.path.encode())

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers["Content-Length"])
        self._answer(b"posted %d" % len(self.rfile.read(length)))

    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.errors: list[str] = []

    def handle_error(self, request, client_address) -> None:
        self.errors.append(traceback.format_exc())


class _SniAdapter(HTTPAdapter):
    """Connects to 127.0.0.1 and names the server SNI: the name in its certificate, which
    the client verifies against the test CA, and the SNI the tests look for."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["server_hostname"] = SNI
        super().init_poolmanager(*args, **kwargs)


def python_client(port: int, ca: str) -> None:
    url = f"https://127.0.0.1:{port}"
    trust = {"verify": ca, "timeout": 10}  # the test CA, and nothing else
    with requests.Session() as session:
        session.mount("https://", _SniAdapter())
        session.get(url + "/a", **trust).raise_for_status()
        session.get(url + "/b?x=1", **trust).raise_for_status()
        session.post(url + "/c", data=b"y" * 1000, **trust).raise_for_status()
        assert len(session.get(url + "/big", **trust).content) == BIG
        time.sleep(0.1)  # then the client closes: no close_notify from urllib3
    with requests.Session() as session:
        session.mount("https://", _SniAdapter())
        session.get(url + "/last", **trust).raise_for_status()
        time.sleep(IDLE + 0.4)  # the server closes first


def _wait_for(process: subprocess.Popen, marker: bytes, timeout: float = 10) -> bytes:
    """Read the process's output until ``marker`` shows (without blocking past timeout)."""
    seen = b""
    deadline = time.monotonic() + timeout
    fd = process.stdout.fileno()
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or process.poll() is not None and not select.select([fd], [], [], 0)[0]:
            raise AssertionError(f"{process.args[:2]} never said {marker!r}: {seen[-300:]!r}")
        if select.select([fd], [], [], min(left, 0.2))[0]:
            chunk = os.read(fd, 65536)
            if not chunk and process.poll() is not None:
                continue
            seen += chunk
    return seen


def _openssl_server(port: int, pki: dict[str, str], *more: str, stdin: int | None = None,
                    cwd: Path | None = None) -> subprocess.Popen:
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1",
         "-cert", pki["rsa.pem"], "-key", pki["rsa.key"], "-tls1_3", "-alpn", "http/1.1",
         *more], stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
    _wait_for(server, b"ACCEPT")
    return server


def _openssl_client_args(port: int, pki: dict[str, str], keylog: Path, *more: str) -> list[str]:
    return ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SNI,
            "-CAfile", pki["ca"], "-verify_return_error", "-tls1_3", "-alpn", "http/1.1",
            "-keylogfile", str(keylog), *more]


def openssl_http(port: int, pki: dict[str, str], keylog: Path,
                 processes: list[subprocess.Popen]) -> None:
    """TLS 1.3 ChaCha20: s_server -HTTP answers one request with a file that holds a whole
    response, then both send close_notify."""
    folder = keylog.parent / "served"
    folder.mkdir()
    (folder / "openssl.txt").write_bytes(OPENSSL_RESPONSE)
    suite = ["-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]
    server = _openssl_server(port, pki, *suite, "-HTTP", cwd=folder)
    processes.append(server)
    answer = subprocess.run(_openssl_client_args(port, pki, keylog, *suite, "-quiet"),
                            input=b"GET /openssl.txt HTTP/1.0\r\nHost: tls.kalab.test\r\n\r\n",
                            capture_output=True, timeout=10, check=True)
    assert answer.stdout.startswith(OPENSSL_RESPONSE), answer.stdout
    server.wait(10)


def openssl_hrr_keyupdate(port: int, pki: dict[str, str], keylog: Path,
                          processes: list[subprocess.Popen]) -> None:
    """TLS 1.3 AES-128-GCM after a HelloRetryRequest (the client's key share is X25519, the
    server takes only P-256), with a KeyUpdate each way between two requests."""
    suite = ["-ciphersuites", "TLS_AES_128_GCM_SHA256"]
    server = _openssl_server(port, pki, *suite, "-groups", "P-256", stdin=subprocess.PIPE)
    processes.append(server)
    client = subprocess.Popen(
        _openssl_client_args(port, pki, keylog, *suite, "-groups", "X25519:P-256", "-crlf",
                             "-no_ign_eof"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    processes.append(client)
    _wait_for(client, b"Verify return code: 0")

    def say(process: subprocess.Popen, text: bytes, watch: subprocess.Popen,
            until: bytes) -> None:
        process.stdin.write(text)
        process.stdin.flush()
        _wait_for(watch, until)

    first, second = HRR_CLIENT.split(b"\r\n\r\n", 1)
    say(client, first.replace(b"\r\n", b"\n") + b"\n\n", server, b"Host: tls.kalab.test")
    say(server, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", client,
        b"Content-Length: 2")
    say(client, b"K\n", client, b"KEYUPDATE")  # a KeyUpdate asking the server for one too
    say(client, second.replace(b"\r\n", b"\n"), server, b"GET /after")
    say(server, b"HTTP/1.1 204 No Content\r\n\r\n", client, b"204 No Content")
    client.stdin.close()  # s_client sends close_notify and leaves; s_server answers with its own
    client.wait(10)
    server.wait(10)


@dataclass
class Capture:
    pcap: Path
    keylog: Path
    ports: dict[str, int]  # scenario name -> server port
    tcpdump_said: str
    errors: list[str] = field(default_factory=list)


def _tcpdump_stats(text: str) -> str:
    return " / ".join(line for line in text.splitlines() if "packets" in line)


@pytest.fixture(scope="module")
def capture(tmp_path_factory, pki) -> Capture:
    missing = [tool for tool in ("tcpdump", "tshark", "openssl") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip("real TLS captures need root, tcpdump, tshark and openssl "
                    f"(uid {os.geteuid()}, missing: {', '.join(missing) or 'nothing'})")
    folder = tmp_path_factory.mktemp("tls-capture")
    ports: dict[str, int] = {}
    for scenario in SCENARIOS:
        port = free_port(*PORTS)
        while port in ports.values():
            port = free_port(*PORTS)
        ports[scenario.name] = port
    pcap = folder / "tls.pcap"
    python_keys = folder / "keys-python.log"
    openssl_keys = {s.name: folder / f"keys-{s.name}.log" for s in SCENARIOS
                    if s.kind != "python"}
    servers = [_Server(ports[s.name], server_context(pki, s.version, s.ciphers, s.cert))
               for s in PYTHON_SCENARIOS]
    serving: list[_Server] = []
    port_filter = " or ".join(f"port {p}" for p in ports.values())
    # -B: 64 MiB of buffer, as the observer has: nine 200 KB responses at once overflow 2 MiB.
    tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-U", "--immediate-mode",
                                "-B", "65536", "-w", str(pcap), f"tcp and ({port_filter})"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    processes: list[subprocess.Popen] = []
    errors: list[str] = []
    saved = os.environ.get("SSLKEYLOGFILE")
    try:
        _wait_for_stderr(tcpdump, b"listening on")
        for server in servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
            serving.append(server)
        os.environ["SSLKEYLOGFILE"] = str(python_keys)  # urllib3 reads it per connection
        with ThreadPoolExecutor(len(SCENARIOS)) as pool:
            jobs = []
            for scenario in SCENARIOS:
                port = ports[scenario.name]
                if scenario.kind == "python":
                    jobs.append(pool.submit(python_client, port, pki["ca"]))
                elif scenario.kind == "openssl-http":
                    jobs.append(pool.submit(openssl_http, port, pki,
                                            openssl_keys[scenario.name], processes))
                else:
                    jobs.append(pool.submit(openssl_hrr_keyupdate, port, pki,
                                            openssl_keys[scenario.name], processes))
            for scenario, job in zip(SCENARIOS, jobs, strict=True):
                try:
                    job.result(timeout=30)
                except Exception as exc:  # noqa: BLE001 (said in the test that reads it)
                    errors.append(f"{scenario.name}: {exc!r}")
        time.sleep(0.3)  # the last FINs and ACKs
    finally:
        if saved is None:
            os.environ.pop("SSLKEYLOGFILE", None)
        else:
            os.environ["SSLKEYLOGFILE"] = saved
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(5)
        for server in servers:
            if server in serving:
                server.shutdown()  # waits for serve_forever: only for one that runs
            server.server_close()
        tcpdump.send_signal(signal.SIGINT)
        try:
            _, said = tcpdump.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            tcpdump.kill()
            _, said = tcpdump.communicate()
    for server in servers:
        errors += server.errors
    keylog = folder / "keys.log"  # every client's lines, as one file
    keylog.write_bytes(b"".join(p.read_bytes() for p in [python_keys, *openssl_keys.values()]
                                if p.exists()))
    return Capture(pcap, keylog, ports, _tcpdump_stats(said.decode(errors="replace")), errors)


def _wait_for_stderr(process: subprocess.Popen, marker: bytes, timeout: float = 10) -> None:
    seen = b""
    deadline = time.monotonic() + timeout
    fd = process.stderr.fileno()
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or process.poll() is not None:
            raise AssertionError(f"tcpdump did not start listening: {seen!r}")
        if select.select([fd], [], [], min(left, 0.2))[0]:
            seen += os.read(fd, 4096)


# --- our side: the pcap through SegmentReader, each connection fed in order


@dataclass
class Fed:
    plain: TlsConnection  # fed without a key log
    keyed: TlsConnection  # fed with the capture's key log
    chunks: dict[str, list[tuple[bytes, float]]]  # the keyed one's plaintext, per side
    sent: dict[str, dict[float, int]]  # payload bytes per capture time, per side
    first_client_bytes: bytes = b""


def feed_pcap(pcap: Path, port: int, keylog: KeyLog) -> dict[int, Fed]:
    """Every connection to ``port``, by client port. Both directions of a connection on
    loopback arrive in order: the minimal feed checks it rather than reassembling, and
    leaves out bytes sent again (on a loaded machine the kernel retransmits even on
    loopback: CI saw a 169-byte segment again)."""
    fed: dict[int, Fed] = {}
    next_seq: dict[tuple[int, str], int] = {}
    for seg in SegmentReader(pcap, ports=[port]):
        side = "client" if seg.dport == port else "server"
        client_port = seg.sport if side == "client" else seg.dport
        if seg.flags & SYN:
            next_seq[(client_port, side)] = seg.seq + 1
            continue
        if not seg.payload:
            continue
        entry = fed.get(client_port)
        if entry is None:
            entry = fed[client_port] = Fed(TlsConnection(), TlsConnection(keylog),
                                           {"client": [], "server": []},
                                           {"client": {}, "server": {}})
        expected = next_seq.get((client_port, side))
        assert expected is not None, f"{client_port} {side}: no SYN"
        again = (expected - seg.seq) % (1 << 32)  # bytes of it already fed
        payload = seg.payload
        if 0 < again < 1 << 31:
            payload = payload[again:]
            if not payload:
                continue
        else:
            assert again == 0, (f"{client_port} {side}: a segment out of order at "
                                f"{seg.ts}; this minimal feed does not reassemble")
        next_seq[(client_port, side)] = (expected + len(payload)) % (1 << 32)
        if side == "client" and not entry.first_client_bytes:
            entry.first_client_bytes = payload
        entry.sent[side][seg.ts] = entry.sent[side].get(seg.ts, 0) + len(payload)
        assert entry.plain.feed(side, payload, seg.ts) == []
        entry.chunks[side] += entry.keyed.feed(side, payload, seg.ts)
    return fed


# --- tshark's side

# tls.record.opaque_type: a TLS 1.3 protected record's outer type (content_type is its inner
# one, shown only when decrypted).
TSHARK_FIELDS = ["frame.time_epoch", "tcp.srcport", "tcp.dstport", "tls.record.content_type",
                 "tls.record.opaque_type",
                 "tls.handshake.type", "tls.handshake.version", "tls.handshake.random",
                 "tls.handshake.extensions_server_name", "tls.handshake.extensions_alpn_str",
                 "tls.handshake.ciphersuite", "tls.handshake.extensions.supported_version",
                 "tls.alert_message.desc", "http.request.method", "http.request.uri",
                 "http.response.code"]
_AGGREGATOR = "\x1f"


def tshark_rows(pcap: Path, ports: list[int], keylog: Path | None) -> list[dict[str, list[str]]]:
    decode = sum((["-d", f"tcp.port=={p},tls"] for p in ports), [])
    keys = ["-o", f"tls.keylog_file:{keylog}"] if keylog else []
    out = subprocess.run(
        # An HTTP message is shown in the frame that completes it (its body's last byte):
        # with http.desegment_body off, tshark 4.0 loses the messages after a body that
        # came in a record of its own.
        ["tshark", "-r", str(pcap), "-n", *decode, *keys, "-Y", "tls", "-T", "fields",
         "-E", "separator=\t", "-E", "occurrence=a", "-E", f"aggregator={_AGGREGATOR}",
         *sum((["-e", f] for f in TSHARK_FIELDS), [])],
        capture_output=True, text=True, check=True, timeout=60).stdout
    rows = []
    for line in out.splitlines():
        cols = line.split("\t") + [""] * len(TSHARK_FIELDS)
        rows.append({name: [v for v in cols[k].split(_AGGREGATOR) if v]
                     for k, name in enumerate(TSHARK_FIELDS)})
    return rows


@dataclass
class Referee:
    """What tshark says of one connection."""

    records: dict[str, int] = field(default_factory=lambda: {"client": 0, "server": 0})
    outer: dict[str, list[tuple[float, int]]] = field(
        default_factory=lambda: {"client": [], "server": []})  # record types without keys
    sni: str | None = None
    alpn_offered: list[str] = field(default_factory=list)
    client_random: str | None = None
    legacy_version: int | None = None
    offered_versions: list[int] = field(default_factory=list)
    cipher: int | None = None
    version: int | None = None
    alpn: list[str] = field(default_factory=list)  # the server's ALPN (with keys: also 1.3's)
    finished: dict[str, list[float]] = field(default_factory=lambda: {"client": [],
                                                                      "server": []})
    alerts: list[tuple[str, float, int]] = field(default_factory=list)
    requests: list[tuple[float, str, str]] = field(default_factory=list)
    responses: list[tuple[float, int]] = field(default_factory=list)


def referee(plain_rows, keyed_rows, port: int) -> dict[int, Referee]:
    found: dict[int, Referee] = {}
    for keyed, rows in ((False, plain_rows), (True, keyed_rows)):
        for row in rows:
            sport, dport = int(row["tcp.srcport"][0]), int(row["tcp.dstport"][0])
            if port not in (sport, dport):
                continue
            side = "client" if dport == port else "server"
            ref = found.setdefault(sport if side == "client" else dport, Referee())
            at = round(float(row["frame.time_epoch"][0]), 6)
            kinds = [int(k) for k in row["tls.handshake.type"]]
            if not keyed:
                types = [int(t) for t in row["tls.record.content_type"]
                         + row["tls.record.opaque_type"]]
                ref.records[side] += len(types)
                ref.outer[side] += [(at, t) for t in types]
                if 1 in kinds and side == "client":
                    ref.sni = (row["tls.handshake.extensions_server_name"] or [None])[0]
                    ref.alpn_offered = row["tls.handshake.extensions_alpn_str"]
                    ref.client_random = row["tls.handshake.random"][0].replace(":", "")
                    ref.legacy_version = int(row["tls.handshake.version"][0], 16)
                    ref.offered_versions = [int(v, 16) for v in
                                            row["tls.handshake.extensions.supported_version"]]
                if 2 in kinds and side == "server":  # the last ServerHello (after a retry)
                    ref.cipher = int(row["tls.handshake.ciphersuite"][0], 16)
                    chosen = row["tls.handshake.extensions.supported_version"]
                    ref.version = int((chosen or row["tls.handshake.version"])[0], 16)
                continue
            if side == "server" and row["tls.handshake.extensions_alpn_str"]:
                ref.alpn = row["tls.handshake.extensions_alpn_str"]
            ref.finished[side] += [at for k in kinds if k == 20]
            ref.alerts += [(side, at, int(d)) for d in row["tls.alert_message.desc"]]
            ref.requests += [(at, m, u) for m, u in zip(row["http.request.method"],
                                                       row["http.request.uri"], strict=True)]
            ref.responses += [(at, int(c)) for c in row["http.response.code"]]
    return found


@dataclass
class Judged:
    scenario: Scenario
    ours: dict[int, Fed]
    theirs: dict[int, Referee]


@pytest.fixture(scope="module")
def judged(capture) -> dict[str, Judged]:
    """Every scenario's connections, ours and tshark's, by client port."""
    ports = list(capture.ports.values())
    plain_rows = tshark_rows(capture.pcap, ports, None)
    keyed_rows = tshark_rows(capture.pcap, ports, capture.keylog)
    keylog = KeyLog(capture.keylog.read_bytes())
    out = {}
    for scenario in SCENARIOS:
        port = capture.ports[scenario.name]
        out[scenario.name] = Judged(scenario, feed_pcap(capture.pcap, port, keylog),
                                    referee(plain_rows, keyed_rows, port))
    return out


def http_messages(chunks: list[tuple[bytes, float]]) -> list[tuple[float, str, str]]:
    """(time of the last byte, first word, second word) of each HTTP/1.x message in a
    side's plaintext: the test's own small reader, for messages framed by Content-Length
    (a message without one has no body: all the scenarios send one when they have one)."""
    data = b"".join(chunk for chunk, _ in chunks)
    starts, offset = [], 0
    for chunk, at in chunks:
        starts.append((offset, at))
        offset += len(chunk)

    def time_at(position: int) -> float:
        return [at for start, at in starts if start <= position][-1]

    out, i = [], 0
    while i < len(data):
        end = data.find(b"\r\n\r\n", i)
        if end < 0:
            break
        lines = data[i:end].decode("latin-1").split("\r\n")
        words = lines[0].split(" ", 2)
        lengths = [int(line.split(":", 1)[1]) for line in lines[1:]
                   if line.lower().startswith("content-length:")]
        stop = end + 4 + (lengths[0] if lengths else 0)
        if stop > len(data):
            break
        out.append((round(time_at(stop - 1), 6), words[0], words[1]))
        i = stop
    return out


def scenario_ids() -> list[str]:
    return [s.name for s in SCENARIOS]


# --- the real captures, against tshark


def test_the_capture_is_whole(capture):
    assert not capture.errors, "\n".join(capture.errors)
    assert " 0 packets dropped by kernel" in capture.tcpdump_said, capture.tcpdump_said


@pytest.mark.parametrize("name", scenario_ids())
def test_without_keys_the_handshake_is_tsharks(judged, name):
    """Version, suite, SNI, ALPN, randoms, records and alerts, with no key log at all."""
    j = judged[name]
    scenario = j.scenario
    assert set(j.ours) == set(j.theirs)
    assert len(j.ours) == (2 if scenario.kind == "python" else 1)
    for client_port, fed in j.ours.items():
        ours, theirs = fed.plain, j.theirs[client_port]
        what = f"{name} :{client_port} {json.dumps(ours.summary())}"
        assert looks_like_tls(fed.first_client_bytes), what
        assert ours.phase == tls.PHASE_APPLICATION, what
        assert ours.decryption == tls.DECRYPT_NO_KEYLOG
        assert ours.sni == theirs.sni == SNI, what
        assert ours.alpn_offered == theirs.alpn_offered == ["http/1.1"], what
        assert ours.client_random.hex() == theirs.client_random, what
        assert ours.legacy_version == theirs.legacy_version == 0x0303, what
        assert ours.offered_versions == [tls.VERSIONS[v] for v in theirs.offered_versions], what
        assert ours.cipher == theirs.cipher == scenario.suite, what
        assert ours.cipher_name == tls.SUITES[scenario.suite].name
        assert ours.version_code == theirs.version, what
        assert ours.version == f"TLS {scenario.version}", what
        assert ours.hello_retry == (scenario.kind == "openssl-hrr-keyupdate"), what
        for side in ("client", "server"):
            direction = ours.client if side == "client" else ours.server
            assert direction.state == tls.READING
            assert direction.records == theirs.records[side], (side, what)
            assert direction.undecrypted_records == direction.encrypted_records
        if scenario.version == "1.2":
            # The ALPN chosen is in the ServerHello; alerts after ChangeCipherSpec show their
            # record type, not their content.
            assert ours.alpn_known and [ours.alpn] == theirs.alpn, what
            seen = [(side, at) for side in ("client", "server")
                    for at, kind in theirs.outer[side] if kind == tls.ALERT]
            assert sorted((a.side, round(a.at, 6)) for a in ours.alerts) == sorted(seen), what
            assert all(a.level is None and a.encrypted for a in ours.alerts), what
            assert ours.close_notify == (tls.CLOSE_NOTIFY_UNKNOWN if seen
                                         else tls.CLOSE_NOTIFY_NONE), what
            assert round(ours.handshake_done_at, 6) == max(
                theirs.finished["client"] + theirs.finished["server"])
            assert not ours.handshake_done_inferred
        else:
            # EncryptedExtensions and every alert are encrypted: unknown, not guessed.
            assert not ours.alpn_known and ours.alpn is None, what
            assert ours.alerts == [] and ours.close_notify == tls.CLOSE_NOTIFY_UNKNOWN, what
            # The client's first encrypted record is its Finished (no client certificate).
            assert round(ours.handshake_done_at, 6) == theirs.finished["client"][0], what
            assert ours.handshake_done_inferred


@pytest.mark.parametrize("name", [s.name for s in PYTHON_SCENARIOS])
def test_without_keys_exchanges_bracket_tsharks_requests(judged, name):
    """An inferred exchange per request, its times around the frames tshark (with keys)
    shows the request and its response in, on a client that sends no close_notify."""
    j = judged[name]
    for client_port, fed in j.ours.items():
        ours, theirs = fed.plain, j.theirs[client_port]
        what = f"{name} :{client_port} {json.dumps(ours.summary())}"
        assert len(ours.exchanges) == len(theirs.requests) == len(theirs.responses), what
        for exchange, (asked, _, _), (answered, _) in zip(
                ours.exchanges, theirs.requests, theirs.responses, strict=True):
            assert exchange.inferred
            assert exchange.request_at <= asked + 1e-6, what
            assert asked <= exchange.request_end_at + 1e-6, what
            assert exchange.response_at <= answered + 1e-6, what
            assert answered <= exchange.response_end_at + 1e-6, what
            assert exchange.request_end_at <= exchange.response_at
        # In TLS 1.3 the server's session tickets race the first request: before it they are
        # unsolicited_server_records, after it part of the first response. Records alone
        # cannot tell a ticket from data; decrypted, tickets are handshake (below).


def test_without_keys_what_records_cannot_tell(judged):
    """TLS 1.3 without keys: a close_notify is an application-data record like any other,
    so s_client's close_notify, answering s_server's, is counted as one more exchange."""
    j = judged["tls13-chacha20-openssl"]
    (fed,) = j.ours.values()
    (theirs,) = j.theirs.values()
    assert len(theirs.requests) == 1
    assert len(fed.plain.exchanges) == 2
    last = fed.plain.exchanges[-1]
    assert last.request_records == 1 and last.request_bytes == 2 + 1 + 16  # alert, type, tag
    assert last.response_at is None  # the server's close_notify came before, with its answer
    assert last.request_at == fed.keyed.alerts[-1].at  # decrypted: s_client's close_notify
    assert len(fed.keyed.exchanges) == 1  # decrypted, the alerts are alerts


@pytest.mark.parametrize("name", scenario_ids())
def test_with_keys_the_plaintext_is_tsharks(judged, name):
    """Decrypted: the HTTP requests and responses, in order and at the times of their last
    bytes; the ALPN, the Finished messages and the alerts, as tshark decrypts them."""
    j = judged[name]
    for client_port, fed in j.ours.items():
        ours, theirs = fed.keyed, j.theirs[client_port]
        what = f"{name} :{client_port} {json.dumps(ours.summary())}"
        assert ours.decryption == tls.DECRYPT_ON, what
        assert ours.decrypt_failures == 0 and ours.notes == [], what
        assert ours.client.undecrypted_records == ours.server.undecrypted_records == 0, what
        assert ours.alpn_known and [ours.alpn] == theirs.alpn == ["http/1.1"], what
        requests_seen = http_messages(fed.chunks["client"])
        responses_seen = http_messages(fed.chunks["server"])
        assert requests_seen == theirs.requests, what
        assert [(at, int(code)) for at, _, code in responses_seen] == theirs.responses, what
        assert len(ours.exchanges) == len(theirs.requests), what
        assert ours.unsolicited_server_records == 0, what  # tickets are handshake
        finished = {side: (d.finished_at,) for side, d in (("client", ours.client),
                                                           ("server", ours.server))}
        assert {side: tuple(round(t, 6) for t in times) for side, times in finished.items()} \
            == {side: tuple(times) for side, times in theirs.finished.items()}, what
        done = theirs.finished["client"][0] if j.scenario.version == "1.3" \
            else max(theirs.finished["client"] + theirs.finished["server"])
        assert round(ours.handshake_done_at, 6) == done and not ours.handshake_done_inferred
        assert [(a.side, round(a.at, 6), a.description) for a in ours.alerts] == theirs.alerts
        notified = [a for a in theirs.alerts if a[2] == 0]
        if notified:
            assert ours.close_notify == tls.CLOSE_NOTIFY_SEEN
            assert (ours.close_notify_by, round(ours.close_notify_at, 6)) == notified[0][:2]
        else:
            assert ours.close_notify == tls.CLOSE_NOTIFY_NONE
        # Every plaintext byte carries the capture time of a segment of its side that had
        # at least as many bytes.
        for side in ("client", "server"):
            per_time: dict[float, int] = {}
            for chunk, at in fed.chunks[side]:
                per_time[at] = per_time.get(at, 0) + len(chunk)
            for at, size in per_time.items():
                assert size <= fed.sent[side].get(at, 0), (side, at, what)


def test_with_keys_the_stories_the_lab_will_tell(judged):
    """The facts the report will state, read from the decrypted records: urllib3 closes
    without close_notify; the test server closes an idle connection with one; s_server and
    s_client both send one; the HelloRetryRequest and KeyUpdates do not stop decryption."""
    for scenario in PYTHON_SCENARIOS:
        first, second = sorted(judged[scenario.name].ours.items(),
                               key=lambda item: item[1].plain.handshake_started_at)
        assert first[1].keyed.close_notify == tls.CLOSE_NOTIFY_NONE, scenario.name
        assert second[1].keyed.close_notify_by == "server", scenario.name
        for (_, fed), expected in zip((first, second), PYTHON_REQUESTS, strict=True):
            got = [(m, t) for _, m, t in http_messages(fed.chunks["client"])]
            assert got == expected, scenario.name
    (served,) = judged["tls13-chacha20-openssl"].ours.values()
    assert [(a.side, a.name) for a in served.keyed.alerts] == [("server", "close_notify"),
                                                               ("client", "close_notify")]
    assert b"".join(c for c, _ in served.chunks["server"]) == OPENSSL_RESPONSE
    (hrr,) = judged["tls13-aes128gcm-hrr-keyupdate-openssl"].ours.values()
    assert hrr.keyed.hello_retry
    assert b"".join(c for c, _ in hrr.chunks["client"]) == HRR_CLIENT
    assert b"".join(c for c, _ in hrr.chunks["server"]) == HRR_SERVER


def test_the_plaintext_feeds_the_analyzers_http_parser(judged):
    """The interface the analyzer will use: each (bytes, time) chunk into its
    _MessageStream.feed, as it feeds TCP payloads today; the requests and responses it
    finds, and when each ends, are tshark's."""
    from kalab.analyzer import _MessageStream, _response_framing

    j = judged["tls13-aes256gcm"]
    for client_port, fed in j.ours.items():
        found: list[list] = []  # [end time, method, target]
        answered: list[list] = []  # [end time, status]

        def on_request(first, headers, started, found=found):
            found.append([None, first[0], first[1]])
            return headers.framing or ("none", 0)

        def on_response(first, headers, started, answered=answered, found=found):
            answered.append([None, int(first[1])])
            return _response_framing(headers, found[len(answered) - 1][1], int(first[1]))

        def ended(ts, messages) -> None:
            messages[-1][0] = round(ts, 6)

        requests_parser = _MessageStream(on_request, lambda ts, body, m=found: ended(ts, m))
        responses_parser = _MessageStream(on_response,
                                          lambda ts, body, m=answered: ended(ts, m))
        for chunk, at in fed.chunks["client"]:
            requests_parser.feed(chunk, at)
        for chunk, at in fed.chunks["server"]:
            responses_parser.feed(chunk, at)
        assert [tuple(r) for r in found] == j.theirs[client_port].requests
        assert [tuple(r) for r in answered] == j.theirs[client_port].responses


def test_a_key_log_without_this_connection_says_so(judged, capture):
    """The key log of the other connections only: this one is not decrypted, and says why;
    a wrong master secret fails the first record, stops there and is counted."""
    j = judged["tls12-ecdhe-rsa-aes128gcm"]
    port = capture.ports[j.scenario.name]
    client_port, fed = sorted(j.ours.items())[0]
    random_hex = fed.plain.client_random.hex()
    lines = capture.keylog.read_text().splitlines()
    without = KeyLog("\n".join(line for line in lines if random_hex not in line))
    wrong = KeyLog("\n".join(line if random_hex not in line else
                             f"CLIENT_RANDOM {random_hex} {'ab' * 48}" for line in lines))
    for keylog, state in ((without, tls.DECRYPT_NO_KEYS), (wrong, tls.DECRYPT_FAILED)):
        again = feed_pcap(capture.pcap, port, keylog)[client_port]
        conn = again.keyed
        assert conn.decryption == state, conn.summary()
        assert again.chunks == {"client": [], "server": []}
        assert conn.notes, conn.summary()
        if state == tls.DECRYPT_FAILED:
            # One failure per direction: the first protected record; the rest only counted.
            assert conn.client.decrypt_failures == conn.server.decrypt_failures == 1
            assert conn.client.undecrypted_records == conn.client.encrypted_records
        # What needs no keys is still there.
        assert conn.sni == SNI and conn.handshake_done_at == fed.plain.handshake_done_at


# --- TLS made in memory: real OpenSSL records, no capture, no root


def memory_tls(pki: dict[str, str], folder: Path, version: str, ciphers: str | None = None,
               cert: str = "rsa", exchanges: int = 2,
               ) -> tuple[list[tuple[str, bytes]], str, dict[str, bytes], dict]:
    """A TLS connection between two ssl.SSLObjects over memory BIOs: the bytes each side
    sent, in order; the client's key log; the plaintext each side wrote; what the
    endpoints themselves say (version, cipher, ALPN)."""
    keylog = folder / f"memory-{version}-{ciphers}-{random.random()}.log"
    client_context = ssl.create_default_context(cafile=pki["ca"])
    client_context.keylog_filename = str(keylog)
    client_context.set_alpn_protocols(["http/1.1"])
    server_context_ = server_context(pki, version, ciphers, cert)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(c_in, c_out, server_hostname=SNI)
    server = server_context_.wrap_bio(s_in, s_out, server_side=True)
    wire: list[tuple[str, bytes]] = []
    written = {"client": b"", "server": b""}

    def move() -> None:
        for side, out, into in (("client", c_out, s_in), ("server", s_out, c_in)):
            data = out.read()
            if data:
                wire.append((side, data))
                into.write(data)

    def step(call) -> None:
        try:
            call()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass

    for _ in range(10):
        step(client.do_handshake)
        move()
        step(server.do_handshake)
        move()
    for n in range(exchanges):
        request = b"GET /m%d HTTP/1.1\r\nHost: tls.kalab.test\r\n\r\n" % n
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (n * 9000) \
            + b"z" * (n * 9000)
        client.write(request)
        written["client"] += request
        move()
        got = b""
        while len(got) < len(request):
            got += server.read(65536)
        server.write(response)
        written["server"] += response
        move()
        got = b""
        while len(got) < len(response):
            got += client.read(65536)
        move()
    step(server.unwrap)  # close_notify from the server
    move()
    facts = {"version": client.version(), "cipher": client.cipher()[0],
             "alpn": client.selected_alpn_protocol()}
    return wire, keylog.read_text(), written, facts


def feed_wire(wire: list[tuple[str, bytes]], keylog: KeyLog | None,
              rng: random.Random | None = None) -> tuple[TlsConnection, dict[str, bytes]]:
    """Feed the wire's chunks in order (cut in random pieces with ``rng``), time = piece."""
    conn = TlsConnection(keylog)
    out = {"client": b"", "server": b""}
    at = 0.0
    for side, data in wire:
        pieces = [data]
        if rng is not None and len(data) > 1:
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 5))))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        for piece in pieces:
            at += 1.0
            for chunk, _ in conn.feed(side, piece, at):
                out[side] += chunk
    return conn, out


MEMORY_CASES = [s for s in SCENARIOS if s.kind == "python"]
OPENSSL_NAMES = {0xC02F: "ECDHE-RSA-AES128-GCM-SHA256", 0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
                 0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305", 0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
                 0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
                 0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305", 0x009C: "AES128-GCM-SHA256",
                 0x009D: "AES256-GCM-SHA384", 0x1302: "TLS_AES_256_GCM_SHA384"}


@pytest.mark.parametrize("scenario", MEMORY_CASES, ids=[s.name for s in MEMORY_CASES])
def test_memory_tls_decrypts_as_the_endpoints_say(pki, tmp_path, scenario):
    wire, keys, written, facts = memory_tls(pki, tmp_path, scenario.version, scenario.ciphers,
                                            scenario.cert)
    assert facts["cipher"] == OPENSSL_NAMES[scenario.suite]
    rng = random.Random(scenario.suite)
    for pieces in (None, rng, rng):
        conn, out = feed_wire(wire, KeyLog(keys), pieces)
        what = json.dumps(conn.summary())
        assert out == written, what
        assert conn.version == facts["version"].replace("v", " "), what
        assert conn.cipher == scenario.suite and conn.alpn == facts["alpn"] == "http/1.1"
        assert conn.sni == SNI and conn.decryption == tls.DECRYPT_ON, what
        assert conn.close_notify_by == "server" and len(conn.exchanges) == 2, what


def test_keylog_lines_cost_only_themselves(pki, tmp_path):
    """Garbage around a connection's line: that line still decrypts it (scapy's
    parse_nss_keys drops the whole log at the first bad line)."""
    wire, keys, written, _ = memory_tls(pki, tmp_path, "1.3")
    noisy = "\n".join(["garbage", "CLIENT_RANDOM zz 11", "\x00\xff", "# a comment",
                       "EXPORTER_SECRET " + "00" * 32 + " " + "11" * 32, keys, "x" * 10_000])
    keylog = KeyLog(noisy)
    assert keylog.bad == 4 and keylog.ignored >= 3 and len(keylog) == 1
    conn, out = feed_wire(wire, keylog)
    assert out == written and conn.decryption == tls.DECRYPT_ON


def test_keylog_conflicting_secrets_decrypt_nothing(pki, tmp_path):
    wire, keys, _, _ = memory_tls(pki, tmp_path, "1.2", "ECDHE-RSA-AES128-GCM-SHA256")
    label, random_hex, _ = keys.split("\n")[1].split()
    keylog = KeyLog(keys + f"\n{label} {random_hex} {'cd' * 48}\n")
    conn, out = feed_wire(wire, keylog)
    assert conn.decryption == tls.DECRYPT_NO_KEYS and out == {"client": b"", "server": b""}
    assert "conflicting" in conn.notes[0]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_refused_certificate_is_a_failed_handshake(pki, tmp_path, version):
    """A client that does not trust the server's CA ends the handshake with a fatal
    unknown_ca. OpenSSL sends it in plaintext in TLS 1.3 too (its client has not switched
    its writing to the handshake keys yet when it checks the certificate): read without
    keys. Such a client logs nothing in TLS 1.2 (it never reached a master secret) and only
    the server's handshake secret in TLS 1.3: no keys to decrypt with, and the notes say
    which are missing."""
    keylog = tmp_path / "keys.log"
    client_context = ssl.create_default_context()  # the system's CAs, not the test's
    client_context.keylog_filename = str(keylog)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(c_in, c_out, server_hostname=SNI)
    server = server_context(pki, version, None, "rsa").wrap_bio(s_in, s_out, server_side=True)
    wire: list[tuple[str, bytes]] = []
    refused = None
    for _ in range(3):
        for endpoint in (client, server):
            try:
                endpoint.do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLError as exc:
                refused = refused or exc
            for name, out, into in (("client", c_out, s_in), ("server", s_out, c_in)):
                data = out.read()
                if data:
                    wire.append((name, data))
                    into.write(data)
    assert isinstance(refused, ssl.SSLCertVerificationError)
    logged = [line.split()[0] for line in keylog.read_text().splitlines()
              if line and not line.startswith("#")]
    assert logged == ([] if version == "1.2" else ["SERVER_HANDSHAKE_TRAFFIC_SECRET"])
    for keys in (None, KeyLog(keylog.read_text())):
        conn, out = feed_wire(wire, keys)
        assert out == {"client": b"", "server": b""}
        assert conn.phase == tls.PHASE_HANDSHAKE_FAILED, conn.summary()
        (alert,) = conn.alerts
        assert (alert.side, alert.level, alert.name, alert.encrypted) == (
            "client", tls.FATAL, "unknown_ca", False)
        assert conn.handshake_done_at is None
    assert conn.decryption == tls.DECRYPT_NO_KEYS
    assert conn.notes == [{"1.2": "the key log has no CLIENT_RANDOM line for this connection",
                           "1.3": "the key log lacks CLIENT_HANDSHAKE_TRAFFIC_SECRET"}[version]]


def test_without_application_secrets_the_handshake_is_still_read(pki, tmp_path):
    """A TLS 1.3 key log with the handshake secrets and only the server's application one:
    the handshake is decrypted (ALPN, Finished), the server's data too; the client's
    records after its Finished are counted, not decrypted, and the note says why."""
    wire, keys, written, _ = memory_tls(pki, tmp_path, "1.3")
    keylog = KeyLog("\n".join(line for line in keys.splitlines()
                               if not line.startswith("CLIENT_TRAFFIC_SECRET_0")))
    conn, out = feed_wire(wire, keylog)
    assert conn.alpn_known and conn.alpn == "http/1.1"
    assert conn.handshake_done_at is not None and not conn.handshake_done_inferred
    assert out == {"client": b"", "server": written["server"]}
    assert conn.client.undecrypted_records == 2 and conn.client.decrypt_failures == 0
    assert conn.notes == ["the key log lacks CLIENT_TRAFFIC_SECRET_0: the client's records "
                          "after its Finished are not decrypted"]


def test_looks_like_tls():
    assert looks_like_tls(b"\x16\x03\x01\x02\x00\x01")
    assert looks_like_tls(b"\x16\x03\x01")
    for not_tls in (b"GET / HTTP/1.1\r\n", b"", b"\x16\x03", b"\x16\x02\x01\x00\x10\x01",
                    b"\x16\x03\x01\xff\xff\x01", b"\x16\x03\x01\x00\x10\x02",
                    b"\x17\x03\x03\x00\x10", b"\x80\x2e\x01\x03\x01"):
        assert not looks_like_tls(not_tls), not_tls


def test_not_tls_and_giving_up_are_states():
    conn = TlsConnection()
    assert conn.phase == tls.PHASE_START
    assert conn.feed("client", b"GET / HTTP/1.1\r\n\r\n", 1.0) == []
    assert conn.client.state == tls.NOT_TLS and conn.phase == tls.PHASE_NOT_TLS
    assert conn.feed("client", b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", 2.0) == []
    with pytest.raises(ValueError):
        conn.feed("both", b"x", 3.0)


# --- hostile input


def _check(conn: TlsConnection) -> None:
    """What must hold whatever was fed: named states, a summary that is strict JSON."""
    assert conn.phase in PHASES and conn.decryption in DECRYPTIONS
    assert conn.close_notify in {tls.CLOSE_NOTIFY_SEEN, tls.CLOSE_NOTIFY_NONE,
                                 tls.CLOSE_NOTIFY_UNKNOWN}
    for d in (conn.client, conn.server):
        assert d.state in {tls.READING, tls.NOT_TLS, tls.GAVE_UP}
        assert d.held <= 5 + tls.MAX_RECORD + 65536  # one record and one feed at most
    json.dumps(conn.summary(), allow_nan=False)
    assert len(conn.alerts) <= tls.MAX_ALERTS


def _hello_record(body: bytes, kind: int = 1, version: bytes = b"\x03\x01") -> bytes:
    message = bytes((kind,)) + len(body).to_bytes(3, "big") + body
    return b"\x16" + version + len(message).to_bytes(2, "big") + message


def _client_hello(extensions: bytes, random_: bytes = b"\x11" * 32) -> bytes:
    return (b"\x03\x03" + random_ + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + len(extensions).to_bytes(2, "big") + extensions)


def _extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


@pytest.mark.reliability
def test_random_bytes_never_raise():
    rng = random.Random(14)
    count = survived = 0
    keylog = KeyLog("CLIENT_RANDOM " + "11" * 32 + " " + "22" * 48)
    for n in range(400):
        count += 1
        conn = TlsConnection(keylog if n % 2 else None)
        for _ in range(rng.randint(1, 12)):
            data = rng.randbytes(rng.randint(0, 3000))
            if rng.random() < 0.5:  # a header that lets it in
                data = bytes((rng.choice((20, 21, 22, 23)), 3, rng.randint(0, 4))) \
                    + rng.randint(0, 400).to_bytes(2, "big") + data
            conn.feed(rng.choice(("client", "server")), data, float(n))
        _check(conn)
        survived += 1
    tally(AREA, "random bytes, bare or behind a plausible record header, in random pieces "
          "to either side, with and without a key log", count, survived)
    assert survived == count


@pytest.mark.reliability
def test_real_streams_flipped_cut_repeated_and_padded(pki, tmp_path):
    """Real TLS 1.2 and 1.3 streams, changed: a byte flipped, a piece cut out, a piece sent
    twice, junk inserted, the stream stopped short. Decryption never yields a byte that was
    not sent: each side's output is a prefix of its true plaintext."""
    rng = random.Random(1414)
    cases = [memory_tls(pki, tmp_path, "1.2", "ECDHE-RSA-AES128-GCM-SHA256"),
             memory_tls(pki, tmp_path, "1.2", "ECDHE-ECDSA-CHACHA20-POLY1305", "ec"),
             memory_tls(pki, tmp_path, "1.3")]
    count = survived = failures = 0
    for n in range(600):
        wire, keys, written, _ = cases[n % len(cases)]
        stream = [(side, bytearray(data)) for side, data in wire]
        k = rng.randrange(len(stream))
        side, data = stream[k]
        how = n % 5
        if how == 0:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == 1:
            start = rng.randrange(len(data))
            del data[start:start + rng.randint(1, 40)]
        elif how == 2:
            stream.insert(k, (side, bytearray(data[:rng.randint(1, len(data))])))
        elif how == 3:
            data[rng.randrange(len(data) + 1):0] = rng.randbytes(rng.randint(1, 40))
        else:
            del stream[k:]
        count += 1
        conn, out = feed_wire([(s, bytes(d)) for s, d in stream], KeyLog(keys), rng)
        _check(conn)
        assert all(written[s].startswith(out[s]) for s in out), (n, how, conn.summary())
        failures += conn.decrypt_failures > 0
        survived += 1
    assert failures > 100  # the changes did reach the protected records
    tally(AREA, "real TLS 1.2 and 1.3 streams with a byte flipped, bytes cut out, repeated "
          "or inserted, or stopped short (decryption yields only a prefix of what was sent)",
          count, survived)
    assert survived == count


@pytest.mark.reliability
def test_records_cut_at_every_byte(pki, tmp_path):
    wire, keys, written, _ = memory_tls(pki, tmp_path, "1.3", exchanges=1)
    whole = b"".join(d for _, d in wire)
    count = survived = 0
    for cut in range(0, len(whole), 7):
        left = cut
        stream = []
        for side, data in wire:
            if left <= 0:
                break
            stream.append((side, data[:left]))
            left -= len(data)
        count += 1
        conn, out = feed_wire(stream, KeyLog(keys))
        _check(conn)
        assert all(written[s].startswith(out[s]) for s in out)
        survived += 1
    tally(AREA, "a real TLS 1.3 connection cut short after every 7th byte", count, survived)
    assert survived == count


@pytest.mark.reliability
def test_absurd_lengths():
    """Record lengths past the limit, handshake messages of 16 MiB, vectors longer than their
    message, zero-length records: named states and notes, nothing held past one record."""
    cases = []
    for length in (0, 1, 2**14, tls.MAX_RECORD, tls.MAX_RECORD + 1, 0xFFFF):
        cases.append(("client", b"\x16\x03\x01" + length.to_bytes(2, "big") + b"\x01" * 50))
    cases.append(("client", b"\x16\x03\x01\x40\x00\x01\xff\xff\xff" + b"\x00" * 0x3FFC))
    huge = b"\x0b\xff\xff\xff"  # a 16 MiB certificate message, never held
    cases.append(("server", b"".join(b"\x16\x03\x03\x40\x00" + (huge if n == 0 else b"")
                                     + b"\x00" * (0x4000 - (4 if n == 0 else 0))
                                     for n in range(40))))
    for ext in (_extension(0, b"\x00\xff\x00\x00\x05abc"), _extension(16, b"\x00\x05\x09http"),
                _extension(43, b"\x07\x03\x04"), _extension(0, b"") + _extension(0, b""),
                b"\xff", _extension(16, b"\x00\x02\x00\x00"),
                _extension(0, b"\x00\x06\x00\x01\x00" + b"a" * 300)):
        cases.append(("client", _hello_record(_client_hello(ext))))
    cases.append(("client", _hello_record(_client_hello(b"")[:20])))
    cases.append(("client", b"\x15\x03\x03\x00\x03\x02\x28\x00"))  # an odd-length alert
    cases.append(("client", b"\x17\x03\x03\x00\x00" * 3))  # application data first
    cases.append(("client", b"\x14\x03\x03\x00\x00"))  # an empty ChangeCipherSpec first
    cases.append(("server", b"\x15\x03\x03\x40\x00" + b"\x01\x00" * 0x2000))  # 8192 alerts
    count = survived = 0
    for side, data in cases:
        for pieces in (1, 3, len(data)):
            count += 1
            conn = TlsConnection(KeyLog())
            step = max(1, len(data) // pieces)
            for i in range(0, len(data), step):
                conn.feed(side, data[i:i + step], 1.0)
            _check(conn)
            survived += 1
    conn = TlsConnection()
    conn.feed("client", _hello_record(_client_hello(_extension(0, b"\x00\xff"))), 1.0)
    assert conn.sni is None and "malformed ClientHello" in conn.notes[0]
    tally(AREA, "record lengths from 0 to 65535, 16 MiB handshake messages, vectors longer "
          "than their message, empty and odd records, 8192 alerts; whole, in 3 pieces, and a "
          "byte at a time", count, survived)
    assert survived == count


@pytest.mark.reliability
def test_hostile_key_logs():
    rng = random.Random(8448)
    good = "CLIENT_RANDOM " + "ab" * 32 + " " + "cd" * 48
    texts: list[str | bytes] = [rng.randbytes(rng.randint(0, 5000)) for _ in range(150)]
    texts += ["\n".join(rng.choice([good, "x" * rng.randint(0, 2000), good.replace("ab", "zz"),
                                    good + " extra", good[:-2], "CLIENT_RANDOM", "\x00" * 64,
                                    "SERVER_TRAFFIC_SECRET_0 " + "ab" * 32 + " " + "11" * 33,
                                    "é" * 30, "# " + good, " \t " + good + "\r"])
                        for _ in range(rng.randint(1, 200))) for _ in range(150)]
    texts.append("\n".join(f"CLIENT_RANDOM {n:064x} {'11' * 48}" for n in range(20_000)))
    texts.append(b"\n" * 1_000_000)
    texts.append("A" * 5_000_000)
    count = survived = 0
    for text in texts:
        count += 1
        keylog = KeyLog(text, max_randoms=10_000)
        assert len(keylog) <= 10_000
        assert keylog.secrets(b"\xab" * 32) in ({}, {"CLIENT_RANDOM": b"\xcd" * 48})
        survived += 1
    assert KeyLog(texts[-3], max_randoms=10_000).dropped == 10_000
    tally(AREA, "key logs of random bytes, garbage lines among good ones, 20,000 client "
          "randoms past a bound of 10,000, a million blank lines, a 5 MB line", count, survived)
    assert survived == count
