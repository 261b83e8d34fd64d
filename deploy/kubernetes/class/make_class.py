"""A class as Kubernetes Jobs: one Job per student, each running the lab for that student.

    python deploy/kubernetes/class/make_class.py LAB STUDENTS.txt [--out FOLDER]

writes a kustomize overlay into FOLDER (default: this folder): a copy of the
lab file, one ``students/ID/`` per student ID (the base Job, named
``kalab-run-ID``, with ``KALAB_STUDENT=ID`` for each role, so the lab's params
are drawn for that student, and results in a claim of its own,
``kalab-results-ID``) and the ``kustomization.yaml`` that lists them.
kustomize has no loop, so this writes the overlay's files; render and apply it
with ``kubectl apply -k FOLDER``. The committed overlay is what this script
makes from ``students.txt`` for ``05-idle-gap`` (a test checks it).

Student IDs are names (letters, digits, ``.``, ``_``, ``-``), lower case as
Kubernetes names must be; one a line, ``#`` starts a comment.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from kalab.course.lab import locate  # noqa: E402

BASE = HERE.parent / "base"
# A Kubernetes name's suffix: DNS-1123 labels, and room left in a 63-character name.
STUDENT = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")

STUDENT_KUSTOMIZATION = """\
# Made by make_class.py: the lab's Job for student {student}.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
nameSuffix: -{student}
configMapGenerator:
  - name: kalab-scenario
    behavior: replace
    files:
      - scenario.yaml
patches:
  - patch: |-
      apiVersion: batch/v1
      kind: Job
      metadata:
        name: kalab-run
      spec:
        template:
          spec:
            containers:
{containers}
"""
CONTAINER = """\
              - name: {role}
                env:
                  - {{name: KALAB_STUDENT, value: {student}}}"""


def students(text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        student = line.split("#", 1)[0].strip()
        if not student:
            continue
        if not STUDENT.fullmatch(student):
            raise ValueError(f"line {number}: {student!r} is not a student ID a Kubernetes "
                             "name can carry (lower-case letters, digits, '-', at most 40)")
        if student in found:
            raise ValueError(f"line {number}: {student!r} twice")
        found.append(student)
    if not found:
        raise ValueError("no student IDs")
    return found


def write(lab: Path, ids: list[str], out: Path) -> list[Path]:
    """The overlay's files for ``ids`` in ``out``; the students' folders are made anew."""
    written = []
    shutil.copyfile(lab, out / "lab.yaml")
    written.append(out / "lab.yaml")
    folders = out / "students"
    if folders.exists():
        shutil.rmtree(folders)  # made by this script, as the test checks
    for student in ids:
        folder = folders / student
        folder.mkdir(parents=True)
        shutil.copyfile(lab, folder / "scenario.yaml")
        containers = "\n".join(CONTAINER.format(role=role, student=student)
                               for role in ("server", "observer", "client"))
        base = os.path.relpath(BASE, folder)  # kustomize takes a base from anywhere
        (folder / "kustomization.yaml").write_text(STUDENT_KUSTOMIZATION.format(
            student=student, base=base, containers=containers), encoding="utf-8")
        written.append(folder)
    listing = "\n".join(f"  - students/{student}" for student in ids)
    (out / "kustomization.yaml").write_text(
        "# Made by make_class.py from a list of students: one Job each.\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n{listing}\n", encoding="utf-8")
    written.append(out / "kustomization.yaml")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lab", help="a lab: its file, its folder, or its name in course/")
    parser.add_argument("students", type=Path, help="a file of student IDs, one a line")
    parser.add_argument("--out", type=Path, default=HERE, help="the overlay's folder")
    args = parser.parse_args()
    try:
        ids = students(args.students.read_text(encoding="utf-8"))
        args.out.mkdir(parents=True, exist_ok=True)
        written = write(locate(args.lab), ids, args.out)
    except (OSError, ValueError) as exc:
        print(f"make_class: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(ids)} student Job(s) in {args.out}: "
          f"{', '.join(str(p.relative_to(args.out)) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
