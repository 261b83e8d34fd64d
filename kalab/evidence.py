"""From a run folder (pcap, capture accounting, server and client records) to an `EngineRun`.

Every runtime ends here, and so does `kalab analyze`: the same analysis,
the same join of the client's beliefs with the wire, the same expectation
checks, so a netns run, a compose run and a pcap from elsewhere give the
same report.
"""

from __future__ import annotations

import gc
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kalab.analyzer import Analyzer, Finished, assemble, wire_story
from kalab.exitcodes import BY_VERDICT
from kalab.pcap import PcapError
from kalab.pcap_fast import FastSegmentReader
from kalab.report import (
    SCHEMA,
    Capture,
    Connection,
    EngineRun,
    ExpectationResult,
    HttpRequest,
    Records,
    Report,
    overall_verdict,
)
from kalab.spool import Spool
from kalab.tls import KeyLog

if TYPE_CHECKING:
    from collections.abc import Iterable

    # `kalab analyze` needs no scenario: it loads without yaml and the lab
    from kalab.scenario import Engine, Expectation, Scenario

# A request's first byte reaches the wire after the client read its clock before
# the call and before it read it again on return (one host clock in every
# runtime); the slack only covers the two clocks' rounding.
JOIN_SLACK = 0.002


@dataclass
class WireAnalysis:
    """What a capture file shows, and how much of the file could be read."""

    connections: list[Connection] | Records  # Records: read back from its spool
    requests: list[HttpRequest] | Records
    ports: set[int]  # the server ports followed: those asked for, else those that answered
    error: PcapError | None = None  # why the file ends early; what came before is above
    records: int = 0  # records read
    skipped: int = 0  # pure ACKs left out: they change no record
    snaplen: int | None = None  # the file's snap length
    truncated: int = 0  # records cut at the snap length
    headers_cut: int = 0  # of those, TCP frames cut inside their TCP header
    problems: list[str] = field(default_factory=list)  # what kept it from reading all
    close_linger: float | None = None  # the Analyzer's bounds (`Capture.close_linger`)
    idle_bound: float | None = None
    continued_after_idle: int = 0  # `Analyzer.continued_after_idle`
    after_close: int = 0  # `Analyzer.after_close`

    def cut_short(self) -> str | None:
        """The capture problem a file that could not be read to its end makes, if any."""
        if self.error is None:
            return None
        return (f"the capture file is cut short at byte {self.error.offset}: the report covers "
                f"the {self.records} record(s) before it ({self.error})")


def analyze_capture(path: Path, ports: set[int] | None = None,
                    background: bool = False, keylog: KeyLog | None = None,
                    spool: bool = False,
                    progress: Callable[[int, int], None] | None = None,
                    wire_stories: bool = False) -> WireAnalysis:
    """Analyse a pcap or pcapng file; an unreadable record ends the reading, not the report.

    The file is read by `FastSegmentReader` (the same segments as the reference
    `kalab.pcap.SegmentReader`, faster). ``background``: read it in a child process
    while this one analyses (see `FastSegmentReader.background_batches`); only for a
    caller without threads. ``keylog``: TLS secrets to decrypt HTTPS with
    (`kalab.tls.KeyLog`); without, its requests are inferred from its records.
    ``spool``: each record goes to a temporary file as its connection becomes final
    (`kalab.spool`), and the connections and requests are read back from it each time
    they are walked (`kalab.report.Records`): memory follows the connections open.
    ``progress`` is called after each batch of segments with the bytes of the file read
    so far and the connections whose records are final (`kalab.progress.ReadingProgress`).
    ``wire_stories``: each request's story from the wire alone, for a capture without the
    client's records (`kalab.analyzer.wire_story`).
    """
    analyzer = Analyzer(ports, keylog, wire_stories=wire_stories)
    reader = FastSegmentReader(path, ports, skip_acks=True)
    feed_all, finished = analyzer.feed_all, analyzer.finished
    final: Spool | list[Finished] = Spool() if spool else []  # the records as they come
    error = None
    # Hundreds of thousands of small objects and hardly a cycle among them: the
    # collector's passes would cost a fifth of the analysis and free nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            done = 0
            for batch in reader.background_batches() if background else reader.batches():
                feed_all(batch)
                now_final = finished()
                final.extend(now_final)
                if progress is not None:
                    done += len(now_final)
                    progress(reader.position, done)
        except PcapError as exc:
            error = exc
        analyzer.end()
        final.extend(finished())
        servers = analyzer.server_ports()
        connections, requests = final.records(analyzer.ports, servers) \
            if isinstance(final, Spool) else assemble(final, analyzer.ports, servers)
    finally:
        if collecting:
            gc.enable()
    return WireAnalysis(connections, requests, set(ports or servers), error,
                        reader.records, reader.skipped, reader.snaplen, reader.truncated,
                        reader.headers_cut, close_linger=analyzer.close_linger,
                        idle_bound=analyzer.idle_bound,
                        continued_after_idle=analyzer.continued_after_idle,
                        after_close=analyzer.after_close)


