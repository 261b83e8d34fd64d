"""The exit codes of every kalab command and role, defined here and nowhere else.

`kalab run`, `kalab analyze`, `kalab report`, the observer role (whose code
`kalab run` and `docker compose up --exit-code-from observer` pass on) and the
report's ``exit_code`` field all speak this one language.
"""

from __future__ import annotations

import textwrap
from enum import IntEnum


class Exit(IntEnum):
    """What a kalab process's exit status says (`MEANINGS` has it in words)."""

    PASS = 0
    FAIL = 1
    BAD_INPUT = 2
    INCONCLUSIVE = 3
    LAB_ERROR = 4
    INTERRUPTED = 5


MEANINGS: dict[Exit, str] = {
    Exit.PASS: "every expectation held (or there were none)",
    Exit.FAIL: "an expectation failed: the wire refuted a claim",
    Exit.BAD_INPUT: "bad input (scenario, pcap or arguments); nothing was started",
    Exit.INCONCLUSIVE: "inconclusive: the capture lost packets or started late",
    Exit.LAB_ERROR: "the lab itself could not run (missing tool, no root, a role crashed)",
    Exit.INTERRUPTED: "interrupted (Ctrl-C, SIGTERM): the report covers what was captured, "
                      "marked incomplete with the phase reached; nothing is concluded from it",
}

# A report's verdict to its exit code; plain ints, as the report's JSON holds them.
BY_VERDICT: dict[str, int] = {"pass": int(Exit.PASS), "observed": int(Exit.PASS),
                              "fail": int(Exit.FAIL), "inconclusive": int(Exit.INCONCLUSIVE),
                              "interrupted": int(Exit.INTERRUPTED)}


def described() -> str:
    """The codes in words, one a line, for `kalab --help`."""
    return "".join(textwrap.fill(text, 76, initial_indent=f"  {int(code)}  ",
                                 subsequent_indent="     ") + "\n"
                   for code, text in MEANINGS.items())
