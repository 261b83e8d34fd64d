"""`kalab probe URL`: what a live server does with idle connections, measured from the client.

Theory of operation
-------------------
The probe speaks HTTP/1.1 itself (h11 over a plain socket, TLS for
``https://``), so that it owns each connection and sees its end: a FIN reads
as the end of the stream, a RST as a reset. It measures, in order:

1. **What the server advertises**: one GET on a new connection, its status,
   `Connection`, `Keep-Alive` (``timeout=``, ``max=``) and `Server` headers.
2. **The idle timeout it enforces**, watched: a GET, then nothing, while the
   probe waits for the server to close the connection, up to ``max_idle``
   seconds. The close is seen when it happens (to the millisecond), with a
   FIN or a RST. A server that closes nothing within ``max_idle``, or one
   whose close never reaches the client (a middlebox that drops idle state,
   a FIN lost), is then looked for by **bisection**: a connection idle for
   ``t`` seconds, then a second GET, which works or fails; ``t`` is halved
   towards the edge until the edge is known within ``resolution`` (50 ms).
3. **How many requests one connection carries**: GETs one after the other
   on one connection until the server ends it (`Connection: close`, a FIN)
   or the probe's budget for it runs out.

Everything is bounded: at most ``max_requests`` requests, ``max_seconds`` of
probing, ``rate`` requests a second; the probe stops where its budget ends
and says what it could not learn. Only an explicit ``http://`` or
``https://`` URL is taken. With root, the probe's packets are captured on
the interface that leads to the server and the capture is analysed as a lab
run's is (`kalab.evidence`): the same report, views and exit codes.
"""

from __future__ import annotations

import math
import re
import select
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import h11

from kalab.target import Pace, Target

USER_AGENT = "kalab-probe (keepalive-lab: measuring idle connections)"
_TIMEOUT = re.compile(r"(?:^|[,;\s])timeout\s*=\s*([0-9]{1,9}(?:\.[0-9]+)?)\b", re.I)
_MAX = re.compile(r"(?:^|[,;\s])max\s*=\s*([0-9]{1,9})\b", re.I)
READ_CHUNK = 65536
MAX_RESPONSE = 16 << 20  # bytes of one response the probe reads before it gives up


class ProbeError(Exception):
    """The server could not be probed at all (refused, unreachable, not HTTP)."""


class BudgetSpent(Exception):
    """The probe's bounds (requests, time) are reached."""


@dataclass
class Limits:
    max_requests: int = 60
    max_seconds: float = 180.0
    max_idle: float = 30.0  # the longest idle wait watched, and bisection's upper end
    rate: float = 5.0  # requests a second at most
    per_connection: int = 20  # requests tried on one connection to find its limit
    resolution: float = 0.05  # bisection stops when the edge is known this closely


@dataclass
class Budget:
    limits: Limits
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    pace: Pace = field(init=False)  # one request at a time, at the limits' rate

    def __post_init__(self) -> None:
        self.pace = Pace(self.limits.rate)

    def spend(self) -> None:
        """One request more, paced to the rate; BudgetSpent past the bounds."""
        if self.requests >= self.limits.max_requests:
            raise BudgetSpent(f"{self.requests} requests sent, the most allowed")
        self.pace.take()
        self.check(0.0)
        self.requests += 1

    def left(self) -> float:
        return self.limits.max_seconds - (time.monotonic() - self.started)

    def check(self, needed: float) -> None:
        if self.left() < needed:
            raise BudgetSpent(f"{self.limits.max_seconds:g} s of probing, the most allowed")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names, repeated ones joined by ", "
    ended_at: float  # time.monotonic() when the last byte was read
    closes: bool  # the server said Connection: close (or spoke HTTP/1.0 without keep-alive)


