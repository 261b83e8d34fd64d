"""Drive `requests.Session`s through a scenario's steps, recording beliefs.

A session with ``session: false`` has no Session of its own: each request
gets a fresh one, closed right after it, as ``requests.get()`` does.

The client's view is recorded, not trusted: the report sets it beside the
wire. For each request: when it was planned and sent (both epoch seconds,
steps timed from one monotonic clock), the local port of the socket urllib3
used, the status and the response's `Connection`/`Keep-Alive` headers, the
error if any, and urllib3's own log lines while it ran (``Starting new HTTP
connection``, ``Resetting dropped connection``): its reuse decisions.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from client.progress import ProgressFile, describe
from kalab.scenario import Scenario, Session, Step, TcpKeepalive

REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read


@dataclass
class RequestRecord:
    """What the client believed about one request."""

    ref: str  # the scenario's request reference
    session: str
    method: str
    path: str
    planned_at: float  # when the scenario said to send it
    sent_at: float  # just before requests was called
    finished_at: float  # when requests returned or raised
    local_port: int | None = None  # the socket urllib3 used, when it could be seen
    status: int | None = None
    response_connection: str | None = None
    response_keep_alive: str | None = None
    error: str | None = None  # the exception requests raised, e.g. ConnectionError
    error_cause: str | None = None  # the root cause, e.g. RemoteDisconnected
    urllib3: list[str] = field(default_factory=list)  # urllib3's log lines during the request


@dataclass
class CloseRecord:
    session: str
    at: float
    explicit: bool  # a `close` step, rather than the end of the session


class _Urllib3Log(logging.Handler):
    """Collects urllib3's connection-pool messages per thread (= per session)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: dict[int, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.setdefault(threading.get_ident(), []).append(record.getMessage())

    def take(self) -> list[str]:
        return self.lines.pop(threading.get_ident(), [])


def _local_port(response: requests.Response) -> int | None:
    raw = response.raw
    conn = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    try:
        return sock.getsockname()[1] if sock is not None else None
    except OSError:
        return None


