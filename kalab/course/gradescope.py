"""Gradescope's formats: a grade as ``results.json``, and an autograder folder.

``results.json`` follows Gradescope's autograder specification
(gradescope-autograders.readthedocs.io, "Output format"): a top-level
``score`` and ``max_score``, and one entry in ``tests`` per question and
per prediction, each with ``name``, ``score``, ``max_score``, ``status``
(``passed`` or ``failed``), ``output`` (the evidence, quoting the wire) and
``visibility``. A test keeps that format as a JSON Schema
(tests/gradescope-results.schema.json).

The autograder folder (``kalab course autograder LAB OUT``) holds
``setup.sh``, which installs the lab from the copy of the project placed
beside it, and ``run_autograder``, which grades the uploaded answers
against the uploaded run folder: Gradescope's containers may lack the
capabilities to run the lab itself, so students run it (or use the lab's
reference run) and upload the result.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kalab.course.grade import Grade

VISIBILITY = "visible"  # the evidence is the teaching: students see it at once


def results(grade: Grade, execution_time: float | None = None) -> dict[str, Any]:
    """The grade in Gradescope's results.json shape."""
    out: dict[str, Any] = {
        "score": grade.score,
        "max_score": grade.max_score,
        "output": grade.summary(),
        "visibility": VISIBILITY,
        "stdout_visibility": "hidden",
        "tests": [{
            "name": item.name,
            "number": str(number),
            "score": item.score,
            "max_score": item.max_score,
            "status": "passed" if item.passed else "failed",
            "output": item.output,
            "visibility": VISIBILITY,
        } for number, item in enumerate(grade.items, 1)],
    }
    if execution_time is not None:
        out["execution_time"] = round(execution_time, 3)
    return out


SETUP = """\
#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image.
set -euo pipefail
cd /autograder/source
apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install -q ./keepalive-lab
"""

RUN = """\
#!/usr/bin/env bash
# Gradescope runs this for every submission: grade the uploaded answers against the
# uploaded run folder (made by `kalab run LAB --student ID`), or against the lab's
# reference run when the answers say `run: reference`.
set -uo pipefail
cd /autograder/submission
answers=$(ls answers.yaml answers.yml answers.json 2>/dev/null | head -1)
run=$(find . -name report.json -not -path '*/grading/*' -printf '%h\\n' | sort | head -1)
/autograder/venv/bin/kalab grade "${{answers:-answers.yaml}}" ${{run:+"$run"}} \\
    --lab "/autograder/source/lab/{lab_file}" --out /autograder/results
# The grade is in results.json whatever the exit code (1: some answers were wrong).
exit 0
"""


def write_autograder(lab_file: Path, project: Path, out: Path) -> list[Path]:
    """An autograder folder for ``lab_file`` in ``out`` (new or empty); what it wrote:
    the lab's folder (its file and reference run), a copy of the project, the scripts."""
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    ignore = shutil.ignore_patterns(".git", ".venv", "results", "__pycache__", "*.egg-info",
                                    ".pytest_cache", ".ruff_cache", ".hypothesis", "grading")
    lab = out / "lab"
    shutil.copytree(lab_file.parent, lab, ignore=ignore, symlinks=False)
    source = out / "keepalive-lab"
    shutil.copytree(project, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", "__pycache__", "*.egg-info", ".pytest_cache",
        ".ruff_cache", ".hypothesis", "course", "tests", "bench", "docs"))
    written = [lab, source]
    for name, text in (("setup.sh", SETUP), ("run_autograder",
                                             RUN.format(lab_file=lab_file.name))):
        path = out / name
        path.write_text(text, encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        written.append(path)
    return written