class ProbeConnection:
    """One connection the probe owns: requests out, responses in, and how it ended."""

    def __init__(self, where: Target, keylog: Path | None = None, timeout: float = 10.0) -> None:
        self.where = where
        try:
            raw = socket.create_connection((where.host, where.port), timeout=timeout)
        except OSError as exc:
            raise ProbeError(f"{where.authority}: cannot connect: {exc.strerror or exc}") \
                from None
        if where.scheme == "https":
            context = ssl.create_default_context()  # the server's certificate is checked
            if keylog is not None:
                context.keylog_filename = str(keylog)  # for the capture's decryption
            try:
                raw = context.wrap_socket(raw, server_hostname=where.host)
            except (ssl.SSLError, OSError) as exc:
                raw.close()
                raise ProbeError(f"{where.authority}: TLS failed: {exc}") from None
        self.sock = raw
        self.local_port = raw.getsockname()[1]
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def get(self, budget: Budget) -> Response:
        """One GET and its whole response; ProbeError if the connection is gone."""
        budget.spend()
        request = h11.Request(method="GET", target=self.where.path, headers=[
            ("Host", self.where.authority), ("User-Agent", USER_AGENT), ("Accept", "*/*")])
        try:
            self.sock.sendall(self.http.send(request) + self.http.send(h11.EndOfMessage()))
            status, headers, read = 0, {}, 0
            while True:
                event = self.http.next_event()
                if event is h11.NEED_DATA:
                    data = self.sock.recv(READ_CHUNK)
                    read += len(data)
                    if read > MAX_RESPONSE:
                        raise ProbeError("a response of more than 16 MiB: not probed further")
                    self.http.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    for name, value in event.headers:
                        key = name.decode("latin-1").lower()
                        text = value.decode("latin-1")
                        headers[key] = f"{headers[key]}, {text}" if key in headers else text
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ProbeError("the server closed the connection before answering")
        except (OSError, h11.ProtocolError) as exc:
            raise ProbeError(f"the request failed: {exc}") from None
        closes = self.http.their_state is h11.MUST_CLOSE or \
            "close" in headers.get("connection", "").lower()
        if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE:
            self.http.start_next_cycle()
        return Response(status, headers, time.monotonic(), closes)

    def watch(self, seconds: float) -> tuple[str | None, float]:
        """Wait up to ``seconds`` for the server to end the connection: ("fin" | "rst" |
        None, when: time.monotonic())."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, time.monotonic()
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            now = time.monotonic()
            try:
                data = self.sock.recv(READ_CHUNK)
            except ssl.SSLWantReadError:
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                return "rst", now
            if not data:
                return "fin", now
            # Bytes while idle (a TLS session ticket, a stray byte): not a close.


@dataclass
class Findings:
    """What the probe learnt; the report's `ProbeResult` is made from it."""

    status: int | None = None
    server: str | None = None
    advertised_connection: str | None = None
    advertised_keep_alive: str | None = None
    advertised_timeout: float | None = None
    advertised_max: int | None = None
    idle_timeout: float | None = None
    idle_found_by: str = "not measured"
    closed_with: str | None = None
    requests_per_connection: int | None = None
    requests_limited: bool = False
    requests_sent: int = 0
    notes: list[str] = field(default_factory=list)


def advertised(headers: dict[str, str]) -> tuple[float | None, int | None]:
    keep_alive = headers.get("keep-alive", "")
    timeout, most = _TIMEOUT.search(keep_alive), _MAX.search(keep_alive)
    value = float(timeout.group(1)) if timeout else None
    return (value if value is not None and math.isfinite(value) else None,
            int(most.group(1)) if most else None)


def probe(where: Target, limits: Limits, keylog: Path | None = None) -> Findings:
    """Measure ``where``: raises ProbeError only if nothing at all could be learnt."""
    budget = Budget(limits)
    found = Findings()
    first = ProbeConnection(where, keylog)
    try:
        response = first.get(budget)
    finally:
        first.close()
    found.status = response.status
    found.server = response.headers.get("server")
    found.advertised_connection = response.headers.get("connection")
    found.advertised_keep_alive = response.headers.get("keep-alive")
    found.advertised_timeout, found.advertised_max = advertised(response.headers)
    try:
        _idle(where, limits, budget, found, keylog)
        _per_connection(where, limits, budget, found, keylog)
    except BudgetSpent as exc:
        found.notes.append(f"stopped: {exc}")
    except ProbeError as exc:
        found.notes.append(f"stopped: {exc}")
    found.requests_sent = budget.requests
    return found


def _idle(where: Target, limits: Limits, budget: Budget, found: Findings,
          keylog: Path | None) -> None:
    connection = ProbeConnection(where, keylog)
    try:
        response = connection.get(budget)
        if response.closes:
            found.idle_timeout, found.idle_found_by = 0.0, "closed after each response"
            found.closed_with, _ = connection.watch(min(5.0, budget.left()))
            return
        budget.check(0.0)
        how, at = connection.watch(min(limits.max_idle, budget.left()))
    finally:
        connection.close()
    if how is not None:
        found.idle_timeout = round(at - response.ended_at, 3)
        found.idle_found_by = "watched close"
        found.closed_with = how
        return
    found.notes.append(f"no close seen in {limits.max_idle:g} s idle: looking for a silent "
                       "drop by bisection")
    _bisect(where, limits, budget, found, keylog)


def _alive_after(where: Target, idle: float, budget: Budget, keylog: Path | None) -> bool:
    """Does a connection idle for ``idle`` seconds still answer a request?"""
    budget.check(idle + 10)
    connection = ProbeConnection(where, keylog)
    try:
        connection.get(budget)
        time.sleep(idle)
        try:
            connection.get(budget)
        except ProbeError:
            return False
        return True
    finally:
        connection.close()


def _bisect(where: Target, limits: Limits, budget: Budget, found: Findings,
            keylog: Path | None) -> None:
    low, high = 0.0, limits.max_idle
    if _alive_after(where, high, budget, keylog):
        found.idle_found_by = f"none within {limits.max_idle:g} s"
        return
    while high - low > limits.resolution:
        middle = (low + high) / 2
        if _alive_after(where, middle, budget, keylog):
            low = middle
        else:
            high = middle
    found.idle_timeout = round((low + high) / 2, 3)
    found.idle_found_by = f"bisection (between {low:.3f} and {high:.3f} s)"
    found.closed_with = "silent"  # no close reached the client: a request found it gone


