"""Signals at every phase of a real run: nothing left, and a report that says it was cut short.

Each case starts a real `kalab run` (two engines, netns; at once, as netns
runs them, or in turn with --serial), waits until the run's own files show
the phase it aims at, then sends SIGINT, SIGTERM, or SIGINT twice (the second
during the cleanup). Afterwards nothing of the
run may be left (namespaces, role processes, its record under /run/kalab)
and its report must be marked incomplete with that phase, with exit code 5
in the report and from the process, and no claim refuted. Independent runs
go side by side, a few at a time, to keep the suite short.

The setup phase lasts milliseconds on its own; a shim `ip` that sleeps
before running the real one makes it last long enough to be hit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import KALAB, ROOT, lab_namespaces, requires_lab, role_processes
from reliability import tally

from kalab.runtime.state import STATE_DIR

pytestmark = [requires_lab, pytest.mark.slow, pytest.mark.reliability]

SCENARIO = """\
name: signals
sessions:
  - steps:
      - get: /keep-alive
      - sleep: 1.5
      - get: /keep-alive
engines:
  - name: first
    engine: gunicorn
    worker: gthread
    keep_alive: 5
    expect:
      - same_connection: [1, 2]
  - name: second
    engine: werkzeug
    expect:
      - connections: 2
"""

# The files whose appearance puts a run in each phase (none: the run folder itself),
# and how long to wait after them before the signal. Engines in turn:
TRIGGERS = {
    "setup": ((), 0.3),
    "capture start": (("observer.log",), 0.0),
    "server start": (("first/observer.ready",), 0.0),
    "scenario": (("first/server.json",), 0.5),
    "between engines": (("first/capture.json",), 0.0),
    "report writing": (("second/capture.json",), 0.0),
}
# Engines at once: the run is in the phase of the engine furthest behind (each
# engine's roles log in its folder), and never between engines.
AT_ONCE_TRIGGERS = {
    "setup": ((), 0.3),
    "capture start": (("first/observer.log",), 0.0),
    "server start": (("first/observer.ready", "second/observer.ready"), 0.0),
    "scenario": (("first/server.json", "second/server.json"), 0.5),
    "report writing": (("first/capture.json", "second/capture.json"), 0.0),
}
SIGNALS = {"SIGINT": [signal.SIGINT], "SIGTERM": [signal.SIGTERM],
           "double SIGINT": [signal.SIGINT, signal.SIGINT]}
PARALLEL = 3


@dataclass
class Case:
    phase: str
    signal_name: str
    work: Path
    serial: bool
    code: int | None = None
    stderr: str = ""
    folder: Path | None = None
    problems: list[str] = field(default_factory=list)


def slow_ip(folder: Path) -> Path:
    """A folder with an `ip` that waits 0.4 s before running the real one."""
    shim = folder / "bin"
    shim.mkdir()
    real = shutil.which("ip")
    (shim / "ip").write_text(f"#!/bin/sh\nsleep 0.4\nexec {real} \"$@\"\n")
    (shim / "ip").chmod(0o755)
    return shim


def start(work: Path, slow: bool, serial: bool) -> subprocess.Popen:
    (work / "signals.yaml").write_text(SCENARIO)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if slow:
        env["PATH"] = f"{slow_ip(work)}:{env['PATH']}"
    return subprocess.Popen([*KALAB, "run", "signals.yaml", *(["--serial"] if serial else [])],
                            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run_folder(work: Path) -> Path | None:
    found = sorted((work / "results").glob("signals-*"))
    return found[0] if found else None


def wait_for_phase(work: Path, run: subprocess.Popen, phase: str, serial: bool) -> None:
    triggers, delay = (TRIGGERS if serial else AT_ONCE_TRIGGERS)[phase]
    deadline = time.monotonic() + 60
    while True:
        folder = run_folder(work)
        if folder is not None and all((folder / name).exists() for name in triggers):
            break
        if run.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the run never reached {phase}: {run.communicate()}")
        time.sleep(0.003)
    time.sleep(delay)


def run_id(folder: Path) -> str:
    return folder.name.rsplit("-", 1)[1]


def leftovers(folder: Path) -> list[str]:
    rid = run_id(folder)
    left = [ns for ns in lab_namespaces() if ns.startswith(f"kalab-{rid}-")]
    left += [p for p in role_processes() if str(folder) in p]
    if (STATE_DIR / f"{rid}.json").exists():
        left.append(f"the run's record {STATE_DIR / f'{rid}.json'}")
    return left


def interrupt(case: Case) -> Case:
    run = start(case.work, slow=case.phase == "setup", serial=case.serial)
    try:
        wait_for_phase(case.work, run, case.phase, case.serial)
        for number, sig in enumerate(SIGNALS[case.signal_name]):
            if number:
                time.sleep(0.05)  # the second comes during the cleanup
            run.send_signal(sig)
        _, case.stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    case.code = run.returncode
    case.folder = run_folder(case.work)
    case.problems = check(case)
    return case


def check(case: Case) -> list[str]:
    problems = []
    if "Traceback" in case.stderr:
        problems.append(f"a traceback: {case.stderr}")
    if case.code != 5:
        problems.append(f"exit {case.code}, not 5: {case.stderr[-500:]}")
    if f"interrupted during {case.phase}" not in case.stderr:
        problems.append(f"stderr does not name the phase: {case.stderr[-300:]}")
    assert case.folder is not None
    problems += [f"left behind: {item}" for item in leftovers(case.folder)]
    try:
        report = json.loads((case.folder / "report.json").read_text())
    except (OSError, ValueError) as exc:
        return [*problems, f"no report: {exc}"]
    wanted = {"complete": False, "phase": case.phase, "verdict": "interrupted", "exit_code": 5}
    got = {key: report.get(key) for key in wanted}
    if got != wanted:
        problems.append(f"report says {got}")
    refuted = [e["claim"] for run in report["runs"] for e in run["expectations"]
               if not e["passed"]]
    if refuted:
        problems.append(f"refuted from a run cut short: {refuted}")
    ran = [run["engine"] for run in report["runs"]]
    if sorted(ran + report["engines_not_run"]) != ["first", "second"]:
        problems.append(f"engines neither run nor listed as not run: {ran}, "
                        f"{report['engines_not_run']}")
    for name in ("report.html", "report.md", "junit.xml", "summary.txt"):
        if not (case.folder / name).exists():
            problems.append(f"no {name}")
    return problems


@pytest.mark.parametrize("serial", [False, True], ids=["at-once", "serial"])
def test_a_signal_at_any_phase_leaves_nothing_and_a_report_that_says_so(tmp_path, serial):
    triggers = TRIGGERS if serial else AT_ONCE_TRIGGERS
    cases = []
    for phase in triggers:
        for name in SIGNALS:
            work = tmp_path / f"{phase.replace(' ', '-')}-{name.replace(' ', '-')}"
            work.mkdir()
            cases.append(Case(phase, name, work, serial))
    with ThreadPoolExecutor(PARALLEL) as pool:
        done = list(pool.map(interrupt, cases))
    how = "engines in turn" if serial else "engines at once"
    for name in SIGNALS:
        tried = [c for c in done if c.signal_name == name]
        tally("Signals during `kalab run`", f"{name} at each of {len(triggers)} phases "
              f"({', '.join(triggers)}), {how}", len(tried),
              sum(not c.problems for c in tried))
    failed = {f"{c.signal_name} at {c.phase}": c.problems for c in done if c.problems}
    assert not failed, json.dumps(failed, indent=1)


LINKED = SCENARIO.replace("engines:", """\
link:
  server_to_client: {delay_ms: 20}
