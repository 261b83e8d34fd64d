"""The terminal summary a student reads: made from the report record alone."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from itertools import islice

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from kalab.render.text import visible
from kalab.report import (
    Capture,
    Closing,
    Connection,
    EngineRun,
    HttpRequest,
    Records,
    Report,
    Sweep,
)


def esc(text: object) -> str:
    """Wire or scenario text for rich markup: controls shown (`visible`), markup escaped."""
    return escape(visible(text))


def _t(value: float | None, zero: float) -> str:
    return "-" if value is None else f"{value - zero:7.3f}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def time_zero(run: EngineRun) -> float:
    """The engine's time origin: its first SYN (or request); every shown time is from it."""
    connections, requests = run.connections, run.requests
    if isinstance(connections, Records) and connections.origin is not None:
        times = [connections.origin()]  # a big capture's, kept by its spool: no walk
    else:
        times = [c.syn_at or c.established_at for c in connections if not c.probe]
    # Read back from disk, requests come in the order sent: the first is the earliest.
    times += [r.sent_at for r in (islice(requests, 1) if isinstance(requests, Records)
                                  else requests)]
    times = [t for t in times if t is not None]
    return min(times) if times else (run.capture.started_at or 0.0)


def connection_story(conn: Connection, requests: Mapping[str, HttpRequest] | None = None
                     ) -> str:
    """One line: who closed it, after how long idle (and through how many TCP keep-alive
    probes), against what its last exchange said: a close announced, else the Keep-Alive
    timeout of its last response; and the Keep-Alive max= countdown. ``requests`` (the
    run's, by id) lets it quote the headers."""
    what = f"#{conn.id} ({conn.client}{', ' + tls_name(conn) if conn.tls else ''})"
    if conn.refused:
        return f"{what}: refused (RST to the SYN: nothing listened yet)"
    what += f" carried {', '.join(conn.requests)}" if conn.requests else " carried no request"
    if conn.closed_by is None:
        closed = "still open when the capture ended"
    else:
        how = "reset" if conn.closed_with == Closing.RST else "closed"
        closed = f"{how} by the {conn.closed_by}"
        if conn.idle_before_close is not None:
            closed += f" {conn.idle_before_close:.3f} s after the last data"
    if conn.keepalive_probes:
        # Said beside the idle time: the probes are not data and did not reset it.
        probes = conn.keepalive_probes
        closed += (f" ({probes} TCP keep-alive probe{'s' if probes != 1 else ''} on it, "
                   "not data)")
    mine = [requests[ref] for ref in conn.requests if ref in requests] if requests else []
    return (f"{what}: {closed}{_tls_close(conn)}{_what_it_said(conn, mine)}"
            f"{_countdown(conn, mine)}{_inferred(mine)}{_raced(mine)}")


def _raced(requests: list[HttpRequest]) -> str:
    """The requests sent after the server's FIN: the stale pooled connection's race."""
    raced = [r.id for r in requests if r.story == "raced the FIN"]
    if not raced:
        return ""
    who = "it" if len(raced) == 1 else "they"
    return (f"; {', '.join(raced)} left after the server's FIN: {who} raced the close "
            "(a pooled connection gone stale)")


def tls_name(conn: Connection) -> str:
    """A TLS connection's mark: `TLS 1.3`, or `TLS` before its version was seen."""
    return conn.tls.version or "TLS" if conn.tls else ""


def _tls_close(conn: Connection) -> str:
    """Who sent TLS's close_notify, against the connection's first FIN."""
    tls = conn.tls
    if tls is None or conn.closed_by is None:
        return ""
    if tls.close_notify == "none":
        return ", no close_notify"
    if tls.close_notify != "seen":
        return ", close_notify unknown (its alerts were not read)"
    said = f", close_notify by the {tls.close_notify_by}"
    lead = tls.close_notify_before_fin
    if lead is not None:
        said += f" {abs(lead) * 1000:.1f} ms {'before' if lead >= 0 else 'after'} the first FIN"
    return said


def _inferred(requests: list[HttpRequest]) -> str:
    if any(r.inferred for r in requests):
        return "; its requests are inferred from its TLS records (not decrypted)"
    return ""