def capture_problems(analysis: WireAnalysis) -> list[str]:
    """What the file itself says against the analysis: cut short, or frames cut so short
    that their TCP header is not all there (a frame cut in its payload is no problem)."""
    problems = []
    if analysis.cut_short():
        problems.append(analysis.cut_short())
    if analysis.headers_cut:
        problems.append(f"{analysis.headers_cut} frame(s) were cut inside their TCP header "
                        f"(snap length {analysis.snaplen}): their segments could not be read")
    if analysis.continued_after_idle:
        problems.append(f"{analysis.continued_after_idle} connection(s) whose SYN was not seen "
                        f"go on a conversation that was quiet longer than the analysis' idle "
                        f"bound ({analysis.idle_bound:g} s) and was ended there: each is "
                        "reported as two connections")
    if analysis.after_close:
        problems.append(f"{analysis.after_close} connection(s) whose SYN was not seen came on "
                        f"the four-tuple of a connection that had closed and been quiet for "
                        f"the analysis' close linger ({analysis.close_linger:g} s): late "
                        "segments of it, or a new connection whose SYN the capture lacks; "
                        "each is reported as a connection of its own")
    return problems


# The key log a client writes in one engine's turn: 5 lines of under 250 bytes a TLS 1.3
# connection, 1 a TLS 1.2 one. Past this, the rest of the file is not read (and said so).
MAX_KEYLOG_BYTES = 32 << 20


@dataclass
class RunKeys:
    """The TLS secrets a client wrote in an engine's turn (``handoff.TLS_KEYLOG``): the
    file's name, its `KeyLog` (empty if the file was missing or unreadable) and what
    kept it from being read whole (``problem``), if anything."""

    name: str
    keylog: KeyLog
    problem: str | None = None


def run_keys(run_dir: Path) -> RunKeys:
    """The key log the client wrote in an engine's folder (`read_keys`)."""
    from kalab import handoff

    return read_keys(run_dir / handoff.TLS_KEYLOG, f"the client's key log {handoff.TLS_KEYLOG}")


