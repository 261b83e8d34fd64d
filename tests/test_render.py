"""report.html, report.md and junit.xml from the record alone, and the record's JSON Schema."""

from __future__ import annotations

import dataclasses
import html as html_lib
import json
import re
import struct
import xml.etree.ElementTree as ET

import jsonschema
import pytest
from browser import Elements
from conftest import ROOT, run_kalab
from markdown_it import MarkdownIt
from report_samples import ATTACKS, CONTROL, MARKER, hostile, sample_report

from kalab import render
from kalab import report as report_mod
from kalab.render import junit, markdown, schema, view
from kalab.render.html import render_html


def validator() -> jsonschema.Draft202012Validator:
    committed = json.loads(schema.SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(committed)
    return jsonschema.Draft202012Validator(committed)


def as_json(report: report_mod.Report) -> dict:
    return json.loads(report_mod.to_json(report))


# --------------------------------------------------------------- the schema


def test_the_committed_schema_is_what_the_record_generates():
    committed = schema.SCHEMA_FILE.read_text(encoding="utf-8")
    assert committed == schema.as_text(), \
        "schema/report.schema.json is stale: run python -m kalab.render.schema --write"


def test_the_schema_documents_every_field_from_its_doc():
    generated = schema.json_schema()
    conn = generated["$defs"]["Connection"]
    field_doc = report_mod.Connection.__dataclass_fields__["closed_by"].metadata["doc"]
    assert conn["properties"]["closed_by"]["description"] == field_doc
    assert set(conn["properties"]) == set(report_mod.Connection.__dataclass_fields__)
    assert generated["properties"]["schema"]["const"] == report_mod.SCHEMA
    assert conn["properties"]["first_fin_at"]["type"] == ["number", "null"]


@pytest.mark.parametrize("make", [sample_report, lambda: hostile(sample_report())],
                         ids=["sample", "hostile"])
def test_reports_built_here_match_the_schema(make):
    errors = [e.message for e in validator().iter_errors(as_json(make()))]
    assert errors == []


@pytest.mark.parametrize("damage, complaint", [
    (lambda d: d["runs"][0]["connections"][0].update(syn_at="soon"), "is not of type"),
    (lambda d: d["runs"][0]["requests"][0].pop("target"), "'target' is a required property"),
    (lambda d: d["runs"][1].update(surprise=1), "Additional properties"),
    (lambda d: d.update(schema="kalab.report/0"), "was expected"),
])
def test_the_schema_rejects_a_damaged_report(damage, complaint):
    data = as_json(sample_report())
    damage(data)
    messages = [e.message for e in validator().iter_errors(data)]
    assert any(complaint in m for m in messages), messages


# --------------------------------------------------------------- the ladders


def engine_view(name: str) -> view.EngineView:
    (found,) = [e for e in view.build(sample_report()).engines if e.run.engine == name]
    return found


def test_a_ladder_has_every_packet_with_its_sender():
    ladder = engine_view("closes").ladders[0]
    kinds = [(e.kind, e.sender, e.request) for e in ladder.events]
    assert kinds == [("syn", "client", None), ("synack", "server", None),
                     ("request", "client", "1"), ("response", "server", "1"),
                     ("fin", "server", None), ("fin", "client", None)]
    assert [e.label for e in ladder.fins] == ["FIN (server)", "FIN (client)"]
    (idle,) = [m for m in ladder.marks if m.kind == "idle"]
    assert idle.label == "idle 0.010 s, then FIN (server)"
    assert idle.y0 < idle.y1 == ladder.fins[0].y


def test_time_runs_true_down_the_ladder_and_crowds_are_spread():
    v = view.build(sample_report())
    ladder = [e for e in v.engines if e.run.engine == "closes"][0].ladders[0]
    rows = [e.y for e in ladder.events]
    assert all(b - a >= view.MIN_SEP - 1e-9 for a, b in zip(rows, rows[1:], strict=False))
    # The client's FIN 3 s after the SYN lies where the true axis puts it: the burst
    # of the first 13 ms was spread out, and the quiet time after it absorbed that.
    syn, client_fin = ladder.events[0], ladder.fins[1]
    assert client_fin.y - syn.y == pytest.approx(3.0 * v.scale, abs=0.01)


def test_a_long_quiet_stretch_is_cut_and_says_how_long():
    ladder = engine_view("keeps").ladders[0]
    (cut,) = ladder.cuts
    assert cut.seconds == pytest.approx(21.0, abs=0.01)
    assert cut.y1 - cut.y0 == pytest.approx(view.CUT_PX)
    third = [e for e in ladder.requests if e.request == "3"][0]
    assert third.y == pytest.approx(cut.y1) and third.t == pytest.approx(24.0)
    assert [e.kind for e in ladder.events][-1] == "rst" and ladder.events[-1].sender == "client"
    (bad,) = [e for e in ladder.events if e.bad]
    assert bad.kind == "response" and bad.label.startswith("500")


def test_an_advertised_timeout_past_the_close_does_not_stretch_the_ladder():
    ladder = engine_view("closes").ladders[0]
    (advertised,) = [m for m in ladder.marks if m.kind == "advertised"]
    assert advertised.t == pytest.approx(5.0031)
    (cut,) = ladder.cuts
    assert cut.y1 == advertised.y0 and cut.seconds == pytest.approx(2.0031)


def test_visible_shows_control_characters_instead_of_obeying_them():
    shown = view.visible(CONTROL)
    assert all(ord(c) >= 0x20 and c not in "\x7f\x85\u202e\u2028" for c in shown)
    assert "\u2400" in shown and "\u240a" in shown and "\u241b" in shown
    assert "\u27e8U+202E\u27e9" in shown and "\u27e8U+2028\u27e9" in shown
    assert view.visible("GET /ok?a=1") == "GET /ok?a=1"


# --------------------------------------------------------------- HTML (without a browser)


def test_html_draws_one_lane_pair_per_connection_and_numbers_the_requests():
    report = sample_report()
    page = Elements(render_html(report))
    for run in report.runs:
        ladders = [e for e in page.with_class("lane-pair")
                   if e[2] and e[2]["data-engine"] == run.engine]
        assert sorted(int(e[1]["data-connection"]) for e in ladders) == \
            sorted(c.id for c in run.connections)
        arrows = [e[1]["data-request"] for e in page.with_class("arrow", "request")
                  if e[2]["data-engine"] == run.engine]
        assert arrows == [r.id for r in run.requests]
    fins = page.with_class("arrow", "fin")
    assert len(fins) == 4 and {f[1]["data-sender"] for f in fins} == {"server", "client"}
    assert len(page.with_class("arrow", "rst")) == 2
    failed = page.with_class("expectation", "fail")
    assert len(failed) == 1
    assert not [e for e in page.found if e[0] in ("script", "link", "img", "iframe")]


def test_html_escapes_every_attack_and_keeps_it_as_text():
    text = render_html(hostile(sample_report()))
    page = Elements(text)
    assert [e[0] for e in page.found if e[0] == "script"] == []
    assert not [(tag, name) for tag, attrs, _ in page.found for name in attrs
                if name.startswith("on") or name == MARKER]
    shown = "".join(page.text)
    assert ATTACKS[0] in shown and ATTACKS[1] in shown  # as text, word for word
    assert not any(c in text for c in "\x00\x1b\x7f\x85\u202e\u2028")


def test_the_page_needs_nothing_from_anywhere():
    text = render_html(sample_report())
    assert "http://" not in text.replace("http://www.w3.org", "")
    assert "https://" not in text and "url(" not in text and "@import" not in text
    assert "default-src 'none'" in text


# --------------------------------------------------------------- Markdown


def markdown_html(text: str) -> str:
    """As GitHub would show it: CommonMark with tables, raw HTML allowed."""
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(text)


def test_markdown_has_the_same_content_as_the_page():
    report = sample_report()
    text = markdown.render_markdown(report)
    assert text.startswith("# kalab report: samples: FAIL")
    for run in report.runs:
        assert f"## {run.engine}: {run.description}" in text
    assert "| **FAIL** | the server closes it after 30 s idle |" in text
    assert "|<--------------- FIN (server) --------------|" in text
    assert "... 20.998 s ..." in text and "RST (client)" in text
    page = Elements(markdown_html(text))
    # The overview, then per engine: expectations, requests, connections.
    assert len([e for e in page.found if e[0] == "table"]) == 1 + 2 * 3
    assert len([e for e in page.found if e[0] == "pre"]) == 4  # a ladder per connection


def test_markdown_escapes_every_attack_and_keeps_tables_whole():
    report = hostile(sample_report())
    text = markdown.render_markdown(report)
    assert not any(c in text for c in "\x00\x1b\x7f\x85\u202e\u2028\r")
    html = markdown_html(text)
    page = Elements(html)
    assert not [e for e in page.found if e[0] in ("script", "img", "svg", "a", "del", "em")]
    tags = [e[0] for e in page.found]
    assert tags.count("code") == tags.count("pre")  # code only in the ladders' blocks
    assert not [name for _, attrs, _ in page.found for name in attrs if name.startswith("on")]
    assert ATTACKS[0] in "".join(page.text)
    # Every row of every table has as many cells as its header: no `|` got through.
    for table in html.split("<table>")[1:]:
        body = table.split("</table>")[0]
        header = len(re.findall(r"<th[ >]", body.split("</tr>")[0]))
        rows = body.split("<tbody>")[1].split("</tr>")[:-1] if "<tbody>" in body else []
        assert header and all(len(re.findall(r"<td[ >]", row)) == header for row in rows)
    # ...and a cell says exactly what the record says, pipes, stars and all.
    overview = html.split("<tbody>")[1].split("</tr>")[0]
    cells = [html_lib.unescape(c.split("</td>")[0]) for c in overview.split("<td>")[1:]]
    assert cells[1] == view.visible(report.runs[0].description)


# --------------------------------------------------------------- JUnit


def test_junit_has_a_case_per_expectation_per_engine():
    report = sample_report()
    root = ET.fromstring(junit.render_junit(report))
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "1"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["closes", "keeps"]
    cases = suites[1].findall("testcase")
    assert [c.get("name") for c in cases] == [e.claim for e in report.runs[1].expectations]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None and "reset by the client" in failure.get("message")
    assert cases[1].get("file") == "samples.yaml" and cases[1].get("line") == "21"


def test_junit_turns_an_inconclusive_engine_into_errors():
    report = sample_report()
    report.runs[0].verdict = "inconclusive"
    report.runs[0].capture.problems = ["the kernel dropped 3 packet(s)"]
    report.runs[0].expectations = []
    suite = ET.fromstring(junit.render_junit(report)).findall("testsuite")[0]
    (case,) = suite.findall("testcase")
    assert suite.get("errors") == "1" and "dropped 3" in case.find("error").get("message")


def test_junit_stays_well_formed_xml_with_hostile_text():
    root = ET.fromstring(junit.render_junit(hostile(sample_report())))
    names = [c.get("name") for c in root.iter("testcase")]
    assert all(ATTACKS[0] in n for n in names)


# --------------------------------------------------------------- kalab report


def test_kalab_report_regenerates_every_view_from_the_json(tmp_path):
    report = sample_report()
    report_mod.write(report, tmp_path)
    done = run_kalab("report", str(tmp_path))
    assert done.returncode == 1, done.stderr  # the run's verdict: an expectation failed
    for name in (*render.OUTPUTS, "summary.txt"):
        assert f"wrote {tmp_path / name}" in done.stdout
    assert (tmp_path / "report.html").read_text() == render_html(report)
    assert (tmp_path / "report.md").read_text() == markdown.render_markdown(report)
    assert "FAIL" in (tmp_path / "summary.txt").read_text()
    assert validator().is_valid(json.loads((tmp_path / "report.json").read_text()))


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a valid report"),
    (json.dumps({"schema": "other/1"}), "not a kalab report (one of kalab.report/1, "
                                        "kalab.report/2)"),
    (json.dumps({"schema": report_mod.SCHEMA, "runs": [{"engine": "x"}]}), "not a valid report"),
])
def test_kalab_report_refuses_what_is_not_a_report(tmp_path, content, message):
    broken = tmp_path / "broken.json"  # not report.json: the suite's schema sweep skips it
    broken.write_text(content)
    done = run_kalab("report", str(broken))
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "report.html").exists()