def _per_connection(where: Target, limits: Limits, budget: Budget, found: Findings,
                    keylog: Path | None) -> None:
    """Requests one connection carries: connections tried until two in a row agree, as a
    limit counted over a server's life (gunicorn's --max-requests) cuts one short."""
    counts: list[tuple[int, bool]] = []
    for _ in range(3):
        counts.append(_carried(where, limits, budget, keylog))
        if len(counts) >= 2 and counts[-1] == counts[-2]:
            break
    agreed = len(counts) >= 2 and counts[-1] == counts[-2]
    # No two in a row agreed (a server restarting under load cuts more than one short):
    # the most any connection carried is the nearest to what one can carry.
    found.requests_per_connection, found.requests_limited = \
        counts[-1] if agreed else max(counts)
    if len(set(counts)) > 1:
        found.notes.append("connections carried " + ", ".join(str(c) for c, _ in counts)
                           + " requests: " + ("the last two agreed" if agreed
                                              else "none agreed; the most is reported"))
    if not found.requests_limited:
        found.notes.append(f"one connection carried all {counts[-1][0]} requests tried")


def _carried(where: Target, limits: Limits, budget: Budget,
             keylog: Path | None) -> tuple[int, bool]:
    """Requests one connection carried, and whether the server ended it."""
    connection = ProbeConnection(where, keylog)
    carried = 0
    try:
        for _ in range(limits.per_connection):
            try:
                response = connection.get(budget)
            except ProbeError:
                return carried, True
            carried += 1
            if response.closes:
                return carried, True
    finally:
        connection.close()
    return carried, False


LINGER = 0.5  # seconds the capture goes on after the probe: the last FINs and ACKs


def run(where: Target, limits: Limits, results: Path,  # noqa: ANN201
        capture: tuple[list[str], str] | None = None):
    """Probe ``where`` into the run folder ``results`` (new, made by the caller),
    capturing its packets where ``capture`` says (the addresses and the interface
    `kalab.target.locate` found, before the folder was made); the report, written with
    its views."""
    import threading

    from kalab import evidence, render
    from kalab import report as report_mod
    from kalab.exitcodes import BY_VERDICT

    started = time.time()
    keylog = results / "tls-keys.log" if where.scheme == "https" else None
    sniffer = stop = reader = None
    pcap = results / "probe" / "capture.pcap"
    if capture is not None:
        from observer.capture import Capture

        addresses, interface = capture
        pcap.parent.mkdir()
        sniffer = Capture(interface, where.port, pcap, hosts=addresses)
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                sniffer.poll(0.02)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
    began = time.monotonic()
    try:
        found = probe(where, limits, keylog)
    finally:
        if sniffer is not None:
            time.sleep(LINGER)
            stop.set()
            reader.join()
            stats = sniffer.close()
    result = report_mod.ProbeResult(
        url=where.url, status=found.status, server=found.server,
        advertised_connection=found.advertised_connection,
        advertised_keep_alive=found.advertised_keep_alive,
        advertised_timeout=found.advertised_timeout, advertised_max=found.advertised_max,
        idle_timeout=found.idle_timeout, idle_found_by=found.idle_found_by,
        closed_with=found.closed_with, requests_per_connection=found.requests_per_connection,
        requests_limited=found.requests_limited, requests_sent=found.requests_sent,
        seconds=round(time.monotonic() - began, 3),
        notes=found.notes)
    runs = []
    if sniffer is not None:
        analysis = evidence.analyze_capture(pcap, {where.port})
        problems = list(stats.problems) + evidence.wire_problems(analysis.connections)
        if analysis.cut_short():
            problems.append(analysis.cut_short())
        cap = report_mod.Capture(
            pcap="probe/capture.pcap", interface=stats.interface, filter=stats.filter,
            started_at=stats.started_at, stopped_at=stats.stopped_at, packets=stats.packets,
            duplicates_dropped=stats.duplicates_dropped, kernel_drops=stats.kernel_drops,
            problems=problems)
        runs.append(report_mod.EngineRun(
            engine="probe", kind="target", description=f"{where.url} (a server the lab did "
            "not start)", version=found.server, listen=f"{where.host}:{where.port}",
            options={"max_requests": limits.max_requests, "max_seconds": limits.max_seconds,
                     "max_idle": limits.max_idle, "rate": limits.rate},
            capture=cap, connections=analysis.connections, requests=analysis.requests,
            verdict=evidence.verdict_of([], problems)))
    verdict = report_mod.overall_verdict([r.verdict for r in runs]) if runs else "observed"
    report = report_mod.Report(
        schema=report_mod.SCHEMA, scenario=None, name=results.name, runtime="probe",
        started_at=started, finished_at=time.time(), runs=runs, verdict=verdict,
        exit_code=BY_VERDICT[verdict], probe=result)
    render.publish(report, results)
    return report
