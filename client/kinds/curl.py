"""curl, the command: one invocation per run of requests that follow one another.

A curl session is what curl can do in one process: the requests that follow
one another with no step between them (no sleep, at or close) go in one
invocation, one URL each (``--next`` between them, so each has its own
method, headers and body), and share its connection when the server allows;
a sleep or an ``at`` ends the invocation, and curl closes its connections
as it exits (the client's FIN right after the batch's last response). A
``close`` step means nothing (the invocation's end is the close) and is
refused. What curl believed comes from its own words: ``-w`` gives each
transfer's status, local port, response headers and ``num_connects`` (0: it
reused a connection), and ``-v --trace-time`` its connection events and when
each transfer started and ended.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from client.kinds._shared import HTTP_VERSION, REQUEST_TIMEOUT
from kalab.kinds import ClientKind, CloseRecord, Driver, RequestRecord

if TYPE_CHECKING:
    from kalab.certs import ClientTls
    from kalab.scenario import Request, Session

MARK = "KALAB-CURL"
# One line per transfer on standard output (bodies go to /dev/null).
WRITE_OUT = (MARK + " %{urlnum} %{http_code} %{num_connects} %{local_port} %{exitcode} "
             "C=%header{connection}\\tKA=%header{keep-alive}\\tE=%{errormsg}\\n")
_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{6}) (.*)$")
_REQUEST_LINE = re.compile(r"^> [A-Z]+ \S+ HTTP/")
_END = re.compile(r"^\* (Connection #\d+ to host .* left intact|Closing connection)")


class Curl(ClientKind):
    name = "curl"
    order = 40
    summary = "the curl command: requests with no step between them in one invocation"
    advertises = ("reuses its connection within one invocation (num_connects 0), closes it "
                  "as it exits; a pooled connection found dead is replaced (\"seems to be "
                  "dead\")")
    options = {"http_version": HTTP_VERSION}
    closes = False  # an invocation's end is its close

    @classmethod
    def driver(cls, session: Session, base_url: str, epoch: Callable[[float], float],
               tls: ClientTls | None = None) -> Driver:
        return _CurlDriver(session, base_url, tls)

    @classmethod
    def versions(cls) -> dict[str, str]:
        out = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
        words = out.split()
        return {"curl": words[1] if len(words) > 1 else "?"}


def _argv(requests: list[Request], base_url: str, http10: bool,
          tls: ClientTls | None = None) -> list[str]:
    # --noproxy '*': the lab's server directly, whatever proxy the environment names
    argv = ["curl", "--no-progress-meter", "-v", "--trace-time", "--noproxy", "*"]
    tls_words = tls.curl_arguments() if tls is not None else []
    for i, request in enumerate(requests):
        if i:
            argv.append("--next")
        argv += ["-o", "/dev/null", "-w", WRITE_OUT,
                 "--http1.0" if http10 else "--http1.1",
                 "--connect-timeout", f"{REQUEST_TIMEOUT[0]:g}",
                 "--max-time", f"{REQUEST_TIMEOUT[0] + REQUEST_TIMEOUT[1]:g}", *tls_words]
        if request.method == "HEAD":
            argv.append("--head")  # -X HEAD would wait for a body that never comes
        elif request.method != "GET":
            argv += ["-X", request.method]
        for name, value in request.headers.items():
            argv += ["-H", f"{name}: {value}"]
        if request.body is not None:
            argv += ["--data-binary", request.body]
        argv.append(base_url + request.path)
    return argv


def _stamps(stderr: str, day: datetime.date) -> list[tuple[float, str]]:
    """Each ``--trace-time`` line of curl's (UTC) as (its time as printed, its text)."""
    stamped = []
    last = -1.0
    for line in stderr.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        hour, minute, second, micro, text = match.groups()
        at = datetime.datetime.combine(day, datetime.time(
            int(hour), int(minute), int(second), int(micro)), datetime.UTC).timestamp()
        if at < last - 43_200:  # past midnight
            at += 86_400
        last = at
        stamped.append((at, text))
    return stamped


# curl 7.x prints --trace-time as the monotonic clock plus a whole-second offset taken
# from time() once (tool_cb_dbg.c): its times are off the wall clock by the same
# fraction of a second for the whole process, frac(monotonic) - frac(wall) then.
# Which way this curl prints is found once, on a file:// transfer; the error of each
# invocation is the one that puts its lines between its start and its end.
_SCHEME: list[bool] = []  # [True]: this curl prints whole-second-offset times


def _fraction() -> float:
    return (time.time() - time.monotonic()) % 1.0