def as_schema_1(report: report_mod.Report) -> dict:
    """``report`` as kalab.report/1 wrote it: ``closed_by`` held how too, no ``closed_with``."""
    data = json.loads(report_mod.to_json(report))
    data["schema"] = report_mod.SCHEMA_1
    for run in data["runs"]:
        for conn in run["connections"]:
            closed_by, closed_with = conn["closed_by"], conn.pop("closed_with")
            conn["closed_by"] = "refused" if conn["refused"] else "open" if closed_by is None \
                else f"{closed_by}-reset" if closed_with == "rst" else closed_by
    return data


def test_kalab_report_reads_a_report_of_schema_1(tmp_path):
    report = sample_report()
    old_json = tmp_path / "report-1.json"  # not report.json: the schema sweep wants /2
    old_json.write_text(json.dumps(as_schema_1(report)))
    done = run_kalab("report", str(old_json))
    assert done.returncode == 1, done.stderr
    # The same views as from the /2 report: /1's closed_by says what /2's two fields say.
    assert (tmp_path / "report.md").read_text() == markdown.render_markdown(report)
    old = report_mod.from_dict(as_schema_1(report))
    assert [(c.closed_by, c.closed_with) for run in old.runs for c in run.connections] == \
        [(c.closed_by, c.closed_with) for run in report.runs for c in run.connections]
    assert {(c.closed_by, c.closed_with) for run in old.runs for c in run.connections} >= \
        {("server", "fin"), ("client", "rst"), ("server", "rst")}


