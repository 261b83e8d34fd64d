"""The client role's session options, against a small HTTP/1.1 server on loopback.

`session: false` sends each request as requests.get() does (a Session of its
own, closed once the response is read), so the server sees one connection per
request, each closed by the client; `tcp_keepalive` puts SO_KEEPALIVE and its
timers on the very socket a request went out on. No capture here: the real
runs in namespaces (tests/test_scenarios.py) show the same on the wire.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from client.kinds.requests import make_session
from client.sessions import run_sessions
from kalab.scenario import parse


class KeepAliveHandler(BaseHTTPRequestHandler):
    """Answers on a kept-alive HTTP/1.1 connection; notes when its client closed it."""

    protocol_version = "HTTP/1.1"
    closed: list[tuple[int, float]]  # (client port, when the client's FIN was read)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def finish(self) -> None:
        super().finish()
        self.closed.append((self.client_address[1], time.time()))

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def server() -> Iterator[tuple[str, list[tuple[int, float]]]]:
    closed: list[tuple[int, float]] = []
    handler = type("Handler", (KeepAliveHandler,), {"closed": closed})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", closed
    finally:
        httpd.shutdown()
        httpd.server_close()


def session(text: str):
    return parse(f"sessions:\n  - {text}\nengines: [{{engine: werkzeug}}]\n").sessions[0]


def socket_of(response: requests.Response) -> socket.socket:
    return response.raw.connection.sock


def test_tcp_keepalive_sets_so_keepalive_and_its_timers_on_the_request_s_socket():
    seen: list[tuple[int, ...]] = []

    def options(response: requests.Response, *args: object, **kwargs: object) -> None:
        sock = socket_of(response)
        seen.append((sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                     sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                     sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                     sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                     sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))

    with server() as (base, _):
        with make_session(session("tcp_keepalive: {idle: 2, interval: 3, count: 4}\n"
                                  "    steps: [get: /]")) as http:
            http.get(base, hooks={"response": options}).raise_for_status()
        with make_session(session("steps: [get: /]")) as http:
            http.get(base, hooks={"response": options}).raise_for_status()
    with_probes, without = seen
    assert with_probes == (1, 2, 3, 4, 1)  # and urllib3's own TCP_NODELAY is kept
    assert without[0] == 0 and without[4] == 1


def test_a_timer_left_out_stays_the_system_s():
    with open("/proc/sys/net/ipv4/tcp_keepalive_probes") as system:
        probes = int(system.read())
    seen = []
    with server() as (base, _):
        with make_session(session("tcp_keepalive: {idle: 5}\n    steps: [get: /]")) as http:
            http.get(base, hooks={"response": lambda r, *a, **k: seen.append(
                socket_of(r).getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))})
    assert seen == [probes]


def scenario(session_lines: str):
    return parse(f"""\
sessions:
  - name: s
{session_lines}
    steps: [get: /, sleep: 0.3, get: /, sleep: 0.3, get: /]
engines: [{{engine: werkzeug}}]
""")


def test_without_a_session_each_request_opens_a_connection_the_client_closes():
    with server() as (base, closed):
        records = run_sessions(scenario("    session: false"), base)
        time.sleep(0.2)  # the server thread notes the last close
    requests_made = records["requests"]
    ports = [r["local_port"] for r in requests_made]
    assert len(set(ports)) == 3 and None not in ports
    assert all(r["status"] == 200 for r in requests_made)
    # urllib3's own words: a new connection each time, never a reused one
    assert all(any("Starting new HTTP connection (1)" in line for line in r["events"])
               and r["new_connection"] is True for r in requests_made)
    # the server saw each connection end (the client's FIN) before the next request left
    assert [port for port, _ in closed] == ports
    for (_, at), later in zip(closed, requests_made[1:], strict=False):
        assert at < later["sent_at"]
    assert len(records["closes"]) == 3  # one Session closed after each request


def test_with_a_session_the_requests_share_one_connection():
    with server() as (base, closed):
        records = run_sessions(scenario(""), base)
        time.sleep(0.2)
    ports = {r["local_port"] for r in records["requests"]}
    assert len(ports) == 1
    assert [port for port, _ in closed] == list(ports)  # closed once, at the session's end
    assert len(records["closes"]) == 1


def test_every_session_s_client_is_made_before_the_clock_starts(monkeypatch):
    """Made one after another in the calling thread: imports in several session threads
    at once deadlocked Debian's urllib3 1.26 (six's importer) in a container, and an
    import's time counted as the first request's send lag."""
    from client.kinds.requests import Requests
    from client.kinds.urllib3 import Urllib3

    made: list[tuple[str, float]] = []
    for kind in (Requests, Urllib3):
        real = kind.driver.__func__

        def driver(cls, *args, _real=real, **kwargs):
            made.append((threading.current_thread().name, time.time()))
            time.sleep(0.2)  # a slow import: it must not count against the plan
            return _real(cls, *args, **kwargs)

        monkeypatch.setattr(kind, "driver", classmethod(driver))
    two = parse("""\
sessions:
  - {name: a, steps: [get: /]}
  - {name: b, client: urllib3, steps: [get: /]}
engines: [{engine: werkzeug}]
""")
    with server() as (base, _):
        records = run_sessions(two, base)
    assert [name for name, _ in made] == ["MainThread", "MainThread"]
    assert all(r["status"] == 200 for r in records["requests"])
    assert records["started_at"] >= made[-1][1] + 0.2
    # the plan starts when the clients are ready: no import in the send lag
    assert all(r["sent_at"] - r["planned_at"] < 0.15 for r in records["requests"])


def test_no_client_goes_through_a_proxy_the_environment_names(monkeypatch):
    """The lab's clients talk to the lab's server: a proxy set where kalab runs (nothing
    listens at this one) is not theirs."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    kinds = parse("""\
sessions:
  - {name: requests, steps: [get: /]}
  - {name: urllib3, client: urllib3, steps: [get: /]}
  - {name: httpx, client: httpx, steps: [get: /]}
  - {name: aiohttp, client: aiohttp, steps: [get: /]}
  - {name: curl, client: curl, steps: [get: /]}
engines: [{engine: werkzeug}]
""")
    with server() as (base, _):
        records = run_sessions(kinds, base.replace("127.0.0.1", "localhost"))
    assert {r["session"]: (r["status"], r["error"]) for r in records["requests"]} == {
        name: (200, None) for name in ("requests", "urllib3", "httpx", "aiohttp", "curl")}


def test_sleep_until_never_wakes_before_its_target():
    from client.kinds._shared import sleep_until

    late = []
    for gap in (0.0001, 0.0004, 0.003, 0.01):
        target = time.monotonic() + gap
        sleep_until(target)
        late.append(time.monotonic() - target)
    assert all(0 <= lag < 0.05 for lag in late), late  # early never; late only when loaded