def read_keys(path: Path, name: str) -> RunKeys:
    """Read a key log as hostile input: a regular file only (no link followed, no FIFO
    waited on), at most MAX_KEYLOG_BYTES, its lines judged one by one
    (`kalab.tls.KeyLog`: a bad line costs only itself). ``name`` says which key log in
    the problems (`RunKeys.problem`), which start with it."""
    keylog = KeyLog()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return RunKeys(name, keylog, f"{name} cannot be read ({exc.strerror or exc}): its "
                       "HTTPS connections cannot be decrypted")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return RunKeys(name, keylog, f"{name} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(MAX_KEYLOG_BYTES + 1)
    except OSError as exc:
        return RunKeys(name, keylog, f"{name} cannot be read ({exc.strerror or exc})")
    finally:
        os.close(fd)
    problem = None
    if len(data) > MAX_KEYLOG_BYTES:
        data = data[:data.rfind(b"\n", 0, MAX_KEYLOG_BYTES) + 1]
        problem = f"{name} is longer than {MAX_KEYLOG_BYTES >> 20} MiB: only its start is read"
    keylog.add(data)
    if not len(keylog) and problem is None:
        problem = f"{name} holds no TLS secrets"
    return RunKeys(name, keylog, problem)


def analyze_run_capture(path: Path, ports: set[int], keys: RunKeys | None) -> WireAnalysis:
    """An engine's capture, with the TLS secrets its client wrote (None: plain HTTP).

    The one place where a run's key log meets the analysis: the Analyzer decrypts each
    TLS connection whose secrets it holds and reads its HTTP as plain HTTP's. What the
    key log lacked is said among the problems (`tls_problems`)."""
    analysis = analyze_capture(path, ports, keylog=None if keys is None else keys.keylog)
    if keys is not None:
        if keys.problem is not None:
            analysis.problems.append(keys.problem)
        analysis.problems += tls_problems(analysis.connections, analysis.requests, keys)
    return analysis


def tls_problems(connections: list[Connection], requests: list[HttpRequest],
                 keys: RunKeys) -> list[str]:
    """With a key log: the TLS connections whose requests it could not decrypt (they are
    inferred from their records, and no claim about them can be judged), and those only
    partly decrypted. A connection that carried no application data (a readiness probe's
    handshake) is none of them."""
    inferred = {r.connection for r in requests if r.inferred}
    unread = [c for c in connections if c.id in inferred]
    partly = [c for c in connections if c.tls is not None and c.tls.undecrypted_records
              and c.tls.decryption in ("decrypting", "failed") and c not in unread]
    problems = []
    if unread:
        why = "; ".join(sorted({f"{c.tls.decryption}" + (f": {c.tls.notes[0]}"
                                                          if c.tls.notes else "")
                                for c in unread}))
        problems.append(f"{keys.name} did not decrypt the TLS of connection(s) "
                        f"{_ids([c.id for c in unread])} ({why}): their requests are only "
                        "inferred from their records")
    if partly:
        problems.append(f"the TLS of connection(s) {_ids([c.id for c in partly])} was only "
                        f"partly decrypted with {keys.name}: "
                        + "; ".join(sorted({n for c in partly for n in c.tls.notes[:1]})))
    return problems


# Connections a capture problem names at most; the others are counted (a capture that
# started late may have thousands open, and each problem is one line of the report).
IDS_NAMED = 20


def wire_problems(connections: Iterable[Connection] | Records) -> list[str]:
    """What the connections themselves say against the capture: SYNs or bytes it lacks."""
    problems = []
    late, holes = FirstNamed(), FirstNamed()
    # Once: a spooled capture's records are read from disk each walk, and its spool knows
    # what is looked at here without reading them (`Records.seen`).
    seen = connections.seen if isinstance(connections, Records) else None
    for number, syn_seen, gaps in ((c.id, c.syn_at is not None, c.gaps) for c in connections) \
            if seen is None else seen():
        if not syn_seen:
            late.add(number)
        if gaps:
            holes.add(number)
    if late.count:
        problems.append(f"no SYN seen for connection(s) {late}: the capture started late "
                        "or lost packets")
    if holes.count:
        problems.append(f"bytes missing from connection(s) {holes}: the capture lost "
                        "packets")
    return problems


class FirstNamed:
    """The first `IDS_NAMED` ids added, and how many were added: as a sentence names them,
    the first ones and a count of the rest."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.count = 0

    def add(self, value: int) -> None:
        self.count += 1
        if self.count <= IDS_NAMED:
            self.ids.append(value)

    def __str__(self) -> str:
        more = self.count - len(self.ids)
        return _ids(self.ids) + (f" and {more:,} more" if more else "")


def _ids(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


def join_client(requests: list[HttpRequest], connections: list[Connection],
                client_records: list[dict[str, Any]]) -> tuple[list[dict], list[str], list[str]]:
    """Name wire requests after the scenario's requests, using the client's records.

    A client request can stand on the wire more than once: urllib3 retried it.
    Its tries are the wire requests with its method and path sent while the
    call ran; the last is named after the scenario's request, earlier ones
    `REF~1`, `REF~2`. Returns the records that never reached the wire, the
    capture problems (a response the wire lacks) and the disagreements
    between belief and wire.
    """
    by_conn = {c.id: c for c in connections}
    unmatched = list(requests)
    missing: list[dict] = []
    problems: list[str] = []
    disagreements: list[str] = []
    # A connection whose port another session's records name is that session's: two
    # sessions sending the same request at once must not take each other's.
    owner = {rec["local_port"]: rec.get("session") for rec in client_records
             if rec.get("local_port")}
    for record in sorted(client_records, key=lambda r: r["sent_at"]):
        window = [r for r in unmatched
                  if record["sent_at"] - JOIN_SLACK <= r.sent_at <= record["finished_at"]
                  + JOIN_SLACK and r.method == record["method"]
                  and r.target.split("?")[0] == record["path"].split("?")[0]
                  and owner.get(_port(by_conn[r.connection]), record.get("session"))
                  == record.get("session")]
        port = record.get("local_port")
        on_port = [r for r in window if port and _port(by_conn[r.connection]) == port]
        # Within the call itself before its slack: a request sent right after this one
        # returned (no pause between them) is the next record's, not a try of this one.
        within = [r for r in (on_port or window) if r.sent_at <= record["finished_at"]]
        final = (within or on_port or window or [None])[-1]
        if final is None:
            if record.get("status") is not None:
                problems.append(f"the client got a response to request {record['ref']} but the "
                                "capture has no such request")
            missing.append(record)
            continue
        tries = [r for r in window if r.sent_at <= final.sent_at]
        if record.get("status") is None:
            tries = window  # every try failed: the last one is the request's
        for number, wire in enumerate(tries, 1):
            unmatched.remove(wire)
            wire.attempt = number
            wire.id = record["ref"] if number == len(tries) else f"{record['ref']}~{number}"
            wire.client = record
            wire.planned_at = record.get("planned_at")
            if wire.planned_at is not None and number == 1:
                wire.send_lag = round(wire.sent_at - wire.planned_at, 6)
            wire.story = _story(wire, by_conn[wire.connection], record)
        disagreements += _disagreements(tries[-1], by_conn[tries[-1].connection], record)
    for connection in connections:
        connection.requests = [r.id for r in requests if r.connection == connection.id]
    return missing, problems, disagreements


def _port(connection: Connection) -> int:
    return int(connection.client.rsplit(":", 1)[1])


def _beliefs(record: dict[str, Any]) -> tuple[bool | None, bool | None]:
    """(the client opened a connection, it replaced one the server dropped), as its kind
    read them from its own events (None: it cannot tell); from urllib3's log lines for
    records written before the client kinds."""
    if "new_connection" in record:
        return record.get("new_connection"), record.get("replaced_dropped")
    urllib3 = " ".join(record.get("urllib3", []))
    replaced = "Resetting dropped connection" in urllib3
    return "Starting new" in urllib3 or replaced, replaced


def _story(request: HttpRequest, connection: Connection, record: dict[str, Any]) -> str:
    story = wire_story(request, connection)
    # Only on the client's own word: a client that cannot tell (None) is not guessed for.
    if story == "new" and _beliefs(record)[1] and request.attempt == 1:
        return "replaced dropped connection"
    return story


def _disagreements(request: HttpRequest, connection: Connection,
                   record: dict[str, Any]) -> list[str]:
    ref, found = record["ref"], []
    if record.get("local_port") and record["local_port"] != _port(connection):
        found.append(f"request {ref}: the client used port {record['local_port']}, the wire "
                     f"shows it on #{connection.id} from port {_port(connection)}")
    believed_new = _beliefs(record)[0]
    # records written before the client kinds were urllib3's (its log lines, by that key)
    client = record.get("client") or ("urllib3" if "urllib3" in record else "the client")
    if believed_new and request.reused:
        found.append(f"request {ref}: {client} opened a connection, but the wire shows it "
                     f"reused #{connection.id}")
    if believed_new is False and not request.reused and request.attempt == 1:
        found.append(f"request {ref}: {client} believed it reused a connection, but the wire "
                     f"shows it opened #{connection.id}")
    if record.get("error") and request.status is not None:
        found.append(f"request {ref}: the client saw {record.get('error_cause') or record['error']}"
                     f" though the wire carries a {request.status} response")
    if record.get("status") is not None and request.status is not None \
            and record["status"] != request.status:
        found.append(f"request {ref}: the client saw status {record['status']}, the wire "
                     f"{request.status}")
    return found


def check(expectation: Expectation, requests: list[HttpRequest],
          connections: list[Connection]) -> ExpectationResult:
    """One expectation against the wire."""
    by_id = {r.id: r for r in requests}
    by_conn = {c.id: c for c in connections}

    def result(passed: bool, observed: str) -> ExpectationResult:
        return ExpectationResult(expectation.claim, expectation.kind, expectation.line,
                                 passed, observed)

    scenario_requests = [r for r in requests if r.client is not None]
    absent = [ref for ref in expectation.requests if ref != "each" and ref not in by_id]
    if absent:
        return result(False, f"request(s) {_ids(absent)} never reached the wire")
    kind = expectation.kind
    if kind == "connections":
        used = sorted({r.connection for r in scenario_requests})
        return result(len(used) == expectation.count,
                      f"{len(used)} connection(s): " + "; ".join(
                          f"#{c} carried {_ids(by_conn[c].requests)}" for c in used))
    if kind == "same_connection":
        conns = [by_id[ref].connection for ref in expectation.requests]
        placed = ", ".join(f"{ref} on #{c}" for ref, c in zip(expectation.requests, conns,
                                                              strict=True))
        return result(len(set(conns)) == 1, placed)
    if kind == "new_connection":
        depths = [(ref, by_id[ref]) for ref in expectation.requests]
        placed = ", ".join(f"{ref} on #{r.connection} at depth {r.depth}" for ref, r in depths)
        return result(all(r.depth == 1 for _, r in depths), placed)
    if kind == "story":
        request = by_id[expectation.requests[0]]
        return result(request.story == expectation.story,
                      f"{request.id}: {request.story or 'no client record'} on #"
                      f"{request.connection}")
    if kind == "status":
        checked = [by_id[ref] for ref in expectation.requests] or scenario_requests
        wrong = [r for r in checked if r.status != expectation.status]
        if not checked:
            return result(False, "no request reached the wire")
        return result(not wrong, "all as expected" if not wrong else "; ".join(
            f"{r.id}: {r.status if r.status is not None else 'no response'}" for r in wrong))
    # close
    if expectation.requests == ("each",):
        targets = sorted({r.connection for r in scenario_requests})
    else:
        targets = [by_id[expectation.requests[0]].connection]
    if not targets:
        return result(False, "no connection carried a request")
    verdicts, words = [], []
    for cid in targets:
        ok, text = _close_matches(by_conn[cid], expectation)
        verdicts.append(ok)
        words.append(text)
    return result(all(verdicts), "; ".join(words))


def _close_matches(conn: Connection, exp: Expectation) -> tuple[bool, str]:
    if conn.closed_by is None or conn.refused:
        return False, f"#{conn.id} was {'refused' if conn.refused else 'never closed'}"
    closer = conn.closed_by
    how = conn.closed_with.upper()
    idle = conn.idle_before_close
    text = f"#{conn.id}: first {how} from the {closer}"
    if idle is not None:
        text += f" {idle:.3f} s after its last response"
    ok = exp.by == "either" or closer == exp.by
    if exp.idle is not None:
        ok = ok and idle is not None and abs(idle - exp.idle) <= exp.tolerance
    if exp.within is not None:
        ok = ok and idle is not None and idle <= exp.within
    return ok, text


def verdict_of(expectations: list[ExpectationResult], problems: list[str]) -> str:
    if problems:
        return "inconclusive"
    if not expectations:
        return "observed"
    return "pass" if all(e.passed for e in expectations) else "fail"


def engine_run(run_dir: Path, scenario: Scenario, engine: Engine, pcap_name: str) -> EngineRun:
    """Build one engine's record from what its roles left in ``run_dir``."""
    from kalab import handoff
    from kalab.delayline import OVERFLOW
    from observer.capture import CaptureStats

    # The observer's own file, but a run folder graded may be anyone's: ValueError if not.
    stats = CaptureStats.from_dict(handoff.read_json(run_dir / handoff.CAPTURE_STATS))
    server = handoff.read_json(run_dir / handoff.SERVER_READY) \
        if (run_dir / handoff.SERVER_READY).exists() else {}
    client = handoff.read_json(run_dir / handoff.CLIENT_RECORDS) \
        if (run_dir / handoff.CLIENT_RECORDS).exists() else {"requests": []}
    keys = run_keys(run_dir) if scenario.tls is not None else None
    analysis = analyze_run_capture(run_dir / handoff.CAPTURE_PCAP, {scenario.port}, keys)
    connections, requests = analysis.connections, analysis.requests
    problems = list(stats.problems) + wire_problems(connections) \
        + analysis.problems + capture_problems(analysis)
    if not client.get("requests") and scenario.requests and stats.complete:
        problems.append("the client role left no records")  # cut short, it may have none
    missing, join_problems, disagreements = join_client(requests, connections,
                                                        client.get("requests", []))
    problems += join_problems
    impairments = stats.impairments + client.get("impairments", [])
    problems += [f"the link lost packets it was not told to: {line}" for line in impairments
                 if OVERFLOW in line]
    capture = Capture(pcap=pcap_name, interface=stats.interface, filter=stats.filter,
                      started_at=stats.started_at, stopped_at=stats.stopped_at,
                      packets=stats.packets, duplicates_dropped=stats.duplicates_dropped,
                      kernel_drops=stats.kernel_drops, problems=problems,
                      impairments=impairments, complete=stats.complete,
                      snaplen=analysis.snaplen, truncated_frames=analysis.truncated,
                      close_linger=analysis.close_linger, idle_bound=analysis.idle_bound)
    first_request = min((r["sent_at"] for r in client.get("requests", [])), default=None)
    if first_request is not None and capture.started_at > first_request:
        problems.append("the capture started after the first request was sent")
    # A capture cut short cannot refute anything: what it lacks may be what was claimed.
    results = [check(e, requests, connections) for e in engine.expect] \
        if capture.complete else []
    verdict = verdict_of(results, problems) if capture.complete else "interrupted"
    return EngineRun(
        engine=engine.name, kind=engine.kind, description=engine.describe(),
        version=server.get("version"), listen=server.get("listen"),
        options=_options(engine), capture=capture, connections=connections,
        requests=requests, client_errors=missing, disagreements=disagreements,
        engine_log=engine_log(run_dir), expectations=results, verdict=verdict)


# Where an engine writes its trouble, when its server.json does not say (its kind's
# `logs`, `kalab.kinds.EngineKind`): its standard output and error.
ENGINE_LOGS = ("server.log",)
# The engines' own words for trouble: error log levels in brackets (nginx, gunicorn,
# Apache's module:level, HAProxy), uvicorn's plain words at a line's start.
TROUBLE = re.compile(r"\[(error|warn|crit|alert|emerg|ERROR|WARNING|CRITICAL|ALERT)\]"
                     r"|\[[a-z_]*:(error|warn|crit|alert|emerg)\]|^(ERROR|WARNING|CRITICAL):")


def engine_log(run_dir: Path, limit: int = 50) -> list[str]:
    """The error and warning lines the engine wrote in this run (the first ``limit``)."""
    from kalab import handoff

    lines: list[str] = []
    names = ENGINE_LOGS
    try:
        names = tuple(handoff.read_json(run_dir / handoff.SERVER_READY).get("logs") or names)
    except (OSError, ValueError):
        pass
    for name in names:
        if "/" in name or name.startswith("."):  # a file of the engine's folder only
            continue
        try:
            text = (run_dir / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        lines += [line.strip() for line in text.splitlines() if TROUBLE.search(line)]
    return lines[:limit]


def build_report(results: Path, scenario: Scenario, engines: list[Engine], runtime: str,
                 started_at: float, label: str | None = None,
                 interrupted: str | None = None) -> Report:
    """The run's report from each engine's folder under ``results``.

    ``interrupted``: the phase (`kalab.handoff.PHASES`) where a signal cut the run
    short; the report then says so (`mark_interrupted`). An engine without a
    capture is listed among those that did not run, never left out in silence.
    """
    from kalab import handoff
    from kalab.target import server_of

    runs = []
    for engine in engines:
        folder = handoff.engine_dir(results, engine)
        if not (folder / handoff.CAPTURE_STATS).exists():
            continue
        run = engine_run(folder, scenario, engine, f"{engine.name}/{handoff.CAPTURE_PCAP}")
        failed = handoff.failures(folder)
        if failed and run.verdict != "interrupted":
            run.capture.problems.extend(f"a role failed: {reason}" for reason in failed)
            run.verdict = "inconclusive"
        runs.append(run)
    verdict = overall_verdict([r.verdict for r in runs]) if runs else "inconclusive"
    ran = {r.engine for r in runs}
    report = Report(schema=SCHEMA, scenario=label or scenario.file, name=scenario.name,
                    runtime=runtime, started_at=started_at, finished_at=time.time(), runs=runs,
                    verdict=verdict, exit_code=BY_VERDICT[verdict],
                    engines_not_run=[e.name for e in engines if e.name not in ran],
                    student=scenario.student, params=dict(scenario.params),
                    target=server_of(scenario))
    if interrupted is not None:
        mark_interrupted(report, interrupted)
    return report


def mark_interrupted(report: Report, phase: str) -> None:
    """Say in ``report`` that its run was cut short at ``phase``: its own verdict and exit
    code, whatever the engines that did finish showed."""
    report.complete = False
    report.phase = phase
    report.verdict = "interrupted"
    report.exit_code = BY_VERDICT["interrupted"]


def _options(engine: Engine) -> dict[str, Any]:
    """The engine's settings that apply to its kind, as the scenario (or its default) set them."""
    from kalab.scenario import ENGINE_OPTIONS

    if engine.kind not in ENGINE_OPTIONS:  # a target's stand-in: its options are the target
        return dict(engine.options)
    options = {key: getattr(engine, key) for key in sorted(ENGINE_OPTIONS[engine.kind])}
    if engine.app:
        options["app"] = engine.app
    return options
