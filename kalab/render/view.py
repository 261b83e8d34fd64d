"""What every rendered report shows, worked out once from the Report record alone.

The HTML and Markdown renderers only lay this out: the ladder of each
connection (its events placed on a time axis), the terminal summary's
tables, the stories and the expectations. Every string that may come from
the wire or from a scenario passes `visible()` here, so that control
characters show as themselves instead of acting; each renderer then escapes
for its own format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.table import Table

from kalab import summary
from kalab.render.text import visible
from kalab.report import Closing, Connection, EngineRun, HttpRequest, Report

# The time axis of a ladder: seconds run down the page at one scale for the
# whole report, so that engines side by side compare at a glance.
LONG_GAP = 8.0  # a quiet stretch longer than this (s) is cut out of the axis...
CUT_PX = 40.0  # ...and drawn this tall, with a break mark and its real length
MIN_SEP = 18.0  # events closer than this (px) are spread apart so that labels never overlap
MAX_LADDER_PX = 430.0  # the longest ladder's linear time fits in about this
MIN_SCALE, MAX_SCALE = 12.0, 240.0  # px per second
TOP, BOTTOM = 50.0, 22.0  # room above the first event (lane headers) and below the last

# The ladder's drawing: x positions in the SVG's own units (it scales to its column).
WIDTH = 520.0
TIME_X, CLIENT_X, SERVER_X, NOTE_X = 46.0, 100.0, 334.0, 348.0
LABEL_CHARS = 40  # an arrow's label is cut to this many characters (the full text is its title)
MAX_LADDERS = 100  # per engine: a capture of thousands of connections stays a readable page
_BREAKS = {"idle": ", ", "advertised": "Keep-Alive: "}  # where a mark's label wraps


def clip(text: str, chars: int = LABEL_CHARS) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "\u2026"


def when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class Event:
    """One arrow of a ladder: a packet (or the first byte of a message) and who sent it."""

    at: float  # epoch seconds, as in the report
    kind: str  # syn, synack, tls (a ClientHello, a close_notify), request, response, fin, rst
    sender: str  # client or server
    label: str  # as drawn (cut to LABEL_CHARS)
    title: str  # the whole text
    t: float = 0.0  # seconds from the engine's zero, as every table shows
    y: float = 0.0
    request: str | None = None  # the request's id (as numbered in the scenario)
    bad: bool = False  # a response that is not 2xx/3xx, or a request never answered

    @property
    def receiver(self) -> str:
        return "server" if self.sender == "client" else "client"


@dataclass
class Mark:
    """A note on a ladder: the idle time before the close, or the advertised timeout's end."""

    kind: str  # idle, advertised, open
    label: str  # in one line
    y0: float
    y1: float
    t: float = 0.0

    @property
    def lines(self) -> tuple[str, str]:
        """The label in two short lines, for the narrow margin beside a ladder."""
        first, _, rest = self.label.partition(_BREAKS.get(self.kind, "\0"))
        return first, rest


@dataclass
class Cut:
    """A stretch of time left out of the axis (longer than LONG_GAP)."""

    y0: float
    y1: float
    seconds: float

    @property
    def middle(self) -> float:
        return (self.y0 + self.y1) / 2


@dataclass
class Ladder:
    """One connection as a ladder diagram: a client lane, a server lane, arrows between."""

    conn: Connection
    title: str
    story: str
    events: list[Event]
    marks: list[Mark] = field(default_factory=list)
    cuts: list[Cut] = field(default_factory=list)
    height: float = 0.0

    @property
    def requests(self) -> list[Event]:
        return [e for e in self.events if e.kind == "request"]

    @property
    def fins(self) -> list[Event]:
        return [e for e in self.events if e.kind == "fin"]


@dataclass
class TableView:
    title: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class ExpectationView:
    claim: str
    kind: str
    line: int
    passed: bool
    observed: str
    where: str  # scenario:line


