"""Grading one student: their answers against the wire of their own run.

`kalab grade ANSWERS RUN_DIR` never trusts the submitted ``report.json``:
it makes the run's report again from what the roles left in the run folder
(each engine's pcap, capture accounting, server and client records), with
the lab's own file and the student's parameters, and grades against that.
Where the submitted report says something its pcaps do not (who closed a
connection, say), the grade is flagged, naming the difference.

Each question is one graded item (`kalab.course.questions.mark`: right or
wrong, with the wire quoted); each prediction (an expectation written
before the run, in the scenario's expectation language) is another, right
when the wire holds it. The grade goes out as ``junit.xml`` and Gradescope's
``results.json`` (`kalab.course.gradescope`); the exit code is 0 when all
is right, 1 when something is wrong, 2 for bad input.
"""

from __future__ import annotations

import json
import os
import stat
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kalab import evidence
from kalab import report as report_mod
from kalab.course.answers import Answers
from kalab.course.query import QueryError
from kalab.course.questions import mark
from kalab.render.text import visible
from kalab.report import Report
from kalab.scenario import Scenario


@dataclass(frozen=True)
class Item:
    """One graded thing: a question or a prediction."""

    name: str
    score: float
    max_score: float
    passed: bool
    output: str  # why, quoting the wire
    given: Any = None  # what the student answered, for the class's common wrong answers


@dataclass
class Grade:
    lab: str
    student: str | None
    run: str  # the run folder graded
    items: list[Item] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # what a grader must look at

    @property
    def score(self) -> float:
        return round(sum(i.score for i in self.items), 6)

    @property
    def max_score(self) -> float:
        return round(sum(i.max_score for i in self.items), 6)

    @property
    def all_right(self) -> bool:
        return all(i.passed for i in self.items)

    def summary(self) -> str:
        words = f"{self.score:g} of {self.max_score:g} points ({self.lab}"
        words += f", student {self.student})" if self.student else ")"
        for flag in self.flags:
            words += f"\nFLAGGED: {flag}"
        return words


# What must agree between a submitted report and the one its pcaps give: the records
# themselves, not when the report was written.
_COMPARED = ("connections", "requests", "expectations", "verdict", "client_errors")


def differences(submitted: Report, rebuilt: Report) -> list[str]:
    """Where ``submitted`` says what its pcaps (``rebuilt``) do not, in words."""
    found: list[str] = []
    ours = {run.engine: run for run in rebuilt.runs}
    theirs = {run.engine: run for run in submitted.runs}
    if set(ours) != set(theirs):
        found.append(f"report.json has engines {sorted(theirs)}, its pcaps {sorted(ours)}")
    for name in sorted(set(ours) & set(theirs)):
        mine, claimed = asdict(ours[name]), asdict(theirs[name])
        if submitted.schema == report_mod.SCHEMA_1:  # only what /1 says as /2 does
            for part, kept in report_mod.KEPT_FROM_1.items():
                mine[part] = [{k: v for k, v in r.items() if k in kept} for r in mine[part]]
                claimed[part] = [{k: v for k, v in r.items() if k in kept}
                                 for r in claimed[part]]
        for part in _COMPARED:
            found += [f"{name}: {line}" for line in _diff(part, claimed[part], mine[part])]
    if submitted.student != rebuilt.student:
        found.append(f"report.json is for student {submitted.student!r}, the answers for "
                     f"{rebuilt.student!r}")
    return found


def _diff(where: str, claimed: Any, actual: Any) -> list[str]:
    if claimed == actual:
        return []
    if isinstance(claimed, list) and isinstance(actual, list):
        if len(claimed) != len(actual):
            return [f"report.json has {len(claimed)} {where}, its pcaps {len(actual)}"]
        out: list[str] = []
        for one, other in zip(claimed, actual, strict=True):
            out += _diff(where, one, other)
        return out
    if isinstance(claimed, dict) and isinstance(actual, dict):
        label = claimed.get("id", "")
        one = where.removesuffix("s")  # "connections" -> "connection 1"
        label = f"{one} {label}" if label != "" else where
        return [f"report.json says {label} {key} = {claimed.get(key)!r}; its pcaps say "
                f"{actual.get(key)!r}"
                for key in sorted(set(claimed) | set(actual))
                if claimed.get(key) != actual.get(key)]
    return [f"report.json says {where} = {claimed!r}; its pcaps say {actual!r}"]


def junit(grade: Grade) -> str:
    """The grade as JUnit XML: one test case per question and prediction."""
    root = ET.Element("testsuites", name=visible(f"kalab grade {grade.lab}"))
    suite = ET.SubElement(root, "testsuite", name=visible(grade.student or grade.lab),
                          tests=str(len(grade.items)),
                          failures=str(sum(not i.passed for i in grade.items)),
                          errors="0", skipped="0")
    props = ET.SubElement(suite, "properties")
    for key, value in (("lab", grade.lab), ("student", grade.student), ("run", grade.run),
                       ("score", f"{grade.score:g}"), ("max_score", f"{grade.max_score:g}")):
        if value is not None:
            ET.SubElement(props, "property", name=key, value=visible(value))
    for item in grade.items:
        case = ET.SubElement(suite, "testcase", name=visible(item.name),
                             classname=visible(f"{grade.lab}.{grade.student or 'student'}"))
        if not item.passed:
            failure = ET.SubElement(case, "failure", message=visible(item.output))
            failure.text = visible(item.output)
        else:
            ET.SubElement(case, "system-out").text = visible(item.output)
    if grade.flags:
        ET.SubElement(suite, "system-err").text = "\n".join(
            visible(f"FLAGGED: {flag}") for flag in grade.flags)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