def _shifts_whole_seconds() -> bool:
    if not _SCHEME:
        before = time.time()
        done = subprocess.run(["curl", "-s", "-v", "--trace-time", "-o", "/dev/null",
                               "file:///dev/null"], capture_output=True, text=True,
                              env={**os.environ, "TZ": "UTC"}, stdin=subprocess.DEVNULL)
        after = time.time()
        stamps = _stamps(done.stderr, datetime.datetime.fromtimestamp(before,
                                                                      datetime.UTC).date())
        exact = bool(stamps) and before - 0.002 <= stamps[0][0] <= after + 0.002
        _SCHEME.append(not exact)
    return _SCHEME[0]


def _error(stamps: list[tuple[float, str]], started: float, ended: float) -> float:
    """How far curl's printed times are off the wall clock in this invocation."""
    if not stamps or not _shifts_whole_seconds():
        return 0.0
    fraction = _fraction()
    candidates = (-fraction, 1.0 - fraction)
    first, last = stamps[0][0], stamps[-1][0]

    def misfit(error: float) -> float:
        return max(0.0, started - (first - error)) + max(0.0, (last - error) - ended)

    return min(candidates, key=misfit)


def _transfers(stderr: str, day: datetime.date, started: float,
               ended: float) -> list[tuple[float, float, list[str]]]:
    """(started, ended, curl's connection words) for each transfer, from ``-v
    --trace-time``: a transfer ends at "left intact" or "Closing connection" after
    its request line."""
    stamps = _stamps(stderr, day)
    error = _error(stamps, started, ended)
    transfers = []
    start: float | None = None
    sent = False
    words: list[str] = []
    for printed, text in stamps:
        at = printed - error
        if start is None:
            start = at
        if text.startswith("* "):
            words.append(text[2:])
        if _REQUEST_LINE.match(text):
            sent = True
        elif sent and _END.match(text):
            transfers.append((start, at, words))
            start, sent, words = None, False, []
    return transfers


class _CurlDriver(Driver):
    def __init__(self, session: Session, base_url: str, tls: ClientTls | None) -> None:
        super().__init__()
        self.session, self.base_url, self.tls = session, base_url, tls

    def send(self, request: Request, planned_at: float) -> RequestRecord:
        return self.send_many([request], planned_at)[0]

    def send_many(self, requests: list[Request], planned_at: float) -> list[RequestRecord]:
        started = time.time()
        day = datetime.datetime.fromtimestamp(started, datetime.UTC).date()
        # SSLKEYLOGFILE: curl (OpenSSL) writes its TLS secrets there
        keylog = self.tls.curl_environment() if self.tls is not None else {}
        done = subprocess.run(_argv(requests, self.base_url,
                                    self.session.options.get("http_version") == "1.0",
                                    self.tls),
                              capture_output=True, text=True,
                              env={**os.environ, "TZ": "UTC", **keylog},
                              stdin=subprocess.DEVNULL)
        ended = time.time()
        self.closes.append(CloseRecord(self.session.name, ended, False))  # curl exited
        lines = [line.split(" ", 1)[1] for line in done.stdout.splitlines()
                 if line.startswith(MARK + " ")]
        times = _transfers(done.stderr, day, started, ended)
        records = []
        for i, request in enumerate(requests):
            # a request after another in the invocation was due when that one ended
            due = planned_at if i == 0 else records[-1].finished_at
            record = RequestRecord(request.ref, self.session.name, request.method,
                                   request.path, planned_at=due,
                                   sent_at=started, finished_at=ended, client=Curl.name)
            if i < len(times):
                record.sent_at, record.finished_at, words = times[i]
                if i == 0:
                    record.sent_at = started  # the process's start: before its first byte
                record.events = words
            if i < len(lines):
                self._read(record, lines[i])
            else:
                record.error = f"curl wrote nothing for this transfer (exit {done.returncode})"
            records.append(record)
        return records

    @staticmethod
    def _read(record: RequestRecord, line: str) -> None:
        head, _, tail = line.partition(" C=")
        _, code, connects, port, exitcode = head.split()
        fields = dict(part.split("=", 1) for part in ("C=" + tail).split("\t") if "=" in part)
        record.local_port = int(port) if port.isdigit() and port != "0" else None
        if exitcode != "0":
            record.error = f"curl: ({exitcode}) {fields.get('E', '').strip()}"
            record.error_cause = record.error
        if code != "000":
            record.status = int(code)
            record.response_connection = fields.get("C") or None
            record.response_keep_alive = fields.get("KA") or None
        record.new_connection = connects != "0"
        record.replaced_dropped = any("seems to be dead" in word for word in record.events)


KIND = Curl
