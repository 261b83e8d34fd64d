"""A student's answers file: what they answered, and what they predicted before the run.

    lab: 05-idle-gap            # the lab's name (its `name:`)
    student: alice              # the ID the lab was run for (its params were drawn for it)
    run: reference              # optional: graded against the lab's reference run
    answers:                    # by question id: a number, a word, yes/no
      below-reused: yes
      server-idle: 3.0
    predictions:                # optional: expectations written before the run, by engine,
      gthread:                  # in the scenario's expectation language; one point each
        - same_connection: [1, 2]
        - close: {request: 2, by: server, idle: 3, tolerance: 0.5}

A key (`kalab worksheet LAB --answers RUN`) is such a file too. Answers
files come from students: they are read as every input is (`kalab.spec`: a
regular file, at most 1 MiB, plain YAML or JSON, no tags or anchors), and
anything wrong is a `ScenarioError` naming the file, line and field (exit 2).
An answer to a question the lab does not have is refused, not ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kalab.scenario import Expectation, Scenario, expectations
from kalab.spec import (
    NAME_PATTERN,
    NAME_RULE,
    ONE_LINE,
    Checker,
    MapOf,
    Node,
    OneOf,
    Record,
    Scalar,
    ScenarioError,
    clip,
    key_where,
    read_text,
    tree,
)

MAX_ANSWERS = 200
MAX_ANSWER_LENGTH = 200
REFERENCE = "reference"  # `run: reference`: the lab's own reference run

_NAME = Scalar("string", "a name: " + NAME_RULE, pattern=NAME_PATTERN, max_length=64,
               says="a name is " + NAME_RULE)
ANSWER = OneOf((Scalar("boolean", "yes or no"),
                Scalar("text", "a number, or a word or a few (server, reused...)",
                       pattern=ONE_LINE, max_length=MAX_ANSWER_LENGTH,
                       says="an answer is one line without control characters")),
               "an answer: a number, a word or a few, yes or no",
               "a number, a word, yes or no")
ANSWERS = Record("a student's answers to a lab's questions (and, beside them, "
                 "predictions: checked by the scenario's expectation rules)", {
    "lab": _NAME,
    "student": _NAME,
    "run": Scalar("string", "the run the answers are about: `reference` for the lab's "
                  "reference run, else a note (the run folder)", pattern=ONE_LINE,
                  max_length=1000, says="a run is one line without control characters"),
    "answers": MapOf(Scalar("string", "a question's id", pattern=NAME_PATTERN, max_length=64,
                            says="a question's id is " + NAME_RULE),
                     ANSWER, "by question id: the answer", MAX_ANSWERS),
}, required=("lab",))
MAX_PREDICTION_ENGINES = 16


@dataclass(frozen=True)
class Answers:
    file: str
    lab: str
    student: str | None
    run: str | None
    answers: dict[str, Any] = field(default_factory=dict)  # by question id
    predictions: dict[str, tuple[Expectation, ...]] = field(default_factory=dict)  # by engine
    lines: dict[str, int] = field(default_factory=dict)  # where each answer is written

    @property
    def on_reference(self) -> bool:
        return self.run == REFERENCE


def lab_file(path: str | os.PathLike[str]) -> Path:
    """The file of the lab an answers file names: by its name, in the project's course
    only (the file is a student's: its `lab:` is no path to read; a lab of a teacher's
    own is given beside it, `kalab grade --lab`). ScenarioError on its line otherwise."""
    from kalab.course.lab import COURSE_DIR, course_lab

    root = _root(read_text(path), str(path))
    node = root.value["lab"]
    Checker(str(path)).check(ANSWERS.fields["lab"], node, "lab")
    named = course_lab(node.value)
    if named is None:
        raise ScenarioError(str(path), node.line, "lab", f"no lab {node.value!r} in the course "
                            f"({COURSE_DIR}); for a lab of your own, give --lab FILE")
    return named


def _root(text: str, file: str) -> Node:
    root = tree(text, file)
    if root is None:
        raise ScenarioError(file, 1, "", "the file is empty")
    if not isinstance(root.value, dict) or "lab" not in root.value:
        raise ScenarioError(file, root.line, "lab", "missing: an answers file names its lab")
    return root


def load(path: str | os.PathLike[str], scenario: Scenario) -> Answers:
    """Read and check an answers file against the lab ``scenario``."""
    file = str(path)
    return parse(read_text(path), file, scenario)


def parse(text: str, file: str, scenario: Scenario) -> Answers:
    root = _root(text, file)
    checker = Checker(file)
    # The predictions are expectations: the scenario's own rules check them, below.
    checker.check(ANSWERS, Node({k: v for k, v in root.value.items() if k != "predictions"},
                                root.line), "")
    fields = root.value
    lab = fields["lab"].value
    if scenario.course is None:
        raise ScenarioError(file, fields["lab"].line, "lab", f"{scenario.file} is not a lab")
    if lab != scenario.name:
        raise ScenarioError(file, fields["lab"].line, "lab",
                            f"these are answers to {lab!r}, not to {scenario.name!r}")
    known = {q.id for q in scenario.course.questions}
    answers, lines = {}, {}
    for key, node in fields["answers"].value.items() if "answers" in fields else ():
        if key not in known:
            raise ScenarioError(file, node.line, f"answers.{key}",
                                f"the lab has no question {key!r} (it has: "
                                f"{', '.join(sorted(known))})")
        answers[key], lines[key] = node.value, node.line
    predictions = {}
    if "predictions" in fields:
        node = fields["predictions"]
        if not isinstance(node.value, dict) or len(node.value) > MAX_PREDICTION_ENGINES:
            raise ScenarioError(file, node.line, "predictions", "expected a mapping of "
                                f"ENGINE: [expectations], for at most "
                                f"{MAX_PREDICTION_ENGINES} engines")
        engines = {engine.name for engine in scenario.engines}
        for engine, items in node.value.items():
            where = key_where("predictions", engine)  # the key is a student's: quoted
            if engine not in engines:
                raise ScenarioError(file, items.line, where, f"the lab has no engine "
                                    f"{clip(repr(engine))} (it has: {', '.join(sorted(engines))})")
            predictions[engine] = tuple(expectations(items, where, scenario, file))
    student = fields["student"].value if "student" in fields else None
    run = fields["run"].value if "run" in fields else None
    return Answers(file, lab, student, run, answers, predictions, lines)