def test_a_report_of_schema_1_is_graded_on_what_it_says_as_2_does():
    from kalab.course.grade import differences

    report = sample_report()
    old = report_mod.from_dict(as_schema_1(report))
    # The fields /2 added or changed are not held against a /1 report...
    for run in old.runs:
        for conn in run.connections:
            conn.history = conn.advertised_timeout = None
    assert differences(old, report) == []
    # ...what it did say is.
    old.runs[0].connections[0].closed_by = "client"
    assert differences(old, report) == [
        "closes: report.json says connection 1 closed_by = 'client'; its pcaps say 'server'"]


def test_kalab_report_on_a_missing_folder_is_bad_input(tmp_path):
    done = run_kalab("report", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "nowhere" in done.stderr


def test_the_views_are_package_data():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"kalab.render" = ["templates/*"]' in pyproject


def test_a_capture_of_many_connections_draws_the_first_and_tables_the_rest():
    report = sample_report()
    run = report.runs[0]
    template_conn, template_req = run.connections[0], run.requests[0]
    run.connections, run.requests = [], []
    for n in range(1, view.MAX_LADDERS + 4):
        run.connections.append(dataclasses.replace(template_conn, id=n, requests=[str(n)]))
        run.requests.append(dataclasses.replace(template_req, id=str(n), connection=n))
    page = Elements(render_html(report))
    drawn = [e for e in page.with_class("lane-pair") if e[2]["data-engine"] == "closes"]
    assert len(drawn) == view.MAX_LADDERS
    assert "3 more connection(s) are not drawn" in "".join(page.text)
    rows = [e for e in page.found if e[0] == "tr"]
    assert len(rows) > 2 * (view.MAX_LADDERS + 3)  # every request and connection in the tables
    assert "3 more connection(s) are not drawn" in markdown.render_markdown(report)


def test_the_readme_shows_a_screenshot_of_the_bundled_labs_report():
    readme = (ROOT / "README.md").read_text()
    assert "](docs/report.png)" in readme and "kalab report results/" in readme
    png = (ROOT / "docs" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1200 and height >= 1000


def test_the_terminal_summary_shows_controls_from_the_wire_never_obeys_them():
    """An escape sequence in a request target must not reach the terminal: it could clear
    the screen, retitle it, or hide text."""
    from kalab import summary

    report = hostile(sample_report())
    report.runs[0].requests[0].target = "/\x1b[2J\x1b]0;owned\x07\u202eevil"
    report.runs[0].engine_log = ["GET /\x1b[31mred HTTP/1.1"]
    text = summary.as_text(report)
    assert not [c for c in text if (ord(c) < 0x20 and c != "\n") or c in "\x7f\x85\u202e"]
    assert "\u241b[2J" in text  # shown as the picture of ESC
