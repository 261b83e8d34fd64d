"""The README walkthrough is a test: every command runs, as written, and says what it shows."""

from __future__ import annotations

import pytest
from conftest import ROOT, requires_lab
from walkthrough import commands

WALKTHROUGH = commands(ROOT / "README.md")


def test_the_walkthrough_has_the_promised_commands():
    argvs = [" ".join(c.argv) for c in WALKTHROUGH]
    assert "run lab.yaml" in argvs
    assert "run scenarios/seed-claims.yaml" in argvs
    assert any(a.startswith("analyze ") for a in argvs)


def test_the_readme_gives_exactly_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up: two commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = [line.split("#")[0].strip() for line in setup.strip().splitlines()]
    assert lines == ["./lab run lab.yaml", "./lab test"]


@requires_lab
@pytest.mark.slow
def test_walkthrough_commands_exit_and_print_as_the_readme_says(walkthrough_results):
    for command, done in walkthrough_results:
        output = done.stdout + done.stderr
        where = f"./lab {' '.join(command.argv)}"
        assert done.returncode == command.exit_code, f"{where}: exit {done.returncode}\n{output}"
        missing = command.mismatch(output)
        assert missing is None, f"{where}: the README shows {missing!r}, output was:\n{output}"
