"""Tallies of what the hostile-input and signal tests tried, for docs/reliability.md.

A reliability test calls `tally(area, tried, count, survived)` once per kind
of thing it threw at the lab ("scenario files with invalid UTF-8", 40, 40).
When ``KALAB_RELIABILITY_LOG`` names a file, each tally is appended to it as
one JSON line; otherwise `tally` does nothing but check its arguments.
`python tests/write_reliability.py` runs the tests marked ``reliability``
with that variable set and writes the page from their tallies: the page is
a record of a real run, never typed by hand.

"Survived" means the lab did what it promises with that input: a clean
refusal (exit 2, one line naming file and line) or a correct result, no
traceback, nothing left behind. A test asserts ``survived == count`` itself;
the tally only records what was asserted.
"""

from __future__ import annotations

import json
import os

LOG_VARIABLE = "KALAB_RELIABILITY_LOG"


def tally(area: str, tried: str, count: int, survived: int) -> None:
    """Record that ``count`` inputs of one kind were tried and ``survived`` held."""
    if not area or not tried or count < 0 or not 0 <= survived <= count:
        raise ValueError(f"a tally needs an area, what was tried, and 0 <= survived <= count: "
                         f"{area!r} {tried!r} {survived}/{count}")
    path = os.environ.get(LOG_VARIABLE)
    if not path:
        return
    line = json.dumps({"area": area, "tried": tried, "count": count, "survived": survived},
                      allow_nan=False)
    with open(path, "a", encoding="utf-8") as log:
        log.write(line + "\n")