def request_text(request: HttpRequest) -> str:
    """A request as the tables and ladders show it: its method and target, or for one
    inferred from TLS records, that it was."""
    if request.inferred:
        return "(inferred from TLS records)"
    return f"{request.method} {request.target}"


def _what_it_said(conn: Connection, requests: list[HttpRequest]) -> str:
    """The end of a story: the close as announced, or the idle time against the timeout."""
    timeout = conn.advertised_timeout
    if conn.closed_as_announced:
        by = conn.close_announced_by
        answered = [r for r in requests if r.status is not None]
        if by == "server" and answered:
            last = answered[-1]
            quoted = f"Connection: {last.response_connection}" if last.response_connection \
                else f"{last.response_version} without keep-alive"
        elif by == "client" and requests:
            last = requests[-1]
            quoted = f"Connection: {last.request_connection}" if last.request_connection \
                else f"{last.version} without keep-alive"
        else:
            quoted = "Connection: close"
        said = f", as its last {'response' if by == 'server' else 'request'} announced " \
            f"({quoted})"
        if timeout is not None:
            said += f"; it also advertised Keep-Alive: timeout={timeout:g}"
        return said
    if timeout is None and conn.truncated and conn.closed_as_announced is None:
        return "; the capture cut what its last exchange said"
    if timeout is None:
        return "; no Keep-Alive timeout was advertised"
    said = f"; it advertised Keep-Alive: timeout={timeout:g}"
    gap = conn.enforced_minus_advertised
    if gap is None:
        return said
    if abs(gap) < 0.05:
        return f"{said}, and kept to it"
    return f"{said}, and closed {abs(gap):.3f} s {'sooner' if gap < 0 else 'later'} than it said"


def _countdown(conn: Connection, requests: list[HttpRequest]) -> str:
    """Keep-Alive max= as its responses counted it down, and whether it held."""
    if conn.keep_alive_max_kept is None:
        return ""
    counted = ", ".join(str(r.keep_alive_max) for r in requests if r.keep_alive_max is not None)
    held = "held" if conn.keep_alive_max_kept else "was not kept (more requests were answered)"
    return f"; Keep-Alive max={counted or '...'} {held}"


def requests_by_id(run: EngineRun, connections: Iterable[Connection] | None = None
                   ) -> dict[str, HttpRequest]:
    """The run's requests by id, for `connection_story`: only those of ``connections``
    when given (a big capture's requests are read from disk, not held)."""
    if connections is None:
        return {r.id: r for r in run.requests}
    connections = list(connections)
    if isinstance(run.requests, Records) and run.requests.at is not None:
        # Read back from disk, each alone: request wN is the Nth sent (`assemble`).
        found = {}
        for ref in (ref for c in connections for ref in c.requests):
            number = int(ref[1:]) if ref[:1] == "w" and ref[1:].isdigit() else 0
            request = run.requests[number - 1] if 0 < number <= len(run.requests) else None
            if request is None or request.id != ref:
                break  # not numbered so: walk them
            found[ref] = request
        else:
            return found
    wanted = {c.id for c in connections}
    return {r.id: r for r in run.requests if r.connection in wanted}


# Rows of each table, and connection stories, the terminal shows of one engine run; the
# rest are counted (`kalab analyze --json` and report.json have them all).
ROWS_SHOWN = 200


def truncation(capture: Capture, connections: list[Connection]) -> str | None:
    """The sentence a capture with frames cut at its snap length gets: nothing was lost,
    and what is not known."""
    if not capture.truncated_frames:
        return None
    from kalab.evidence import FirstNamed

    cut = FirstNamed()  # a capture with a short snap length may have thousands
    for c in connections:
        if c.truncated:
            cut.add(c.id)
    return (f"{capture.truncated_frames} frame(s) were cut at the snap length "
            f"({capture.snaplen if capture.snaplen is not None else 'unknown'} bytes): no "
            f"packet was lost; requests and responses are counted from the first lines kept, "
            f"and what the cut hid is marked unknown" + (
                f"; connection(s) {cut} had segments cut" if cut.count else ""))


