"""report.html: one self-contained page (inline CSS and SVG, no script, no network).

Rendered with jinja2 from the report record alone. Autoescaping is on for
the whole template, so a request target or header value from the wire is
always text, never markup; `view.visible` has already made its control
characters visible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jinja2
import markupsafe

from kalab.render import view
from kalab.report import SCHEMA, Report

if TYPE_CHECKING:
    from kalab.render.charts import Chart

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


def render_html(report: Report, charts: list[Chart] | None = None) -> str:
    """The whole page as a string; a sweep's ``charts`` drawn here unless given."""
    if charts is None:
        from kalab.render.charts import charts as draw

        charts = draw(report)
    template = environment().get_template("report.html.j2")
    # The charts' SVG is matplotlib's, drawn from numbers and names the scenario checked
    # (its text escaped by matplotlib): markup to place, not text to escape.
    drawn = [(chart.title, markupsafe.Markup(chart.svg), f"chart-{chart.name}.png")
             for chart in charts]
    return template.render(
        v=view.build(report), schema=SCHEMA, runtime=view.visible(report.runtime),
        charts=drawn,
        width=view.WIDTH, tx=view.TIME_X, cx=view.CLIENT_X, sx=view.SERVER_X,
        nx=view.NOTE_X, long_gap=view.LONG_GAP)
