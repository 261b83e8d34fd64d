"""The README walkthrough is a test: every command runs, as written, and says what it shows."""

from __future__ import annotations

from conftest import ROOT, run_kalab
from walkthrough import commands, docker_commands

WALKTHROUGH = commands(ROOT / "README.md")


def test_the_walkthrough_has_the_promised_commands():
    argvs = [" ".join(c.argv) for c in WALKTHROUGH]
    assert "run lab.yaml" in argvs
    assert "run scenarios/seed-claims.yaml" in argvs
    assert any(a.startswith("analyze ") for a in argvs)


def _first_sh_block(text: str, heading: str) -> list[str]:
    block = text.split(heading, 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_the_readme_gives_exactly_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert _first_sh_block(text, "## Without Docker: two commands") == \
        ["./lab run lab.yaml", "./lab test"]


def test_the_readme_gives_the_docker_path_first():
    text = (ROOT / "README.md").read_text()
    assert text.index("## With Docker") < text.index("## Without Docker")
    # tests/test_compose.py runs these very command lines.
    (up_env, up), down = docker_commands(ROOT / "README.md")
    assert up_env == {"KALAB_SCENARIO": "./lab.yaml"}
    assert up[:3] == ["docker", "compose", "up"] and "--exit-code-from" in up
    assert down == ["docker", "compose", "down", "-v"]


def test_the_walkthrough_s_checks_print_what_it_shows():
    # `check` starts nothing: these run here, in a second, unlike the runs.
    checks = [c for c in WALKTHROUGH if c.argv[0] == "check"]
    assert len(checks) >= 2
    for command in checks:
        done = run_kalab(*command.argv, timeout=60)
        assert done.returncode == command.exit_code, done.stderr
        assert command.mismatch(done.stdout + done.stderr) is None, done.stdout + done.stderr
