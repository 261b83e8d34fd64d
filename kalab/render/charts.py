"""A sweep's charts, drawn with matplotlib: SVG inline in report.html, PNG beside it.

- ``shares-ENGINE``: per counted request (a panel each, titled with its
  client), the share of the trials that ended in each outcome against the
  swept value: the cliff at the keep-alive edge. The engine's advertised
  Keep-Alive timeout is a dashed line, the idle time after which it really
  closed (the median over every trial) a solid one, with its range shaded.
  Each outcome is one series of points (one mark per point), its SVG group's
  id `series_id` (``series-ENGINE-REQUEST-OUTCOME``, spaces as ``-``).
- ``send-lag``: per request of the scenario, the distribution of its send
  lag over every trial (how late it reached the wire against the scenario's
  timing: a counted request's lag moves it off its point), in milliseconds.

The ladder diagrams are not charts: `kalab.render.view` draws them itself.
Charts are made only for a sweep (importing matplotlib costs a second); the
SVG has no script and no fonts to fetch (text as paths), so the page stays
self-contained and printable.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from kalab.report import Report, Sweep

# Outcome colours: what a reader wants to see apart at a glance.
COLOURS = {"reused": "#2a7d2a", "new": "#7f7f7f", "replaced dropped connection": "#1f5fbf",
           "raced the FIN": "#c03030", "unanswered": "#8c564b", "not sent": "#444444",
           "error": "#e08000", "retried": "#9467bd"}
MARKERS = {"reused": "o", "new": "s", "replaced dropped connection": "^",
           "raced the FIN": "v", "unanswered": "D", "not sent": "x", "error": "P",
           "retried": "*"}


@dataclass
class Chart:
    name: str  # the PNG's stem: chart-NAME.png
    title: str
    svg: str
    png: bytes


def series_id(engine: str, request: str, outcome: str) -> str:
    """The id of one outcome's series in a shares chart's SVG."""
    return f"series-{engine}-{request}-{outcome}".replace(" ", "-")


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot, imported only when a sweep is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "font.size": 9})
    return plt


def _export(plt, figure, name: str) -> tuple[str, bytes]:  # noqa: ANN001
    plt.rcParams["svg.hashsalt"] = name  # ids that no other chart on the page has
    svg, png = io.StringIO(), io.BytesIO()
    figure.savefig(svg, format="svg", bbox_inches="tight", metadata={"Date": None})
    figure.savefig(png, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    text = svg.getvalue()
    return text[text.index("<svg"):], png.getvalue()  # inline: no XML prolog, no doctype


def shares_chart(sweep: Sweep, engine: str) -> Chart:
    plt = _pyplot()
    requests = sweep.requests
    figure, axes = plt.subplots(1, len(requests), figsize=(4.2 * len(requests), 3.6),
                                sharey=True, squeeze=False, layout="constrained")
    mark = next((m for m in sweep.engines if m.engine == engine), None)
    for axis, request in zip(axes[0], requests, strict=True):
        points = [p for p in sweep.points if p.engine == engine and p.request == request
                  and p.trials]
        client = points[0].client if points else "?"
        outcomes = [o for o in COLOURS if any(p.counts.get(o) for p in points)]
        for outcome in outcomes:
            line, = axis.plot([p.value for p in points],
                              [p.shares.get(outcome, 0.0) for p in points],
                              marker=MARKERS[outcome], markersize=4, linewidth=1.2,
                              color=COLOURS[outcome], label=outcome)
            line.set_gid(series_id(engine, request, outcome))
        if mark is not None and mark.advertised_timeout is not None:
            axis.axvline(mark.advertised_timeout, color="#555555", linestyle="--",
                         linewidth=1, label=f"advertised {mark.advertised_timeout:g} s")
        if mark is not None and mark.enforced_timeout is not None:
            axis.axvspan(mark.enforced_low, mark.enforced_high, color="#bbbbbb", alpha=0.35,
                         linewidth=0)
            axis.axvline(mark.enforced_timeout, color="#000000", linewidth=1,
                         label=f"enforced {mark.enforced_timeout:.2f} s")
        axis.set_title(f"request {request} ({client})")
        axis.set_xlabel(f"{sweep.param}")
        axis.set_ylim(-0.04, 1.04)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="center right")
    axes[0][0].set_ylabel("share of the trials")
    figure.suptitle(f"{engine}: outcome of each request against {sweep.param} "
                    f"({sweep.trials} trial(s) a point)")
    svg, png = _export(plt, figure, f"shares-{engine}")
    return Chart(f"shares-{engine}", f"{engine}: outcomes against {sweep.param}", svg, png)


def send_lag_chart(sweep: Sweep) -> Chart:
    plt = _pyplot()
    names = list(sweep.send_lags)
    figure, axis = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 1.5), 3.4),
                                layout="constrained")
    # A log scale: a first request waits for its client to start (hundreds of ms on a
    # busy machine), a later one is a few ms late; both must be readable.
    axis.boxplot([[max(lag * 1000, 0.01) for lag in sweep.send_lags[name]] for name in names],
                 whis=(1, 99), flierprops={"markersize": 2})
    axis.set_xticks(range(1, len(names) + 1), [
        f"{name}\n({'counted' if name in sweep.requests else 'not counted'})"
        for name in names], fontsize=7)
    axis.set_yscale("log")
    axis.set_ylabel("send lag (ms, log scale)")
    axis.set_title(f"send lag of each request over {len(sweep.trial_reports)} trials: the "
                   "wire's time minus the scenario's (whiskers 1st-99th percentile)",
                   fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    svg, png = _export(plt, figure, "send-lag")
    return Chart("send-lag", "send lag of each request", svg, png)


def charts(report: Report) -> list[Chart]:
    """The report's charts: a sweep's; none for any other run."""
    sweep = report.sweep
    if sweep is None or not sweep.points:
        return []
    made = [shares_chart(sweep, engine)
            for engine in dict.fromkeys(p.engine for p in sweep.points)]
    if sweep.send_lags:
        made.append(send_lag_chart(sweep))
    return made


def write_png(made: list[Chart], folder: Path) -> list[Path]:
    """Each chart as ``chart-NAME.png`` in ``folder`` (written atomically); their paths."""
    written = []
    for chart in made:
        path = folder / f"chart-{chart.name}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(chart.png)
        tmp.replace(path)
        written.append(path)
    return written
