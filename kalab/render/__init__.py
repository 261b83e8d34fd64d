"""Views of a run's report for people and for CI, made from report.json alone.

- ``report.html``: ladder diagrams of every connection, engines side by side,
  and the terminal summary's tables (`kalab.render.html`);
- ``report.md``: the same content as Markdown (`kalab.render.markdown`);
- ``junit.xml``: one test case per expectation per engine (`kalab.render.junit`).

`write_all` writes the three beside report.json; `kalab report DIR` redoes it.
"""

from __future__ import annotations

import os
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
    """Write every view of ``report`` into ``folder``, each atomically; their paths."""
    written = []
    for name, render in renderers().items():
        path = folder / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_text(render(report), encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written
