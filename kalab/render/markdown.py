"""report.md: the HTML report's content as Markdown, to paste into an issue or a worksheet.

Every value from the wire or the scenario goes through `md()`: backslash
escapes for Markdown's punctuation (a `|` never splits a table cell, a
backtick never opens code), entities for `<`, `>` and `&` (no raw HTML
reaches a renderer that allows it), and `view.visible` for control
characters (a newline never ends a table row). The ladders are text
diagrams in fenced code blocks: each line starts with blanks or a time, so
nothing in a label can close the fence.
"""

from __future__ import annotations

from kalab.render import view
from kalab.report import SCHEMA, Report

_ESCAPES = str.maketrans({**{c: "\\" + c for c in "\\`*_[]|~#"},
                          "<": "&lt;", ">": "&gt;", "&": "&amp;"})

INNER = 44  # characters between a ladder's two lanes
GAP_LINE = 0.2  # seconds: a quiet stretch at least this long gets a line of its own


def md(text: object) -> str:
    """``text`` as literal Markdown inline text (safe in a table cell)."""
    return view.visible(text).translate(_ESCAPES)


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(md(h) for h in headers) + " |",
             "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
    return lines


def _arrow(event: view.Event) -> str:
    if event.kind == "request":
        label = f"{event.request} {event.label}"
    elif event.kind == "response":
        label = f"{event.request}: {event.label}"
    else:
        label = event.label
    label = f" {view.clip(label, INNER - 6)} "
    if event.sender == "client":
        return "|" + label.center(INNER - 1, "-") + ">|"
    return "|<" + label.center(INNER - 1, "-") + "|"


def ladder_text(ladder: view.Ladder) -> list[str]:
    """One connection as a text ladder: a row per packet, in time order, with its time."""
    conn = ladder.conn
    left, right = view.visible(conn.client), view.visible(conn.server)
    lines = [f"{'t (s)':>8} " + "client".ljust(INNER + 2 - len("server")) + "server",
             f"{'':8} " + left.ljust(INNER + 2 - len(right)) + right]
    idle = {round(m.y1, 3): m for m in ladder.marks if m.kind == "idle"}
    rows: list[tuple[float, str]] = [(e.t, e) for e in ladder.events]  # type: ignore[misc]
    rows += [(m.t, m) for m in ladder.marks if m.kind == "advertised"]  # type: ignore[misc]
    rows.sort(key=lambda row: (row[0], isinstance(row[1], view.Mark)))
    previous = None
    for t, item in rows:
        if previous is not None and t - previous >= GAP_LINE:
            lines.append(f"{'':8} :" + f" ... {t - previous:.3f} s ... ".center(INNER) + ":")
        previous = t
        if isinstance(item, view.Mark):
            lines.append(f"{t:8.3f} |" + "- " * (INNER // 2) + f"|  {item.label}")
            continue
        note = idle.get(round(item.y, 3)) if item.kind in ("fin", "rst") else None
        lines.append(f"{t:8.3f} {_arrow(item)}" + (f"  <- {note.label}" if note else ""))
    for mark in ladder.marks:
        if mark.kind == "open":
            lines.append(f"{'':8} ({mark.label})")
    return lines


def render_markdown(report: Report) -> str:
    """The whole report as Markdown text."""
    v = view.build(report)
    out = [f"# kalab report: {md(v.name)}: {v.verdict.upper()}", "",
           f"scenario {md(v.scenario)} · runtime {md(report.runtime)} · started {v.started} · "
           f"{v.duration:.1f} s · exit {v.exit_code}", ""]
    if v.interruption:
        out += [f"**{md(v.interruption)}**", ""]
    if v.probe:  # a line break after each (two spaces), every line escaped as text
        out += [f"{md(line)}  " for line in v.probe] + [""]
    out += table(["engine", "what ran", "connections", "requests", "expectations held",
                  "verdict"],
                 [[e.name, e.description, str(len(e.run.connections)),
                   str(len(e.run.requests)),
                   f"{sum(x.passed for x in e.expectations)} / {len(e.expectations)}",
                   e.verdict.upper()] for e in v.engines])
    if v.refuted:
        out += ["", "**The wire refuted:**", ""]
        out += [f"- **{md(engine)}**: {md(x.claim)} ({md(x.where)}); wire: {md(x.observed)}"
                for engine, x in v.refuted]
    for e in v.engines:
        out += ["", f"## {md(e.name)}: {md(e.description)}: {e.verdict.upper()}", "",
                md(e.server), ""]
        if e.expectations:
            out += ["### Expectations", ""]
            out += table(["result", "claim", "wire", "where"], [])
            out += [f"| {'PASS' if x.passed else '**FAIL**'} | {md(x.claim)} | "
                    f"{md(x.observed)} | {md(x.where)} |" for x in e.expectations]
            out.append("")
        out += [f"- {md(text)}" for _, text in e.notes]
        if e.notes:
            out.append("")
        out += ["### Connections as ladders", "",
                "Time runs down; an arrow leaves the side that sent it; times are seconds "
                "from the engine's first SYN.", ""]
        for ladder in e.ladders:
            out += [md(ladder.story), "", "```text"]
            out += ladder_text(ladder)
            out += ["```", ""]
        if e.not_drawn:
            out += [f"{e.not_drawn} more connection(s) are not drawn: they are in the tables "
                    "below and in report.json.", ""]
        for t in e.tables:
            out += [f"### {md(t.title)}", ""]
            out += table(t.headers, t.rows)
            out.append("")
        out += [f"- {md(s)}" for s in e.stories]
        out += ["", f"verdict for {md(e.name)}: **{e.verdict}**"]
    out += ["", "---", "",
            f"Made by kalab report from report.json ({SCHEMA}) alone; the pcaps beside it "
            "hold every packet.", ""]
    return "\n".join(out)