def interruption(report: Report) -> str | None:
    """The sentence an incomplete run opens with: where it was cut short, what did not run."""
    if report.complete:
        return None
    words = f"The run was interrupted during {report.phase or 'an unknown phase'}"
    cut = [run.engine for run in report.runs if run.verdict == "interrupted"]
    if cut:
        words += f"; cut short: {', '.join(cut)} (its expectations were not checked)"
    if report.engines_not_run:
        words += f"; did not run: {', '.join(report.engines_not_run)}"
    return words + ". Nothing is concluded from what the run did not capture."


def probe_story(report: Report) -> list[str]:
    """What `kalab probe` measured, a line a finding."""
    probe = report.probe
    if probe is None:
        return []
    said = ", ".join(f"{name} {value}" for name, value in (
        ("Connection:", probe.advertised_connection),
        ("Keep-Alive:", probe.advertised_keep_alive)) if value) or "no keep-alive header"
    lines = [f"probe of {probe.url}: status {probe.status}"
             + (f", server {probe.server}" if probe.server else ""),
             f"  it advertised: {said}"]
    if probe.idle_timeout is None:
        lines.append(f"  enforced idle timeout: not found ({probe.idle_found_by})")
    else:
        how = f", with a {probe.closed_with.upper()}" if probe.closed_with in ("fin", "rst") \
            else ", silently (nothing reached the client)" if probe.closed_with else ""
        lines.append(f"  enforced idle timeout: {probe.idle_timeout:.3f} s "
                     f"({probe.idle_found_by}{how})")
        if probe.advertised_timeout is not None:
            gap = probe.idle_timeout - probe.advertised_timeout
            lines.append(f"  against the advertised timeout={probe.advertised_timeout:g}: "
                         f"{'kept to it' if abs(gap) < 0.05 else f'{abs(gap):.3f} s '}"
                         f"{'' if abs(gap) < 0.05 else 'sooner' if gap < 0 else 'later'}")
    if probe.requests_per_connection is not None:
        lines.append(f"  requests on one connection: {probe.requests_per_connection}"
                     + (" (the server's limit: it ended the connection)"
                        if probe.requests_limited else " (no limit seen)"))
    lines += [f"  note: {note}" for note in probe.notes]
    lines.append(f"  {probe.requests_sent} request(s) in {probe.seconds:.1f} s")
    return lines


def requests_table(run: EngineRun, zero: float, rows: int | None = None) -> Table:
    """The requests table: also the one report.html and report.md show. ``rows``: at
    most so many, and a caption counting the others."""
    requests = Table(title="Requests -> connections", title_justify="left")
    for col in ("req", "sent", "request", "conn", "depth", "status",
                "response Connection", "Keep-Alive", "story", "client saw"):
        requests.add_column(col)
    for r in islice(run.requests, rows):
        client = r.client or {}
        if r.attempt > 1 or r.id.count("~"):
            saw = f"try {r.attempt}"
        else:
            saw = ""
        error = client.get("error_cause") or client.get("error")
        if error and r.status is None and "~" not in r.id:
            saw = f"{saw}; {error}".lstrip("; ")
        elif client.get("local_port") and "~" not in r.id:
            saw = f"{saw}; port {client['local_port']}".lstrip("; ")
        # Text, not markup: a target like `/a[/]b` comes from the wire.
        requests.add_row(*(Text(visible(cell)) for cell in (
            r.id, _t(r.sent_at, zero), request_text(r), f"#{r.connection}",
            f"{r.depth}{' (reused)' if r.reused else ''}", str(r.status or "-"),
            _header(r, "response_connection"), _header(r, "response_keep_alive"),
            r.story or "-", saw)))
    _more(requests, len(run.requests), rows, "more requests")
    return requests


def _more(table: Table, count: int, rows: int | None, what: str) -> None:
    if rows is not None and count > rows:
        table.caption = f"... and {count - rows:,} {what}: the JSON report has them all"
        table.caption_justify = "left"


def _header(request: HttpRequest, name: str) -> str:
    """A response header's cell: its value; "?" when the capture cut it, "-" when none."""
    value = getattr(request, name)
    if value:
        return value
    return "?" if name in (request.unknown or ()) else "-"


