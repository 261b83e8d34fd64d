"""Make each lab's reference run: `sudo .venv/bin/python course/make_references.py [LAB ...]`.

A reference run is a real run of the lab with its default params (no
student), kept in ``course/LAB/reference/`` so that students without root
or Docker can do the worksheet from its report.html and pcaps (`kalab
analyze`, Wireshark) and answer with ``run: reference``. It is made by this
script, never edited: tests/test_course_references.py checks that each
report still matches its pcaps and that the key made from it grades full.

Each lab runs into a new folder beside the old reference, which is replaced
only when the run passed; the folder it replaces must be a run folder (it
holds a report.json), as this script made it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COURSE = Path(__file__).resolve().parent
ROOT = COURSE.parent
PARALLEL = 3  # labs side by side, each in namespaces of its own


def make(lab: str) -> tuple[bool, str]:
    """Run ``lab`` and make it the reference; (made, what happened in words)."""
    folder = COURSE / lab
    fresh, reference = folder / "reference.new", folder / "reference"
    if fresh.exists():
        return False, f"{lab}: {fresh} is in the way (a run cut short?): remove it first"
    # Paths from the project's top, so the reference names its lab as a clone sees it, not
    # the folder of whoever made it.
    done = subprocess.run([sys.executable, "-m", "kalab.cli", "run",
                           str((folder / "lab.yaml").relative_to(ROOT)),
                           "--results", str(fresh.relative_to(ROOT))], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return False, (f"{lab}: the run exited {done.returncode}; {reference} is unchanged:"
                       f"\n{done.stderr[-2000:]}")
    if reference.exists():
        if not (reference / "report.json").is_file():
            return False, f"{lab}: {reference} is not a run folder: not replaced"
        shutil.rmtree(reference)
    fresh.rename(reference)
    return True, f"{lab}: {reference}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labs", nargs="*", help="the labs to make again (default: all)")
    args = parser.parse_args()
    labs = args.labs or sorted(p.parent.name for p in COURSE.glob("*/lab.yaml"))
    unknown = [lab for lab in labs if not (COURSE / lab / "lab.yaml").is_file()]
    if unknown:
        print(f"make_references: no such lab: {', '.join(unknown)}", file=sys.stderr)
        return 2
    with ThreadPoolExecutor(PARALLEL) as pool:
        outcomes = list(pool.map(make, labs))
    print("\n".join(text for _, text in outcomes))
    return 0 if all(made for made, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
