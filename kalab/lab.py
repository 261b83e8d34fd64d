"""One lab run: make the network, start the roles, wait for the observer's verdict.

The roles pace themselves through their shared run folder (see
`kalab.handoff`), in namespaces, on loopback or in containers alike, so
this module only provides the network (or hands over to docker compose),
starts the same three entry points and waits for the observer, which
writes the report and exits with the verdict. Whatever
happens (an error, Ctrl-C, SIGTERM), every process is stopped and the
runtime's namespaces removed before this returns or raises.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kalab import handoff
from kalab import report as report_mod
from kalab.report import Report
from kalab.runtime.compose import ComposeError, ComposeLab, docker_problem
from kalab.runtime.local import LocalLab
from kalab.runtime.netns import NetnsLab
from kalab.runtime.node import Process
from kalab.runtime.state import RunState
from kalab.scenario import Scenario

RUNTIMES = {"netns": NetnsLab, "local": LocalLab}
PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXIT_ROLE_FAILED = 4


class LabError(Exception):
    """A run that could not be carried out (not a verdict about the wire)."""


class _Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that every cleanup on the way out runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def time_limit(scenario: Scenario) -> float:
    per_engine = handoff.session_time_limit(scenario) + 2 * handoff.ROLE_START_TIMEOUT
    return per_engine * len(scenario.engines)


def run(scenario: Scenario, runtime: str, results: Path,
        say: Callable[[str], None] = lambda text: None) -> Report:
    if results.exists():
        for engine in scenario.engines:
            shutil.rmtree(handoff.engine_dir(results, engine), ignore_errors=True)
    results.mkdir(parents=True, exist_ok=True)
    state = RunState()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        state.save()
        if runtime == "compose":
            _run_compose(scenario, results, state, say)
        else:
            _run_processes(scenario, runtime, results, state, say)
        return report_mod.from_dict(handoff.read_json(results / handoff.REPORT))
    except _Terminated:
        raise KeyboardInterrupt from None
    finally:
        state.forget()
        signal.signal(signal.SIGTERM, previous)


def _run_compose(scenario: Scenario, results: Path, state: RunState,
                 say: Callable[[str], None]) -> None:
    problem = docker_problem()
    if problem:
        raise LabError(f"the compose runtime needs Docker: {problem}")
    lab = ComposeLab(state)
    try:
        say(f"docker compose project {lab.project}: building and starting the containers")
        try:
            code = lab.run(Path(scenario.file), results, time_limit(scenario))
        except (ComposeError, subprocess.TimeoutExpired) as exc:
            raise LabError(str(exc)) from None
        if code not in report_mod.EXIT_CODES.values() or not (results / handoff.REPORT).exists():
            raise LabError(_explain_failure(scenario, results, []) +
                           f" (docker compose exited {code}; see {results / 'compose.log'})")
    finally:
        lab.down()


def _run_processes(scenario: Scenario, runtime: str, results: Path, state: RunState,
                   say: Callable[[str], None]) -> None:
    lab = RUNTIMES[runtime](state)
    processes: list[Process] = []
    try:
        lab.start()
        common = [str(Path(scenario.file).resolve()), "--run-dir", str(results.resolve())]
        observer = lab.observer.start_role(
            "observer", [*common, "--interface", lab.capture_interface, "--report",
                         "--runtime", runtime, "--scenario-label", scenario.file],
            results / "observer.log", PROJECT_ROOT)
        processes.append(observer)
        for node, role in ((lab.server, "server"), (lab.client, "client")):
            processes.append(node.start_role(role, [*common, "--host", lab.server_host],
                                             results / f"{role}.log", PROJECT_ROOT))
        code = _wait_for_observer(observer, scenario, results, say)
        if code not in report_mod.EXIT_CODES.values() or not (results / handoff.REPORT).exists():
            raise LabError(_explain_failure(scenario, results, processes))
    finally:
        for process in reversed(processes):
            process.stop()
        lab.stop()


def _wait_for_observer(observer: Process, scenario: Scenario, results: Path,
                       say: Callable[[str], None]) -> int:
    """Wait for the observer's verdict, saying which engine is on as they go."""
    deadline = time.monotonic() + time_limit(scenario)
    announced: set[str] = set()
    while True:
        try:
            return observer.wait(0.2)
        except subprocess.TimeoutExpired:
            pass
        for engine in scenario.engines:
            ready = handoff.engine_dir(results, engine) / handoff.SERVER_READY
            if engine.name not in announced and ready.exists():
                announced.add(engine.name)
                say(f"{engine.name}: {engine.describe()} is up; the client is running")
        if time.monotonic() > deadline:
            raise LabError(f"the run took longer than {time_limit(scenario):.0f} s")


def _explain_failure(scenario: Scenario, results: Path, processes: list[Process]) -> str:
    reasons = [reason for engine in scenario.engines
               for reason in handoff.failures(handoff.engine_dir(results, engine))]
    for process in processes:
        if not process.alive() and process.popen.returncode not in (0, None):
            reasons.append(f"{process.name} exited with {process.popen.returncode}:\n"
                           f"{process.tail()}")
    return "the run failed: " + ("\n".join(reasons) or "the observer wrote no report")
