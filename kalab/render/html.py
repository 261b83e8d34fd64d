"""report.html: one self-contained page (inline CSS and SVG, no script, no network).

Rendered with jinja2 from the report record alone. Autoescaping is on for
the whole template, so a request target or header value from the wire is
always text, never markup; `view.visible` has already made its control
characters visible.
"""

from __future__ import annotations

import jinja2

from kalab.render import view
from kalab.report import SCHEMA, Report

_ENV: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    """The templates' environment: autoescaped, and strict about undefined names."""
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(
            loader=jinja2.PackageLoader("kalab.render", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True)
        _ENV.filters["visible"] = view.visible
    return _ENV


def render_html(report: Report) -> str:
    """The whole page as a string."""
    template = environment().get_template("report.html.j2")
    return template.render(
        v=view.build(report), schema=SCHEMA, runtime=view.visible(report.runtime),
        width=view.WIDTH, tx=view.TIME_X, cx=view.CLIENT_X, sx=view.SERVER_X,
        nx=view.NOTE_X, long_gap=view.LONG_GAP)
