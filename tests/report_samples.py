"""Reports built by hand for the renderers' tests: every shape a ladder can take.

`sample_report()` has two engines: one whose server closes each connection
right after its response (two connections, the client's FIN later), and
one that keeps a connection alive across two requests, then goes quiet for
20 s (past the ladder's cut), answers a third request with a 500 and is
reset by the client, with a refused SYN and a failed expectation.
`hostile(report)` fills every text that could come from the wire or a
scenario with markup, quotes and control characters.
"""

from __future__ import annotations

import copy

from kalab.report import (
    SCHEMA,
    Capture,
    Connection,
    EngineRun,
    ExpectationResult,
    HttpRequest,
    Report,
)

T0 = 1_800_000_000.0
SERVER = "10.213.0.1:5000"


def request(ref: str, conn: int, depth: int, sent: float, status: int | None = 200,
            connection: str | None = "keep-alive", timeout: float | None = None) -> HttpRequest:
    answered = status is not None
    return HttpRequest(
        id=ref, connection=conn, depth=depth, reused=depth > 1, method="GET",
        target="/keep-alive", version="HTTP/1.1", sent_at=T0 + sent,
        request_connection="keep-alive", response_at=T0 + sent + 0.002 if answered else None,
        response_end_at=T0 + sent + 0.003 if answered else None, status=status,
        response_version="HTTP/1.1" if answered else None,
        response_connection=connection if answered else None,
        response_keep_alive=f"timeout={timeout:g}" if timeout else None,
        advertised_timeout=timeout,
        client={"ref": ref, "local_port": 40000 + conn, "status": status, "urllib3": []})


def connection(cid: int, refs: list[str], syn: float, last: float, fin_by: str | None,
               fin: float | None, second_fin: float | None, *, rst_by: str | None = None,
               rst: float | None = None, timeout: float | None = None,
               refused: bool = False) -> Connection:
    # Closed by whichever of the first FIN and the first RST came first (refused: the RST).
    ended = fin if fin is not None and (rst is None or fin <= rst) else rst
    closed_by = fin_by if ended is not None and ended == fin else rst_by
    closed_with = None if closed_by is None else "fin" if ended == fin else "rst"
    return Connection(
        id=cid, client=f"10.213.0.2:{40000 + cid}", server=SERVER, syn_at=T0 + syn,
        syn_retransmits=0, established_at=None if refused else T0 + syn + 0.0001,
        refused=refused, requests=refs,
        last_response_at=None if not refs else T0 + last, last_data_at=None if not refs
        else T0 + last, first_fin_by=fin_by, first_fin_at=None if fin is None else T0 + fin,
        second_fin_at=None if second_fin is None else T0 + second_fin, rst_by=rst_by,
        rst_at=None if rst is None else T0 + rst, closed_by=closed_by, closed_with=closed_with,
        idle_before_close=None if ended is None or not refs else round(ended - last, 6),
        advertised_timeout=timeout, probe=not refs, complete=True, gaps=0)


def expectation(claim: str, line: int, passed: bool, observed: str,
                kind: str = "close") -> ExpectationResult:
    return ExpectationResult(claim=claim, kind=kind, line=line, passed=passed,
                             observed=observed)


def capture(pcap: str) -> Capture:
    return Capture(pcap=pcap, interface="test0", filter="tcp port 5000",
                   started_at=T0 - 1, stopped_at=T0 + 40, packets=60, kernel_drops=0)


def sample_report() -> Report:
    closes = EngineRun(
        engine="closes", kind="werkzeug", description="werkzeug (threaded)",
        version="Werkzeug 3.1", listen=SERVER, options={"threaded": True},
        capture=capture("closes/capture.pcap"),
        connections=[
            connection(1, ["1"], 0.0, 0.0031, "server", 0.0131, 3.0, timeout=5.0),
            connection(2, ["2"], 3.0, 3.0041, "server", 3.0141, 6.0, timeout=5.0)],
        requests=[request("1", 1, 1, 0.0005, connection="keep-alive, close", timeout=5.0),
                  request("2", 2, 1, 3.0011, connection="keep-alive, close", timeout=5.0)],
        expectations=[expectation("each request opens its own connection", 10, True,
                                  "1 on #1 at depth 1, 2 on #2 at depth 1", "new_connection")],
        verdict="pass")
    keeps = EngineRun(
        engine="keeps", kind="gunicorn", description="gunicorn gthread, keep-alive 30s",
        version="gunicorn 23", listen=SERVER, options={"worker": "gthread", "keep_alive": 30},
        capture=capture("keeps/capture.pcap"),
        connections=[
            connection(1, ["1", "2", "3"], 0.0, 24.0031, None, None, None,
                       rst_by="client", rst=25.0),
            connection(2, [], 26.0, 26.0, None, None, None, rst_by="server", rst=26.0002,
                       refused=True)],
        requests=[request("1", 1, 1, 0.0005), request("2", 1, 2, 3.0),
                  request("3", 1, 3, 24.0, status=500)],
        expectations=[
            expectation("requests 1-3 share one connection", 20, True, "1, 2, 3 on #1",
                        "same_connection"),
            expectation("the server closes it after 30 s idle", 21, False,
                        "#1 was reset by the client 0.997 s after its last response")],
        verdict="fail")
    return Report(schema=SCHEMA, scenario="samples.yaml", name="samples", runtime="netns",
                  started_at=T0 - 2, finished_at=T0 + 42, runs=[closes, keeps],
                  verdict="fail", exit_code=1)


MARKER = "kalab-pwned"
# Each would set a marker on <html> if it ever ran; each tries another way out of its context.
ATTACKS = [
    f"<script>document.documentElement.setAttribute('{MARKER}','script')</script>",
    f"\"><img src=x onerror=\"document.documentElement.setAttribute('{MARKER}','img')\">",
    f"'><svg onload=\"document.documentElement.setAttribute('{MARKER}','svg')\"></svg>",
    f"</title></text></svg><script>document.documentElement.setAttribute('{MARKER}','t')"
    "</script>",
    "| cell | `tick` *star* [link](javascript:alert(1)) ~~del~~ &amp; &lt;b&gt;",
]
CONTROL = "a\x00b\x1b[31mred\r\nnext\x7f\x85\u202eevil\u2028end"


def hostile(report: Report) -> Report:
    """A copy of ``report`` whose wire and scenario texts are all attacks."""
    report = copy.deepcopy(report)
    report.name = ATTACKS[3] + CONTROL
    report.scenario = ATTACKS[1]
    for run in report.runs:
        run.engine = run.engine + ATTACKS[2]
        run.description = ATTACKS[4] + CONTROL
        run.version = ATTACKS[0]
        for i, req in enumerate(run.requests):
            req.method = "GET" + CONTROL
            req.target = "/" + ATTACKS[i % len(ATTACKS)] + CONTROL
            req.response_connection = ATTACKS[(i + 1) % len(ATTACKS)] + CONTROL
            req.response_keep_alive = ATTACKS[(i + 2) % len(ATTACKS)]
            req.id = f"{req.id}{ATTACKS[4][:6]}"
        for conn in run.connections:
            conn.requests = [f"{ref}{ATTACKS[4][:6]}" for ref in conn.requests]
        for e in run.expectations:
            e.claim = ATTACKS[0] + CONTROL
            e.observed = ATTACKS[1] + "|" + CONTROL
        run.disagreements = [ATTACKS[2]]
        run.capture.problems = [] if run.verdict != "fail" else [ATTACKS[3]]
    return report