@dataclass
class EngineView:
    run: EngineRun
    name: str
    description: str
    verdict: str
    server: str  # the summary's line about the server and the capture
    ladders: list[Ladder]
    not_drawn: int  # connections past MAX_LADDERS: in the tables, not drawn
    tables: list[TableView]
    stories: list[str]
    notes: list[tuple[str, str]]  # (kind, text): disagreements, impairments, errors, problems
    expectations: list[ExpectationView]

    @property
    def failed(self) -> list[ExpectationView]:
        return [e for e in self.expectations if not e.passed]


@dataclass
class ReportView:
    report: Report
    name: str
    scenario: str
    verdict: str
    exit_code: int
    started: str
    duration: float
    engines: list[EngineView]
    scale: float  # px per second on every ladder
    scale_bar: tuple[float, str]  # a length in px and what it stands for
    refuted: list[tuple[str, ExpectationView]]
    interruption: str | None  # where an incomplete run was cut short, in words
    probe: list[str]  # what `kalab probe` measured, a line a finding
    sweep: SweepView | None = None


@dataclass
class SweepView:
    heading: str  # the summary's rule: param, points, trials
    notes: list[str]  # each engine's timeouts, doubtful trials
    tables: list[TableView]  # per engine and counted request
    expectations: list[ExpectationView]


def _events(conn: Connection, requests: dict[str, HttpRequest]) -> list[Event]:
    def event(at: float, kind: str, sender: str, text: str, request: str | None = None,
              bad: bool = False) -> Event:
        text = visible(text)
        return Event(at, kind, sender, clip(text), text, request=request, bad=bad)

    events = []
    if conn.syn_at is not None:
        again = f" (sent {conn.syn_retransmits + 1} times)" if conn.syn_retransmits else ""
        events.append(event(conn.syn_at, "syn", "client", f"SYN (client){again}"))
    if conn.established_at is not None:
        events.append(event(conn.established_at, "synack", "server", "SYN-ACK (server)"))
    for ref in conn.requests:
        req = requests.get(ref)
        if req is None:
            continue
        answered = req.response_at is not None
        events.append(event(req.sent_at, "request", "client", summary.request_text(req),
                            request=visible(req.id), bad=not answered))
        if answered:
            said = f" \u00b7 Connection: {req.response_connection}" \
                if req.response_connection else ""
            events.append(event(req.response_at, "response", "server",
                                f"{req.status if req.status is not None else '?'}{said}",
                                request=visible(req.id),
                                bad=not (req.status and req.status < 400)))
    tls = conn.tls
    if tls is not None and tls.handshake_started_at is not None:
        events.append(event(tls.handshake_started_at, "tls", "client",
                            f"ClientHello ({summary.tls_name(conn)})"))
    if tls is not None and tls.close_notify_at is not None and tls.close_notify_by:
        events.append(event(tls.close_notify_at, "tls", tls.close_notify_by,
                            f"close_notify ({tls.close_notify_by})"))
    if conn.first_fin_at is not None and conn.first_fin_by:
        events.append(event(conn.first_fin_at, "fin", conn.first_fin_by,
                            f"FIN ({conn.first_fin_by})"))
        if conn.second_fin_at is not None:
            other = "client" if conn.first_fin_by == "server" else "server"
            events.append(event(conn.second_fin_at, "fin", other, f"FIN ({other})"))
    if conn.rst_at is not None and conn.rst_by:
        events.append(event(conn.rst_at, "rst", conn.rst_by, f"RST ({conn.rst_by})"))
    order = {"syn": 0, "synack": 1, "tls": 2, "request": 3, "response": 4, "fin": 5, "rst": 6}
    events.sort(key=lambda e: (e.at, order[e.kind]))
    return events