engines:""")


def nfqueue_rules(namespace: str) -> str:
    return subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-t", "mangle", "-S"],
                          capture_output=True, text=True).stdout


def test_after_sigkill_the_roles_end_and_the_next_run_removes_the_rest(tmp_path):
    work = tmp_path / "killed"
    work.mkdir()
    (work / "signals.yaml").write_text(LINKED)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([*KALAB, "run", "signals.yaml"], cwd=work, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_phase(work, run, "scenario", serial=False)
        folder = run_folder(work)
        client_namespaces = [f"kalab-{run_id(folder)}-{number}-cli" for number in (0, 1)]
        assert all("NFQUEUE" in nfqueue_rules(ns) for ns in client_namespaces)
        run.kill()
        run.wait()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    # The roles heard their parent die: none keeps running or capturing.
    deadline = time.monotonic() + 15
    while [p for p in role_processes() if str(folder) in p] and time.monotonic() < deadline:
        time.sleep(0.1)
    survived = [p for p in role_processes() if str(folder) in p]
    # The client took its delay line's rules with it; only the namespaces remain.
    rules_left = any("NFQUEUE" in nfqueue_rules(ns) for ns in client_namespaces)
    namespaces_left = [ns for ns in lab_namespaces() if ns.startswith(f"kalab-{run_id(folder)}")]
    nxt = tmp_path / "next"
    nxt.mkdir()
    (nxt / "quick.yaml").write_text(
        "sessions: [{steps: [get: /keep-alive]}]\nengines: [{engine: werkzeug}]\n")
    after = subprocess.run([*KALAB, "run", "quick.yaml"], cwd=nxt, env=env,
                           capture_output=True, text=True, timeout=120)
    left = leftovers(folder)
    tally("Signals during `kalab run`", "SIGKILL mid-scenario, then the next `kalab run`", 1,
          int(not survived and not rules_left and not left and after.returncode == 0))
    assert not survived, survived
    assert not rules_left
    assert namespaces_left, "the namespaces stay until the next run (nothing could remove them)"
    assert after.returncode == 0, after.stderr
    assert "removed what an earlier run left" in after.stderr
    assert not left, left


def test_two_runs_at_once_from_one_folder_both_pass(tmp_path):
    (tmp_path / "signals.yaml").write_text(SCENARIO)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([*KALAB, "run", "signals.yaml"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    folders = sorted((tmp_path / "results").glob("signals-*"))
    assert len(folders) == 2
    for folder in folders:
        report = json.loads((folder / "report.json").read_text())
        assert report["verdict"] == "pass" and report["complete"] is True
        assert [r["engine"] for r in report["runs"]] == ["first", "second"]
    assert (tmp_path / "results" / "latest").resolve() in folders


def test_a_run_never_writes_into_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "signals.yaml").write_text(SCENARIO)
    theirs = tmp_path / "someone-elses"
    theirs.mkdir()
    (theirs / "precious.txt").write_text("keep me")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*KALAB, "run", "signals.yaml", "--results", str(theirs)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "not an empty folder" in done.stderr
    assert [p.name for p in theirs.iterdir()] == ["precious.txt"]
    assert (theirs / "precious.txt").read_text() == "keep me"


def test_a_run_writes_nothing_beside_the_results_folder_it_was_given(tmp_path):
    (tmp_path / "signals.yaml").write_text(
        "sessions: [{steps: [get: /keep-alive]}]\nengines: [{engine: werkzeug}]\n")
    outside = tmp_path / "theirs"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*KALAB, "run", "signals.yaml", "--results", str(outside / "run")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in outside.iterdir()] == ["run"]  # no `latest` beside it


@pytest.mark.parametrize("serial", [False, True], ids=["at-once", "serial"])
def test_a_run_past_its_time_limit_is_stopped_and_its_report_says_so(tmp_path, serial):
    """The lab's own time limit cuts a run short as a signal does: the roles stopped,
    nothing left, a report that says the run was stopped and why (exit 5), not exit 4
    and no report. The limit is made 10 s here (in a run's own process) for a session
    that would sleep 60 s."""
    (tmp_path / "signals.yaml").write_text(SCENARIO.replace("sleep: 1.5", "sleep: 60"))
    harness = ("import sys\nfrom kalab import lab\nlab.time_limit = lambda *args: 10.0\n"
               "from kalab.cli import main\nsys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", harness, "run", "signals.yaml",
                           *(["--serial"] if serial else [])], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 5, done.stderr
    assert "kalab: the run took longer than 10 s: stopped during scenario;" in done.stderr
    assert "Traceback" not in done.stderr
    folder = run_folder(tmp_path)
    assert folder is not None and leftovers(folder) == []
    report = json.loads((folder / "report.json").read_text())
    assert (report["verdict"], report["complete"], report["phase"], report["exit_code"]) == \
        ("interrupted", False, "scenario", 5)
    assert report["runs"]
    for run in report["runs"]:
        assert "the lab stopped the run: the run took longer than 10 s" in \
            run["capture"]["problems"]
        assert run["verdict"] == "interrupted" and not run["expectations"]