def _root_cause(exc: BaseException) -> str:
    """The network error under requests' and urllib3's wrappers, e.g. RemoteDisconnected.

    Follows explicit causes only: an implicit context can be an unrelated
    exception urllib3 handled on the way (urllib3 1.26 leaves a TypeError there).
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    last = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        last = cause
        nested = [a for a in getattr(cause, "args", ()) if isinstance(a, BaseException)]
        reason = getattr(cause, "reason", None)
        cause = nested[0] if nested else reason if isinstance(reason, BaseException) \
            else cause.__cause__
    return f"{type(last).__name__}: {last}"


class SessionRunner:
    progress = ProgressFile(None)  # run_sessions sets the run's file

    def __init__(self, scenario: Scenario, session: Session, base_url: str, t0: float,
                 epoch0: float, log: _Urllib3Log) -> None:
        self.scenario, self.session, self.base_url = scenario, session, base_url
        self.t0, self.epoch0, self.log = t0, epoch0, log
        self.records: list[RequestRecord] = []
        self.closes: list[CloseRecord] = []

    def epoch(self, mono: float) -> float:
        return self.epoch0 + (mono - self.t0)

    def run(self) -> None:
        # Without a Session (``session: false``) each request makes its own: see `_send_alone`.
        http = make_session(self.session) if self.session.use_session else None
        last_done = self.t0
        try:
            for number, step in enumerate(self.session.steps, 1):
                self._show(number, step, last_done)
                if step.kind == "sleep":
                    target = last_done + step.seconds
                    _sleep_until(target)
                    last_done = target
                elif step.kind == "at":
                    target = self.t0 + step.seconds
                    _sleep_until(target)
                    last_done = max(last_done, target)
                elif step.kind == "close":  # the checker refuses it without a Session
                    http.close()
                    self.closes.append(CloseRecord(self.session.name, time.time(), True))
                elif http is None:
                    self.records.append(self._send_alone(step.request, last_done))
                    last_done = time.monotonic()
                else:
                    self.records.append(self._send(http, step.request, last_done))
                    last_done = time.monotonic()
        finally:
            if http is not None:
                http.close()
                self.closes.append(CloseRecord(self.session.name, time.time(), False))

    def _show(self, number: int, step: Step, last_done: float) -> None:
        until = None
        if step.kind == "sleep":
            until = self.epoch(last_done + step.seconds)
        elif step.kind == "at":
            until = self.epoch(self.t0 + step.seconds)
        self.progress.step(self.session.name, number, len(self.session.steps), describe(step),
                           until)

    def _send_alone(self, request: Any, planned: float) -> RequestRecord:
        """``request`` as requests.get() sends it: on a Session of its own, closed once the
        response is read, so its connection is new and the client closes it at once."""
        with make_session(self.session) as http:
            record = self._send(http, request, planned)
        self.closes.append(CloseRecord(self.session.name, time.time(), False))
        return record

    def _send(self, http: requests.Session, request: Any, planned: float) -> RequestRecord:
        seen_port: list[int | None] = [None]

        def remember_port(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            seen_port[0] = _local_port(response)  # before the body is read and the socket pooled

        self.log.take()
        sent = time.time()
        record = RequestRecord(request.ref, self.session.name, request.method, request.path,
                               planned_at=self.epoch(planned), sent_at=sent, finished_at=sent)
        try:
            response = http.request(request.method, self.base_url + request.path,
                                    headers=request.headers or None, data=request.body,
                                    timeout=REQUEST_TIMEOUT, allow_redirects=False,
                                    hooks={"response": remember_port})
            record.status = response.status_code
            record.response_connection = response.headers.get("Connection")
            record.response_keep_alive = response.headers.get("Keep-Alive")
        except requests.RequestException as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            record.error_cause = _root_cause(exc)
        record.finished_at = time.time()
        record.local_port = seen_port[0]
        record.urllib3 = self.log.take()
        return record


def make_session(session: Session) -> requests.Session:
    """A requests.Session as the scenario's session asks: its retries, its HTTP version,
    its stale check, its TCP keep-alive."""
    http = requests.Session()
    if session.retries or session.http_version != "1.1" or not session.stale_check \
            or session.tcp_keepalive is not None:
        http.mount("http://", _ScenarioAdapter(session))
    return http


def keepalive_socket_options(keepalive: TcpKeepalive) -> list[tuple[int, int, int]]:
    """urllib3's own socket options (TCP_NODELAY) and SO_KEEPALIVE with the timers the
    scenario sets; a timer it leaves out stays the system's (Linux names)."""
    options = [*urllib3.connection.HTTPConnection.default_socket_options,
               (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for option, value in ((socket.TCP_KEEPIDLE, keepalive.idle),
                          (socket.TCP_KEEPINTVL, keepalive.interval),
                          (socket.TCP_KEEPCNT, keepalive.count)):
        if value is not None:
            options.append((socket.IPPROTO_TCP, option, value))
    return options


class _ScenarioAdapter(HTTPAdapter):
    def __init__(self, session: Session) -> None:
        # Set before HTTPAdapter.__init__, which calls init_poolmanager.
        self._http10 = session.http_version == "1.0"
        self._no_stale_check = not session.stale_check
        self._socket_options = None if session.tcp_keepalive is None else \
            keepalive_socket_options(session.tcp_keepalive)
        # Retry(total=N) retries only idempotent methods, as RFC 9110 section 9.2.2 asks.
        super().__init__(max_retries=Retry(total=session.retries, backoff_factor=0)
                         if session.retries else 0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._socket_options is not None:
            kwargs["socket_options"] = self._socket_options  # urllib3 sets them on each socket
        super().init_poolmanager(*args, **kwargs)
        pool = {(False, False): None, (True, False): _Http10Pool,
                (False, True): _UncheckedPool, (True, True): _UncheckedHttp10Pool}[
                    (self._http10, self._no_stale_check)]
        if pool is not None:
            self.poolmanager.pool_classes_by_scheme = {
                **self.poolmanager.pool_classes_by_scheme, "http": pool}


class _Http10Connection(urllib3.connection.HTTPConnection):
    _http_vsn = 10
    _http_vsn_str = "HTTP/1.0"


class _UncheckedConnection(urllib3.connection.HTTPConnection):
    kalab_unchecked = True


class _UncheckedHttp10Connection(_Http10Connection):
    kalab_unchecked = True


class _Http10Pool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _Http10Connection


class _UncheckedPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _UncheckedConnection


class _UncheckedHttp10Pool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _UncheckedHttp10Connection


_urllib3_is_connection_dropped = urllib3.connectionpool.is_connection_dropped


def _is_connection_dropped(conn: Any) -> bool:
    # urllib3 (1.26 and 2.x) looks this name up in connectionpool for every reuse.
    if getattr(conn, "kalab_unchecked", False) and getattr(conn, "sock", None) is not None:
        return False
    return _urllib3_is_connection_dropped(conn)


urllib3.connectionpool.is_connection_dropped = _is_connection_dropped


def _sleep_until(target: float) -> None:
    while True:
        left = target - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.5) if left > 0.002 else 0)


def run_sessions(scenario: Scenario, base_url: str,
                 progress: Path | None = None) -> dict[str, Any]:
    """Run every session at once from one start; the records, as JSON-ready data.

    Interrupted (SIGTERM or Ctrl-C, raised here as `KeyboardInterrupt`), it returns
    the records made so far with ``interrupted`` true; the request in flight has none.

    With ``progress``, each session's current step is kept in that file
    (`client.progress.ProgressFile`) for the live display of `kalab run`.
    """
    log = _Urllib3Log()
    pool_logger = logging.getLogger("urllib3.connectionpool")
    pool_logger.addHandler(log)
    pool_logger.setLevel(logging.DEBUG)
    t0, epoch0 = time.monotonic(), time.time()
    runners = [SessionRunner(scenario, s, base_url, t0, epoch0, log) for s in scenario.sessions]
    shown = ProgressFile(progress)
    for runner in runners:
        runner.progress = shown
    # Daemons: a client stopped mid-sleep (SIGTERM, Ctrl-C) exits once its main thread
    # has cleaned up, instead of waiting out the sessions' sleeps.
    threads = [threading.Thread(target=r.run, name=f"session-{r.session.name}", daemon=True)
               for r in runners]
    interrupted = False
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C: keep what the sessions recorded so far
        interrupted = True
    finally:
        pool_logger.removeHandler(log)
    records = sorted((rec for r in runners for rec in list(r.records)),
                     key=lambda rec: rec.sent_at)
    return {
        "started_at": epoch0,
        "base_url": base_url,
        "requests": [asdict(rec) for rec in records],
        "closes": [asdict(c) for r in runners for c in list(r.closes)],
        "versions": _versions(),
        "interrupted": interrupted,
    }


def _versions() -> dict[str, str]:
    return {"requests": requests.__version__, "urllib3": urllib3.__version__}