def connections_table(run: EngineRun, zero: float, rows: int | None = None) -> Table:
    """The connections table: also the one report.html and report.md show. ``rows``: at
    most so many, and a caption counting the others."""
    conns = Table(title="Connections -> who closed", title_justify="left")
    for col in ("conn", "client", "SYN", "requests", "closed by", "at",
                "idle before close", "advertised timeout", "Zeek"):
        conns.add_column(col)
    for c in islice(run.connections, rows):
        label = "probe" if c.probe and not c.refused else ", ".join(c.requests) or "-"
        closer = c.closed_by or "open"
        if c.closed_with == Closing.RST:
            closer += " (RST)"
        conns.add_row(*(Text(visible(cell)) for cell in (
            f"#{c.id}{' ' + tls_name(c) if c.tls else ''}", c.client, _t(c.syn_at, zero),
            label, closer,
            _t(c.first_fin_at or c.rst_at, zero), _secs(c.idle_before_close),
            "-" if c.advertised_timeout is None else f"{c.advertised_timeout:g} s",
            f"{c.conn_state} {c.history}" if c.conn_state else "-")))
    _more(conns, len(run.connections), rows, "more connections")
    return conns


SWEEP_COLUMNS = {"new": "new", "reused": "reused", "replaced dropped connection": "replaced",
                 "raced the FIN": "raced FIN", "unanswered": "unanswered",
                 "not sent": "not sent", "error": "error", "retried": "retried"}


def sweep_tables(sweep: Sweep) -> list[Table]:
    """Per engine and counted request: each point's share of every outcome."""
    tables = []
    for engine in dict.fromkeys(p.engine for p in sweep.points):
        for request in sweep.requests:
            points = [p for p in sweep.points if p.engine == engine and p.request == request]
            client = points[0].client if points else "?"
            table = Table(title=f"{esc(engine)}, request {esc(request)} ({esc(client)}): "
                          f"share of the trials", title_justify="left")
            table.add_column(esc(sweep.param), justify="right")
            table.add_column("trials", justify="right")
            for name in SWEEP_COLUMNS.values():
                table.add_column(name, justify="right")
            for point in points:
                table.add_row(f"{point.value:g}", str(point.trials), *(
                    f"{point.shares[key]:.0%}" if point.shares.get(key) else "-"
                    for key in SWEEP_COLUMNS))
            tables.append(table)
    return tables


def sweep_heading(sweep: Sweep) -> str:
    values = sweep.values
    return (f"sweep of {sweep.param}: {len(values)} points from {values[0]:g} to "
            f"{values[-1]:g}, {sweep.trials} trial(s) each, {sweep.at_once} at once")


def sweep_notes(sweep: Sweep) -> list[str]:
    """What the tables do not say: trials run, each engine's timeouts, trials in doubt."""
    notes = [f"{len(sweep.trial_reports)} of {sweep.planned_trials} trials ran; each one's "
             "own report: trials/POINT-TRIAL/report.json"]
    for mark in sweep.engines:
        said = "none" if mark.advertised_timeout is None else f"{mark.advertised_timeout:g} s"
        kept = "never closed an idle connection itself" if mark.enforced_timeout is None \
            else (f"closed idle connections after {mark.enforced_timeout:.3f} s (median; "
                  f"{mark.enforced_low:.3f} to {mark.enforced_high:.3f} s)")
        notes.append(f"{mark.engine}: advertised Keep-Alive timeout {said}; {kept}")
    notes += [f"trial {doubt} is not to be trusted (see its report)"
              for doubt in sweep.doubtful_trials]
    return notes


def render_sweep(sweep: Sweep, console: Console) -> None:
    console.rule(f"[bold]{esc(sweep_heading(sweep))}[/]")
    for table in sweep_tables(sweep):
        console.print(table)
    for note in sweep_notes(sweep):
        console.print(f"  {esc(note)}", soft_wrap=True)
    for e in sweep.expectations:
        mark = Text("PASS", style="bold green") if e.passed else Text("FAIL", style="bold red")
        console.print(mark, Text(f" {visible(e.claim)}"))
        console.print(Text(f"       wire: {visible(e.observed)}",
                           style="dim" if e.passed else ""), soft_wrap=True)


def as_text(report: Report) -> str:
    """The summary as plain text, for summary.txt beside the report."""
    console = Console(file=io.StringIO(), width=120, color_system=None, force_terminal=False)
    render(report, console)
    return console.file.getvalue()