def _marks(conn: Connection) -> list[tuple[str, str, float, float]]:
    """(kind, label, from, to) in epoch seconds, before layout."""
    marks = []
    closed_at = conn.first_fin_at if conn.closed_with == Closing.FIN else conn.rst_at
    if conn.idle_before_close is not None and closed_at is not None:
        how, who = conn.closed_with.upper(), conn.closed_by
        marks.append(("idle", f"idle {conn.idle_before_close:.3f} s, then {how} ({who})",
                      closed_at - conn.idle_before_close, closed_at))
    base = conn.last_response_at or conn.last_data_at
    if conn.advertised_timeout is not None and base is not None:
        end = base + conn.advertised_timeout
        marks.append(("advertised", f"advertised Keep-Alive: timeout="
                      f"{conn.advertised_timeout:g} ends", end, end))
    return marks


def _linear_span(times: list[float]) -> float:
    times = sorted(times)
    return sum(b - a for a, b in zip(times, times[1:], strict=False) if b - a <= LONG_GAP)


def _layout(ladder: Ladder, raw_marks: list[tuple[str, str, float, float]], zero: float,
            scale: float) -> None:
    """Place events and marks: true time at ``scale``, long gaps cut, crowds spread.

    Each row lies where its time falls on the axis, or MIN_SEP below the row
    before it if that is lower: a burst of packets a millisecond apart gets
    readable rows, and the following quiet stretch absorbs the difference, so
    the rows after it are back on the true axis.
    """
    rows: list[tuple[float, Event | tuple[str, str, float, float]]] = \
        [(e.at, e) for e in ladder.events]
    rows += [(m[3], m) for m in raw_marks if m[0] == "advertised"]
    rows.sort(key=lambda row: (row[0], isinstance(row[1], tuple)))
    axis: dict[float, float] = {}
    y, previous = TOP, None
    for at in sorted({row[0] for row in rows} | {m[2] for m in raw_marks}):
        if previous is not None:
            gap = at - previous
            y += CUT_PX if gap > LONG_GAP else gap * scale
        axis[at], previous = y, at
    # An advertised timeout that ends after the connection did is shown past a cut: it
    # must not stretch the ladder (nor, through the scale, every other one).
    ended = ladder.events[-1].at
    drawn, drawn_at = TOP - MIN_SEP, None
    for at, item in rows:
        y = max(axis[at], drawn + MIN_SEP)
        if drawn_at is not None and (at - drawn_at > LONG_GAP or (
                at > ended and (at - drawn_at) * scale > CUT_PX)):
            y = drawn + CUT_PX
            ladder.cuts.append(Cut(drawn, y, at - drawn_at))
        drawn, drawn_at = y, at
        if isinstance(item, Event):
            item.y, item.t = y, at - zero
        else:
            ladder.marks.append(Mark("advertised", item[1], y, y, at - zero))
    for kind, label, start, end in raw_marks:
        if kind == "idle":
            ladder.marks.append(Mark(kind, label, _drawn(ladder, axis, start),
                                     _drawn(ladder, axis, end), end - zero))
    if ladder.conn.closed_by is None:
        drawn += MIN_SEP
        ladder.marks.append(Mark("open", "still open when the capture ended", drawn, drawn))
    ladder.height = drawn + BOTTOM


def _drawn(ladder: Ladder, axis: dict[float, float], at: float) -> float:
    """Where an instant is drawn: on the axis, or at the row of the last event before it."""
    return max([axis[at]] + [e.y for e in ladder.events if e.at <= at])


def _table(table: Table) -> TableView:
    def cell(value: object) -> str:
        return visible(getattr(value, "plain", value))

    headers = [cell(c.header) for c in table.columns]
    columns = [[cell(v) for v in c.cells] for c in table.columns]
    rows = [list(row) for row in zip(*columns, strict=True)] if columns else []
    return TableView(cell(table.title or ""), headers, rows)


