"""The student's worksheet, and the key made from a run: never a key typed by hand.

`worksheet_markdown` and `worksheet_html` lay out a lab (a scenario with a
``course:`` block, `kalab.scenario`): what it teaches, what to read first,
how to run it (or, without root, where its reference run is), what to look
for, and each question with its points and where to look, then the answers
file to fill in. The HTML page is self-contained: inline CSS, no script,
nothing fetched; the lab's texts are Markdown, rendered with raw HTML off.

`make_key` answers every question from a run's report through the
question's query (`kalab.course.questions.right_answer`); `key_text` writes
it in the very format a student's answers file has (YAML, or JSON), each
answer with the wire's evidence beside it as a comment, so grading a key
against its own run gives full marks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from markdown_it import MarkdownIt

from kalab.course.lab import COURSE_DIR, reference_run
from kalab.course.questions import Question, right_answer
from kalab.render.text import visible
from kalab.report import Report
from kalab.scenario import Scenario

TYPE_WORDS = {
    "count": "a whole number",
    "number": "a number (seconds where it is a time)",
    "port": "a TCP port number",
    "side": "server or client",
    "yes-no": "yes or no",
    "choice": "one of the choices",
}
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False})


def _course(scenario: Scenario):  # noqa: ANN202 - the scenario's Course
    if scenario.course is None:
        raise ValueError(f"{scenario.file}: not a lab (it has no course: block)")
    return scenario.course


def how_to_answer(question: Question) -> str:
    words = TYPE_WORDS[question.type]
    if question.type == "choice":
        words += ": " + ", ".join(question.choices)
    if question.type == "number":
        words += f"; right within {question.tolerance:g}"
    return words


def _shown_path(path: Path) -> str:
    """A lab's path as a student types it: from the project's top when it is inside it."""
    top = COURSE_DIR.parent
    resolved = path.resolve()
    return str(resolved.relative_to(top)) if resolved.is_relative_to(top) else str(path)


def _reference(scenario: Scenario) -> str | None:
    folder = reference_run(Path(scenario.file))
    return _shown_path(folder) if folder.is_dir() else None


def worksheet_markdown(scenario: Scenario, student: str | None = None) -> str:
    """The worksheet as Markdown."""
    course = _course(scenario)
    out = [f"# {course.title}", "", f"Lab `{scenario.name}`"
           + (f", for student `{student}`" if student else "") + ".", ""]
    for heading, text in (("What this lab teaches", course.teaches),
                          ("Read first", course.read_first)):
        out += [f"## {heading}", "", text.strip(), ""]
    out += ["## Run it", "", *_run_lines(scenario, student), "",
            "## What to look for", "", course.look_for.strip(), "", "## Questions", ""]
    for number, question in enumerate(course.questions, 1):
        points = f"{question.points:g} point{'s' if question.points != 1 else ''}"
        out += [f"{number}. **{question.text}** ({points}; answer {how_to_answer(question)})"]
        if question.look:
            out += [f"   Where to look: {question.look}"]
        out += [""]
    out += ["## Your answers", "", "Fill in this file and hand it in with your run folder:",
            "", "```yaml", answers_template(scenario, student), "```", ""]
    return "\n".join(out)


def _run_lines(scenario: Scenario, student: str | None) -> list[str]:
    who = f" --student {student}" if student else ""
    lines = ["With root on Linux (the lab makes network namespaces):", "", "```sh",
             f"./lab run {_shown_path(Path(scenario.file))}{who}", "```", "",
             "The run folder (`results/...`) holds `report.html` (open it in a browser), "
             "`report.json` and one `capture.pcap` per engine (open it in Wireshark)."]
    reference = _reference(scenario)
    if reference:
        lines += ["", f"Without root or Docker: use the lab's reference run in "
                  f"`{reference}` (its `report.html` and pcaps), or `kalab analyze` a pcap "
                  "from it, and say `run: reference` in your answers."]
    return lines


def answers_template(scenario: Scenario, student: str | None = None) -> str:
    """An answers file with every question left blank."""
    course = _course(scenario)
    lines = [f"lab: {scenario.name}", f"student: {student or 'YOUR-ID'}", "answers:"]
    lines += [f"  {q.id}:    # {q.text}" for q in course.questions]
    return "\n".join(lines)


_ENV: jinja2.Environment | None = None


def _shown(value: Any) -> Any:
    """What a template prints: markup made here as it is, any other text with its
    controls shown (line breaks kept)."""
    if isinstance(value, markupsafe.Markup) or not isinstance(value, str):
        return value
    return visible_block(value)


def environment() -> jinja2.Environment:
    """The course's templates: autoescaped; every string shown through `visible`."""
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(
            loader=jinja2.PackageLoader("kalab.course", "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
            finalize=_shown)
        _ENV.filters["markdown"] = lambda text: markupsafe.Markup(
            _MARKDOWN.render(visible_block(text)))
        _ENV.filters["visible"] = visible
        _ENV.filters["visible_lines"] = visible_block
    return _ENV


def visible_block(text: str) -> str:
    """A multi-line text with its line breaks kept and every other control shown."""
    return "\n".join(visible(line) for line in str(text).split("\n"))


def worksheet_html(scenario: Scenario, student: str | None = None) -> str:
    """The worksheet as one self-contained HTML page."""
    course = _course(scenario)
    return environment().get_template("worksheet.html.j2").render(
        scenario=scenario, course=course, student=student, how=how_to_answer,
        run="\n".join(_run_lines(scenario, student)),
        template=answers_template(scenario, student))


@dataclass(frozen=True)
class KeyAnswer:
    question: Question
    value: Any
    evidence: str


@dataclass(frozen=True)
class Key:
    lab: str
    student: str | None
    run: str  # the run folder the key was made from
    answers: tuple[KeyAnswer, ...]


def make_key(scenario: Scenario, report: Report, run: str) -> Key:
    """Every question answered from ``report`` (`QueryError` if the run cannot answer one)."""
    course = _course(scenario)
    answers = []
    for question in course.questions:
        value, evidence = right_answer(question, report)
        answers.append(KeyAnswer(question, value, evidence))
    return Key(scenario.name, report.student, run, tuple(answers))


def key_text(key: Key, form: str = "yaml") -> str:
    """The key in the format of a student's answers file (``yaml`` or ``json``)."""
    if form == "json":
        return json.dumps({"lab": key.lab, "student": key.student, "run": key.run,
                           "answers": {a.question.id: a.value for a in key.answers}},
                          indent=2, allow_nan=False) + "\n"
    lines = [f"# The key of lab {key.lab}, made by `kalab worksheet --answers` from the run",
             f"# {visible(key.run)}: every answer is what that run's wire shows.",
             f"lab: {key.lab}"]
    if key.student is not None:
        lines.append(f"student: {key.student}")
    lines += [f"run: {json.dumps(visible(key.run))}", "answers:"]
    for answer in key.answers:
        value = json.dumps(answer.value) if isinstance(answer.value, str) else answer.value
        lines.append(f"  {answer.question.id}: {value}")
        lines.append(f"    # {visible(answer.evidence)}")
    return "\n".join(lines) + "\n"
