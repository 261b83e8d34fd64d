"""report.html as a person sees it: opened in headless Chromium, checked from its DOM.

A real two-engine run gives the page (one engine closes every connection,
the other keeps one alive); Chromium builds it, and its DOM must have a
lane pair per connection with every request arrow and FIN of the record.
Then a page full of hostile wire content must run no script: not even with
its Content-Security-Policy taken out.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from browser import (
    Elements,
    count_colour,
    dump_dom,
    marker_set,
    png_pixels,
    require_chromium,
    screenshot,
)
from conftest import requires_lab, run_kalab
from markdown_it import MarkdownIt
from report_samples import ATTACKS, MARKER, hostile, sample_report
from test_render import validator

from kalab import render
from kalab import report as report_mod
from kalab.render.html import render_html
from kalab.render.markdown import render_markdown

TWO_ENGINES = """\
name: two-engines
sessions:
  - name: client
    steps:
      - get: /keep-alive
      - sleep: 0.5
      - get: /keep-alive
      - sleep: 0.5
      - close
engines:
  - name: werkzeug
    engine: werkzeug
    expect:
      - new_connection: [1, 2]
      - close: {request: each, by: server, within: 1.0}
  - name: gthread
    engine: gunicorn
    worker: gthread
    expect:
      - same_connection: [1, 2]
      - close: {request: 2, by: client, idle: 0.5, tolerance: 0.3}
"""
CSP = "<meta http-equiv=\"Content-Security-Policy\""


@pytest.fixture(scope="module")
def two_engine_run(tmp_path_factory):
    """The results folder of a real run of two engines (about 5 s in namespaces)."""
    work = tmp_path_factory.mktemp("two-engines")
    scenario = work / "two-engines.yaml"
    scenario.write_text(TWO_ENGINES)
    done = run_kalab("run", str(scenario), "--results", str(work / "results"), cwd=work)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work / "results"


@requires_lab
@pytest.mark.slow
def test_chromium_shows_a_lane_pair_per_connection_with_every_request_and_fin(two_engine_run):
    require_chromium()
    page_file = two_engine_run / "report.html"
    written = page_file.read_text()
    done = run_kalab("report", str(two_engine_run))
    assert done.returncode == 0, done.stderr
    assert page_file.read_text() == written  # `kalab report` redoes what the observer did
    record = report_mod.from_dict(json.loads((two_engine_run / "report.json").read_text()))
    assert [r.engine for r in record.runs] == ["werkzeug", "gthread"]

    dom = Elements(dump_dom(page_file))
    engines = [e[1]["data-engine"] for e in dom.found if e[0] == "article"]
    assert engines == ["werkzeug", "gthread"]  # side by side, in the order run
    for run in record.runs:
        pairs = [e for e in dom.with_class("lane-pair") if e[2]["data-engine"] == run.engine]
        assert sorted(int(p[1]["data-connection"]) for p in pairs) == \
            sorted(c.id for c in run.connections)
        for lane in ("lane-client", "lane-server"):
            lanes = [e for e in dom.with_class("lane", lane) if e[2]["data-engine"] == run.engine]
            assert len(lanes) == len(run.connections)
        arrows = [e for e in dom.with_class("arrow", "request")
                  if e[2]["data-engine"] == run.engine]
        assert sorted(a[1]["data-request"] for a in arrows) == ["1", "2"]
        for conn in run.connections:
            fins = [e[1]["data-sender"] for e in dom.with_class("arrow", "fin")
                    if e[2]["data-engine"] == run.engine
                    and e[2]["data-connection"] == str(conn.id)]
            expected = [conn.first_fin_by] if conn.first_fin_at else []
            if conn.second_fin_at:
                expected.append("client" if conn.first_fin_by == "server" else "server")
            assert fins == expected, (run.engine, conn.id)
            on_it = [a[1]["data-request"] for a in arrows
                     if a[2]["data-connection"] == str(conn.id)]
            assert on_it == conn.requests
    werkzeug, gthread = record.runs
    assert len(werkzeug.connections) == 2 and len(gthread.connections) == 1

    png = screenshot(page_file, two_engine_run / "report.png", 1400, 1100)
    width, height, rows = png_pixels(png, max_rows=1100)
    assert (width, height) == (1400, 1100)
    assert count_colour(rows, (0x1A, 0x7F, 0x37)) > 200  # the PASS badges and borders
    assert count_colour(rows, (0x1F, 0x5F, 0xBF)) > 200  # request arrows and numbers
    assert count_colour(rows, (0xD9, 0x48, 0x0F)) > 100  # the FINs


@requires_lab
@pytest.mark.slow
def test_the_run_writes_every_view_and_a_report_that_matches_the_schema(two_engine_run):
    data = json.loads((two_engine_run / "report.json").read_text())
    assert [e.message for e in validator().iter_errors(data)] == []
    suites = ET.parse(two_engine_run / "junit.xml").getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == ["werkzeug", "gthread"]
    assert [len(s.findall("testcase")) for s in suites] == [2, 2]
    assert not list(ET.parse(two_engine_run / "junit.xml").getroot().iter("failure"))
    md = (two_engine_run / "report.md").read_text()
    assert "# kalab report: two-engines: PASS" in md and md.count("```text") == 3


@requires_lab
@pytest.mark.slow
def test_the_bundled_lab_report_matches_the_schema_and_has_its_views(lab_yaml_run):
    data = json.loads((lab_yaml_run / "report.json").read_text())
    assert [e.message for e in validator().iter_errors(data)] == []
    for name in render.OUTPUTS:
        assert (lab_yaml_run / name).stat().st_size > 0


def test_chromium_runs_no_script_from_the_wire_even_without_the_csp(tmp_path):
    require_chromium()
    page = render_html(hostile(sample_report()))
    assert page.count(CSP) == 1
    open_page = tmp_path / "open.html"
    open_page.write_text(page.replace(CSP, "<meta name=\"csp-removed\""))
    dom = dump_dom(open_page)
    assert not marker_set(dom, MARKER)
    elements = Elements(dom)
    assert [e for e in elements.found if e[0] == "script"] == []
    assert all(attack in "".join(elements.text) for attack in ATTACKS[:2])
    # The control: the same page with a script of its own does set the marker here.
    control = tmp_path / "control.html"
    control.write_text(open_page.read_text().replace(
        "</body>", f"<script>document.documentElement.setAttribute('{MARKER}','1')</script>"
        "</body>"))
    assert marker_set(dump_dom(control), MARKER)


def test_chromium_runs_no_script_from_the_markdown_report(tmp_path):
    require_chromium()
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(
        render_markdown(hostile(sample_report())))
    page = tmp_path / "markdown.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>{html}"
                    "</body></html>")
    dom = dump_dom(page)
    assert not marker_set(dom, MARKER)
    assert [e for e in Elements(dom).found if e[0] in ("script", "img", "svg")] == []
    assert ATTACKS[0] in "".join(Elements(dom).text)


def test_without_chromium_the_tests_skip_unless_ci_requires_it(monkeypatch):
    import browser

    monkeypatch.setattr(browser, "CANDIDATES", ("no-such-browser-here",))
    monkeypatch.delenv("KALAB_REQUIRE_CHROMIUM", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        browser.require_chromium()
    monkeypatch.setenv("KALAB_REQUIRE_CHROMIUM", "1")
    with pytest.raises(pytest.fail.Exception, match="KALAB_REQUIRE_CHROMIUM=1"):
        browser.require_chromium()
