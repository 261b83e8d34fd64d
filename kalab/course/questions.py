"""Questions: text, a query for the answer, an answer type, points; and checking an answer.

A question's right answer is the value its query (`kalab.course.query`)
takes in the student's own run, read through the question's answer type:

- ``count``: a whole number, exactly (the number of connections);
- ``number``: a number, right within ``tolerance`` (seconds idle before a
  close; the tolerance is the question's, default 0.1);
- ``port``: a TCP port, exactly (the client port that carried request 3);
- ``side``: ``server`` or ``client`` (who closed a connection, with a FIN or
  a RST: the report's ``closed_by``);
- ``yes-no``: ``yes`` or ``no`` (was request 2 sent on a reused connection?);
- ``choice``: one of the question's ``choices``, compared without regard
  to case or surrounding spaces (the story of a request).

`key_value` turns a query's value into the answer a key holds (refusing a
run that does not answer the question: a connection never closed has no
closer); `mark` checks a student's answer against it and says why, quoting
the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kalab.course.query import Answer, Query, QueryError, evaluate
from kalab.report import Report

ANSWER_TYPES = ("count", "number", "port", "side", "yes-no", "choice")
SIDES = ("server", "client")
DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    query: Query
    type: str
    points: float = 1.0
    tolerance: float = DEFAULT_TOLERANCE  # number answers only
    choices: tuple[str, ...] = ()  # choice answers only
    look: str = ""  # where to look: in the report, in Wireshark
    line: int = 0  # where the lab states it


@dataclass(frozen=True)
class Mark:
    """One answer, marked."""

    question: Question
    given: Any  # what the student answered (None: no answer)
    expected: Any  # what the wire says
    right: bool
    score: float
    evidence: str  # why, quoting the wire


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _whole(value: Any) -> int | None:
    number = _number(value)
    if number is None or number != int(number):
        return None
    return int(number)


def _word(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (str, int, float)):
        return str(value).strip().lower()
    return None


def key_value(question: Question, answer: Answer) -> Any:
    """What a key holds for ``question`` given the query's ``answer``; `QueryError` when
    the run does not answer it."""
    value, kind = answer.value, question.type
    if value is None:
        raise QueryError(f"{question.id}: the run does not show it ({answer.evidence})")
    if kind in ("count", "port"):
        whole = _whole(value)
        if whole is None:
            raise QueryError(f"{question.id}: {value!r} is not a whole number")
        return whole
    if kind == "number":
        number = _number(value)
        if number is None:
            raise QueryError(f"{question.id}: {value!r} is not a number")
        return round(number, 3)
    if kind == "side":
        side = str(value)
        if side not in SIDES:
            raise QueryError(f"{question.id}: no side in this run ({answer.evidence})")
        return side
    if kind == "yes-no":
        if not isinstance(value, bool):
            raise QueryError(f"{question.id}: {value!r} is not yes or no")
        return "yes" if value else "no"
    word = _word(value)
    if word not in [c.lower() for c in question.choices]:
        raise QueryError(f"{question.id}: the run's answer {value!r} is not among the "
                         f"choices ({', '.join(question.choices)})")
    return next(c for c in question.choices if c.lower() == word)


def right_answer(question: Question, report: Report) -> tuple[Any, str]:
    """The key's answer to ``question`` from ``report``, and the evidence for it."""
    answer = evaluate(question.query, report)
    return key_value(question, answer), answer.evidence


def _matches(question: Question, given: Any, expected: Any) -> bool:
    kind = question.type
    if kind in ("count", "port"):
        return _whole(given) == expected
    if kind == "number":
        number = _number(given)
        return number is not None and abs(number - expected) <= question.tolerance + 1e-9
    return _word(given) == str(expected).lower()


def mark(question: Question, given: Any, report: Report) -> Mark:
    """Mark one answer against the student's run."""
    expected, evidence = right_answer(question, report)
    if given is None:
        return Mark(question, None, expected, False, 0.0,
                    f"no answer; the wire shows {_shown(expected)}: {evidence}")
    right = _matches(question, given, expected)
    within = f" (within {question.tolerance:g})" if question.type == "number" else ""
    verdict = "right" if right else "wrong"
    return Mark(question, given, expected, right, question.points if right else 0.0,
                f"{verdict}: answered {_shown(given)}, the wire shows {_shown(expected)}"
                f"{within}: {evidence}")


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class Score:
    marks: list[Mark] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(m.score for m in self.marks)

    @property
    def max_score(self) -> float:
        return sum(m.question.points for m in self.marks)
