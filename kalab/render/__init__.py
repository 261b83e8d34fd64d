"""Views of a run's report for people and for CI, made from report.json alone.

- ``report.html``: ladder diagrams of every connection, engines side by side,
  and the terminal summary's tables (`kalab.render.html`);
- ``report.md``: the same content as Markdown (`kalab.render.markdown`);
- ``junit.xml``: one test case per expectation per engine (`kalab.render.junit`);
- ``chart-NAME.png``: a sweep's charts, also inline in report.html
  (`kalab.render.charts`).

`write_all` writes the three beside report.json; `kalab report DIR` redoes it.
`publish` writes a run's record itself, summary.txt and the views: what the
observer does at the end of a run, and `kalab run` after an interrupt.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from kalab.report import Report

OUTPUTS = ("report.html", "report.md", "junit.xml")


def renderers() -> dict[str, Callable[[Report], str]]:
    from kalab.render.html import render_html
    from kalab.render.junit import render_junit
    from kalab.render.markdown import render_markdown

    return {"report.html": render_html, "report.md": render_markdown,
            "junit.xml": render_junit}


def write_all(report: Report, folder: Path) -> list[Path]:
    """Write every view of ``report`` into ``folder``, each atomically; their paths. A
    sweep's charts (`kalab.render.charts`) are drawn once: inline in report.html, and
    beside it as chart-NAME.png."""
    from functools import partial

    from kalab.render import charts
    from kalab.render.html import render_html

    made = charts.charts(report)
    written = []
    for name, render in {**renderers(), "report.html": partial(render_html, charts=made)}.items():
        path = folder / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_text(render(report), encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written + charts.write_png(made, folder)


def publish(report: Report, folder: Path) -> None:
    """Write ``report.json``, ``summary.txt`` and every view into ``folder``. A view that
    fails is said on stderr: it must never cost the run its record and verdict."""
    from kalab import report as report_mod
    from kalab import summary

    report_mod.write(report, folder)
    (folder / "summary.txt").write_text(summary.as_text(report), encoding="utf-8")
    try:
        write_all(report, folder)
    except Exception as exc:  # noqa: BLE001 - any bug in a view
        print(f"kalab: the report's views failed: {exc!r}", file=sys.stderr)