def make_console(stderr: bool = False) -> Console:
    """A console for the summary: piped output gets room for the tables, no colour codes."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=120)
    return console


def capture_line(run: EngineRun) -> str:
    """Whose server, where, and how it was captured: the line under each engine's title
    (raw: the caller makes it safe to show, `esc` or `visible`)."""
    cap = run.capture
    drops = "unknown" if cap.kernel_drops is None else str(cap.kernel_drops)
    if run.kind == "target":  # `kalab run --target`: nothing of the lab's served it
        server = f"target {run.listen or '?'}, a server the lab did not start"
    else:
        server = f"server {run.version or '?'} on {run.listen or '?'}"
    return (f"{server}; captured {cap.packets} packets on {cap.interface or '?'} "
            f"(kernel drops: {drops}); times in seconds from the first SYN")


def render(report: Report, console: Console | None = None) -> None:
    console = console or make_console()
    cut_short = interruption(report)
    for run in report.runs:
        zero = time_zero(run)
        console.rule(f"[bold]{esc(run.engine)}[/]: {esc(run.description)}")
        cap = run.capture
        console.print(esc(capture_line(run)), soft_wrap=True)
        console.print(requests_table(run, zero, ROWS_SHOWN))
        console.print(connections_table(run, zero, ROWS_SHOWN))
        shown = list(islice(run.connections, ROWS_SHOWN))
        by_id = requests_by_id(run, shown)
        for c in shown:
            if not c.probe:
                console.print(f"  {esc(connection_story(c, by_id))}", soft_wrap=True)
        if len(run.connections) > ROWS_SHOWN:
            console.print(f"  ... and {len(run.connections) - ROWS_SHOWN:,} more connections: "
                          "the JSON report has every record", soft_wrap=True)
        for disagreement in run.disagreements:
            console.print(f"  [yellow]belief vs wire:[/] {esc(disagreement)}", soft_wrap=True)
        for impairment in cap.impairments:
            console.print(f"  link impaired: {esc(impairment)}", soft_wrap=True)
        for line in run.engine_log:
            console.print(f"  [yellow]the engine logged:[/] {esc(line)}", soft_wrap=True)
        for error in run.client_errors:
            console.print(f"  [yellow]request {esc(error['ref'])} never reached the wire: "
                          f"{esc(error.get('error_cause') or error.get('error') or '')}[/]")
        cut = truncation(cap, run.connections)
        if cut:
            console.print(f"  frames cut: {esc(cut)}", soft_wrap=True)
        for problem in cap.problems:
            console.print(f"  [bold yellow]capture problem:[/] {esc(problem)}")
        for e in run.expectations:
            mark = Text("PASS", style="bold green") if e.passed else \
                Text("FAIL", style="bold red")
            console.print(mark, Text(f" {visible(e.claim)}"))
            console.print(Text(f"       wire: {visible(e.observed)}",
                               style="dim" if e.passed else ""), soft_wrap=True)
        if run.verdict == "interrupted":
            console.print("  [bold yellow]cut short:[/] its expectations were not checked")
        console.print(f"verdict for {esc(run.engine)}: [bold]{run.verdict}[/]")
    for line in probe_story(report):
        console.print(esc(line), soft_wrap=True)
    if report.sweep is not None:
        render_sweep(report.sweep, console)
    refuted = [(run.engine, e) for run in report.runs for e in run.expectations if not e.passed]
    if report.sweep is not None:
        refuted += [("sweep", e) for e in report.sweep.expectations if not e.passed]
    if refuted:
        console.print("[bold red]The wire refuted:[/]")
        for engine, e in refuted:
            where = f"{report.scenario}:{e.line}" if report.scenario else f"line {e.line}"
            console.print(f"  [red]{esc(engine)}: {esc(e.claim)}[/] ({esc(where)})",
                          soft_wrap=True)
    if cut_short:
        console.print(f"[bold yellow]{esc(cut_short)}[/]", soft_wrap=True)
    style = {"pass": "green", "fail": "red", "inconclusive": "yellow",
             "interrupted": "yellow"}.get(report.verdict, "")
    console.rule(f"[bold {style}]{report.verdict.upper()}[/] (exit {report.exit_code})")
