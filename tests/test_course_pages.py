"""The course's pages in a real browser: the worksheet and the class summary.

Lab files and answers come from others: a lab's Markdown with a script in
it, a question with markup, an answer with a formula. Chromium must show
each as text and run nothing, with or without the page's CSP.
"""

from __future__ import annotations

import re

import pytest
from browser import Elements, dump_dom, marker_set, require_chromium
from conftest import ROOT
from report_samples import ATTACKS, MARKER

from kalab.course import classroom, worksheet
from kalab.course.grade import Grade, Item
from kalab.scenario import load, parse

CSP_PATTERN = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>')


HOSTILE_LAB = """\
name: hostile
course:
  title: "{title}"
  teaches: |
    {script}
    [a link](javascript:alert(1)) <img src=x onerror="alert(1)">
  look_for: "{markup}"
  read_first: plain
  questions:
    - id: q1
      text: "{markup}"
      answer: {{query: connections.count, type: count}}
      look: "{markup}"
sessions: [{{steps: [get: /]}}]
engines: [{{engine: werkzeug}}]
"""


def hostile_lab():
    quote = ATTACKS[1].replace('"', "'")
    return parse(HOSTILE_LAB.format(title=quote, script=ATTACKS[0], markup=quote),
                 "hostile.yaml")


@pytest.mark.parametrize("strip_csp", [False, True], ids=["with-csp", "without-csp"])
def test_a_hostile_lab_s_worksheet_runs_nothing(tmp_path, strip_csp):
    require_chromium()
    html = worksheet.worksheet_html(hostile_lab(), "ada")
    assert len(CSP_PATTERN.findall(html)) == 1
    if strip_csp:
        html = CSP_PATTERN.sub("", html)
    page = tmp_path / "worksheet.html"
    page.write_text(html)
    dom = dump_dom(page)
    assert not marker_set(dom, MARKER)
    elements = Elements(dom)
    assert [e for e in elements.found if e[0] in ("script", "img", "iframe")] == []
    assert not [e for e in elements.found if e[1].get("href", "").startswith("javascript:")]
    text = "".join(elements.text)
    assert ATTACKS[0] in text  # shown as text


def test_a_lab_s_worksheet_in_the_browser(tmp_path):
    require_chromium()
    scenario = load(ROOT / "course" / "01-tutorial" / "lab.yaml", "ada")
    page = tmp_path / "worksheet.html"
    page.write_text(worksheet.worksheet_html(scenario, "ada"))
    elements = Elements(dump_dom(page))
    items = [e for e in elements.found if e[0] == "li" and e[1].get("id", "").startswith("q-")]
    assert [e[1]["id"] for e in items] == [f"q-{q.id}" for q in scenario.course.questions]
    text = " ".join(elements.text)
    assert "./lab run course/01-tutorial/lab.yaml --student ada" in text
    assert "lab: 01-tutorial" in text  # the answers file to fill in
    assert [e for e in elements.found if e[0] == "h2"]


def test_the_class_page_shows_students_answers_as_text(tmp_path):
    require_chromium()
    quote = ATTACKS[1]
    grade = Grade("lab", "ada", "run", [
        Item(f"q1: {quote}", 0.0, 1.0, False, quote, given=ATTACKS[0]),
        Item("q2: fine", 1.0, 1.0, True, "right", given="2")])
    submissions = [classroom.Submission("ada", grade),
                   classroom.Submission(ATTACKS[2], error=quote)]
    page = tmp_path / "class.html"
    page.write_text(classroom.to_html(submissions))
    dom = dump_dom(page)
    assert not marker_set(dom, MARKER)
    elements = Elements(dom)
    assert [e for e in elements.found if e[0] in ("script", "img", "svg")] == []
    assert ATTACKS[0] in "".join(elements.text)
    csv = classroom.to_csv([classroom.Submission("=cmd|'/c calc'!A1", grade)])
    assert "\n'=cmd" in csv  # a spreadsheet reads it as text, never a formula