# What a run folder may hold for grading, and how big: it comes from a student.
MAX_PCAP_BYTES = 256 << 20
MAX_RECORD_BYTES = 16 << 20
_ENGINE_FILES = ("capture.json", "capture.pcap", "server.json", "client.json",
                 "server.log", "nginx-error.log")


class RunFolderError(ValueError):
    """A run folder that cannot be graded (missing, linked out, a device, too big)."""


def check_run_folder(run_dir: Path, scenario: Scenario) -> None:
    """Refuse a run folder whose files are not plain files inside it, or too big: the
    grader runs as whoever grades, on what a student handed in."""
    if not run_dir.is_dir():  # the folder named may be a link (results/latest); not within
        raise RunFolderError(f"{run_dir}: not a run folder")
    root = run_dir.resolve()
    paths = [run_dir / "report.json"]
    for engine in scenario.engines:
        folder = run_dir / engine.name
        if folder.is_symlink():
            raise RunFolderError(f"{folder}: a link; a run folder holds its own files")
        paths += [folder / name for name in _ENGINE_FILES]
    for path in paths:
        if not os.path.lexists(path):
            continue
        info = path.lstat()
        if path.is_symlink() or not stat.S_ISREG(info.st_mode) or \
                not path.resolve().is_relative_to(root):
            raise RunFolderError(f"{path}: not a plain file inside the run folder")
        limit = MAX_PCAP_BYTES if path.suffix == ".pcap" else MAX_RECORD_BYTES
        if info.st_size > limit:
            raise RunFolderError(f"{path}: {info.st_size} bytes, more than the {limit} a "
                                 "run of a lab makes")
    if not (run_dir / "report.json").is_file():
        raise RunFolderError(f"{run_dir}: no report.json: not a run folder")


def rebuild(run_dir: Path, scenario: Scenario) -> tuple[Report, Report]:
    """The submitted report, and the report made again from the run folder's pcaps and
    records with the lab's own file: the one to grade against."""
    check_run_folder(run_dir, scenario)
    try:
        submitted = report_mod.from_dict(json.loads(
            (run_dir / "report.json").read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RunFolderError(f"{run_dir / 'report.json'}: not a kalab report: {exc}") from None
    try:
        rebuilt = evidence.build_report(
            run_dir, scenario, list(scenario.engines), submitted.runtime,
            submitted.started_at, label=submitted.scenario,
            interrupted=None if submitted.complete else (submitted.phase or "scenario"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunFolderError(f"{run_dir}: its records cannot be read: {exc}") from None
    return submitted, rebuilt


def grade_run(scenario: Scenario, answers: Answers, run_dir: Path) -> Grade:
    """Grade ``answers`` against the wire of the run in ``run_dir``."""
    submitted, report = rebuild(run_dir, scenario)
    grade = Grade(scenario.name, answers.student, str(run_dir))
    grade.flags += differences(submitted, report)
    if report.verdict in ("inconclusive", "interrupted"):
        grade.flags.append(f"the run is {report.verdict}: "
                           + "; ".join(p for r in report.runs for p in r.capture.problems
                                       or [f"{r.engine}: {r.verdict}"]))
    assert scenario.course is not None
    for question in scenario.course.questions:
        given = answers.answers.get(question.id)
        name = f"{question.id}: {question.text}"
        try:
            marked = mark(question, given, report)
        except QueryError as exc:
            grade.items.append(Item(name, 0.0, question.points, False,
                                    f"not graded: the run does not answer it ({exc})", given))
            grade.flags.append(f"{question.id}: the run does not answer it")
            continue
        grade.items.append(Item(name, marked.score, question.points, marked.right,
                                marked.evidence, given))
    runs = {run.engine: run for run in report.runs}
    for engine, predicted in answers.predictions.items():
        run = runs.get(engine)
        for expectation in predicted:
            name = f"prediction, {engine}: {expectation.claim}"
            if run is None or run.verdict == "interrupted":
                grade.items.append(Item(name, 0.0, PREDICTION_POINTS, False,
                                        f"{engine} did not run to the end: not checked"))
                continue
            result = evidence.check(expectation, run.requests, run.connections)
            grade.items.append(Item(
                name, PREDICTION_POINTS if result.passed else 0.0, PREDICTION_POINTS,
                result.passed, f"{'held' if result.passed else 'refuted'}: "
                f"wire: {result.observed}"))
    return grade


PREDICTION_POINTS = 1.0