def _engine(report: Report, run: EngineRun, scale: float) -> EngineView:
    zero = summary.time_zero(run)
    requests = {r.id: r for r in run.requests}
    ladders = []
    for conn in run.connections[:MAX_LADDERS]:
        story = visible(summary.connection_story(conn, requests))
        kind = "probe" if conn.probe and not conn.refused else \
            f"carried {', '.join(conn.requests)}" if conn.requests else "no request"
        if conn.tls is not None:
            kind += f" over {summary.tls_name(conn)}"
        ladder = Ladder(conn, visible(f"#{conn.id}: {kind}"), story,
                        _events(conn, requests))
        if ladder.events:
            _layout(ladder, _marks(conn), zero, scale)
        else:
            ladder.height = TOP + BOTTOM
        ladders.append(ladder)
    cap = run.capture
    server = visible(summary.capture_line(run))
    notes = [("disagreement", f"belief vs wire: {d}") for d in run.disagreements]
    notes += [("impairment", f"link impaired: {i}") for i in cap.impairments]
    notes += [("engine", f"the engine logged: {line}") for line in run.engine_log]
    notes += [("error", f"request {e.get('ref')} never reached the wire: "
               f"{e.get('error_cause') or e.get('error')}") for e in run.client_errors]
    notes += [("problem", f"capture problem: {p}") for p in cap.problems]
    expectations = [ExpectationView(
        visible(e.claim), e.kind, e.line, e.passed, visible(e.observed),
        visible(f"{report.scenario}:{e.line}" if report.scenario else f"line {e.line}"))
        for e in run.expectations]
    return EngineView(
        run=run, name=visible(run.engine), description=visible(run.description),
        verdict=run.verdict, server=server, ladders=ladders,
        not_drawn=max(0, len(run.connections) - MAX_LADDERS),
        tables=[_table(summary.requests_table(run, zero)),
                _table(summary.connections_table(run, zero))],
        stories=[visible(summary.connection_story(c, requests)) for c in run.connections
                 if not c.probe],
        notes=[(kind, visible(text)) for kind, text in notes], expectations=expectations)


def _scale(report: Report) -> float:
    spans = []
    for run in report.runs:
        requests = {r.id: r for r in run.requests}
        for conn in run.connections[:MAX_LADDERS]:
            times = [e.at for e in _events(conn, requests)]
            times += [t for m in _marks(conn) for t in m[2:] if times and t <= max(times)]
            spans.append(_linear_span(times))
    longest = max(spans, default=0.0)
    if longest <= 0:
        return MAX_SCALE
    return min(MAX_SCALE, max(MIN_SCALE, MAX_LADDER_PX / longest))


def _scale_bar(scale: float) -> tuple[float, str]:
    for seconds in (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60):
        if seconds * scale >= 36:
            return seconds * scale, f"{seconds:g} s"
    return 60 * scale, "60 s"


def _sweep(report: Report) -> SweepView | None:
    sweep = report.sweep
    if sweep is None:
        return None
    expectations = [ExpectationView(visible(e.claim), e.kind, e.line, e.passed,
                                    visible(e.observed), f"{report.scenario}:{e.line}")
                    for e in sweep.expectations]
    return SweepView(heading=visible(summary.sweep_heading(sweep)),
                     notes=[visible(note) for note in summary.sweep_notes(sweep)],
                     tables=[_table(t) for t in summary.sweep_tables(sweep)],
                     expectations=expectations)


def build(report: Report) -> ReportView:
    """Everything the renderers show, from the record alone."""
    scale = _scale(report)
    engines = [_engine(report, run, scale) for run in report.runs]
    sweep = _sweep(report)
    refuted = [(e.name, x) for e in engines for x in e.failed]
    if sweep is not None:
        refuted += [("sweep", x) for x in sweep.expectations if not x.passed]
    return ReportView(
        report=report, name=visible(report.name),
        scenario=visible(report.scenario or "(no scenario: kalab analyze)"),
        verdict=report.verdict, exit_code=report.exit_code, started=when(report.started_at),
        duration=report.finished_at - report.started_at, engines=engines, scale=scale,
        scale_bar=_scale_bar(scale), refuted=refuted,
        interruption=visible(summary.interruption(report) or "") or None,
        probe=[visible(line) for line in summary.probe_story(report)], sweep=sweep)
