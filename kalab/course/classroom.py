"""A whole class graded at once: `kalab grade --class SUBMISSIONS_DIR`.

SUBMISSIONS_DIR holds one folder per student (the folder's name is only a
label: the student ID is the one in the answers file), each with an answers
file (``answers.yaml``, ``answers.yml`` or ``answers.json``) and a run
folder (any folder in it holding a ``report.json``), or no run folder and
``run: reference`` in the answers (a student without root who worked on
the lab's reference run). Each is graded as `kalab grade` grades one; a
submission that cannot be graded (no answers, a broken file) scores 0 and
says why. Submissions come from students: every file read must be a regular
file inside the submission (no links out, no devices), and reads are bounded.

The class summary, beside one folder of ``results.json`` and ``junit.xml``
per student: ``class.csv`` (a row per student: score, max, each question
right or wrong, flags) and ``class.html`` (per question the share right and
the most common wrong answers; per student the score).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kalab.course.grade import Grade, junit
from kalab.course.gradescope import results
from kalab.course.worksheet import environment
from kalab.render.text import visible

ANSWER_FILES = ("answers.yaml", "answers.yml", "answers.json")
COMMON_WRONG = 3  # wrong answers shown per question


@dataclass
class Submission:
    label: str  # the folder's name
    grade: Grade | None = None
    error: str | None = None  # why it could not be graded

    @property
    def score(self) -> float:
        return self.grade.score if self.grade else 0.0


@dataclass
class QuestionStats:
    name: str
    right: int = 0
    answered: int = 0
    wrong: Counter = field(default_factory=Counter)

    def share(self, students: int) -> float:
        return self.right / students if students else 0.0


def find(folder: Path) -> list[tuple[str, Path | None, Path | None]]:
    """Each student's folder: (label, answers file, run folder), in name order."""
    found = []
    for student in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()
                          and not p.name.startswith(".")):
        answers = next((student / name for name in ANSWER_FILES
                        if (student / name).is_file() and not (student / name).is_symlink()),
                       None)
        runs = sorted(p.parent for p in student.rglob("report.json")
                      if not p.is_symlink() and _inside(p.parent, student))
        found.append((student.name, answers, runs[0] if runs else None))
    return found


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def grade_class(folder: Path, grade_one: Callable[[Path, Path | None], Grade],
                out: Path) -> list[Submission]:
    """Grade every submission with ``grade_one(answers, run_dir)``; write the summary."""
    submissions = []
    for label, answers, run in find(folder):
        submission = Submission(label)
        if answers is None:
            submission.error = f"no answers file ({' or '.join(ANSWER_FILES)})"
        else:
            try:
                submission.grade = grade_one(answers, run)
            except (OSError, ValueError) as exc:  # bad input of one student's: not the class's
                submission.error = str(exc)
        submissions.append(submission)
        _write_student(out / label, submission)
    out.mkdir(parents=True, exist_ok=True)
    (out / "class.csv").write_text(to_csv(submissions), encoding="utf-8")
    (out / "class.html").write_text(to_html(submissions), encoding="utf-8")
    return submissions


def _write_student(folder: Path, submission: Submission) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if submission.grade is not None:
        (folder / "results.json").write_text(
            json.dumps(results(submission.grade), indent=2, allow_nan=False) + "\n",
            encoding="utf-8")
        (folder / "junit.xml").write_text(junit(submission.grade), encoding="utf-8")
    else:
        (folder / "error.txt").write_text(f"{submission.error}\n", encoding="utf-8")


def questions(submissions: list[Submission]) -> list[QuestionStats]:
    """Per graded item: how many got it right, and the wrong answers given."""
    stats: dict[str, QuestionStats] = {}
    for submission in submissions:
        for item in submission.grade.items if submission.grade else []:
            entry = stats.setdefault(item.name, QuestionStats(item.name))
            entry.right += item.passed
            entry.answered += 1
            if not item.passed and item.given is not None:
                entry.wrong[str(item.given)] += 1
    return list(stats.values())


def to_csv(submissions: list[Submission]) -> str:
    names = [q.name for q in questions(submissions)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["folder", "student", "score", "max_score", *names, "flags"])
    for s in submissions:
        grade = s.grade
        marks = {i.name: ("right" if i.passed else "wrong") for i in grade.items} \
            if grade else {}
        flags = "; ".join(grade.flags) if grade else f"not graded: {s.error}"
        writer.writerow([_cell(s.label), _cell(grade.student if grade else ""),
                         f"{s.score:g}", f"{grade.max_score:g}" if grade else "",
                         *[marks.get(n, "") for n in names], _cell(flags)])
    return out.getvalue()


def _cell(text: str | None) -> str:
    """A CSV cell from a student's text: controls shown, and no formula for a spreadsheet
    to run (a cell starting with =, +, - or @ gets a quote in front)."""
    text = visible(text or "")
    return f"'{text}" if text[:1] in ("=", "+", "-", "@") else text


def to_html(submissions: list[Submission]) -> str:
    graded = [s for s in submissions if s.grade]
    top = max((s.grade.max_score for s in graded), default=0.0)
    return environment().get_template("class.html.j2").render(
        submissions=submissions, stats=questions(submissions), count=len(submissions),
        mean=sum(s.score for s in submissions) / len(submissions) if submissions else 0.0,
        top=top, common=COMMON_WRONG)
