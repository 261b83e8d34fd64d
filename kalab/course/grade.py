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

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import Any

from kalab.render.text import visible
from kalab.report import Report


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
        label = f"{where} {label}".strip() if label != "" else where
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
