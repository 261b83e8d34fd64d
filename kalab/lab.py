"""One lab run: make the network, start the roles, wait for the observer's verdict.

The roles pace themselves through their shared run folder (see
`kalab.handoff`), in namespaces, on loopback or in containers alike, so
this module only provides the network (or hands over to docker compose),
starts the same three entry points and waits for the observer, which
writes the report and exits with the verdict. A scenario `targeted` at a
server the lab did not start (`kalab.target`) runs its roles on this host
(`kalab.runtime.target`), bounded by the target's ``max_seconds``.

Whatever happens (an error, Ctrl-C, SIGTERM), every process is stopped and
the runtime's namespaces removed before this returns or raises, with
further signals only noted while that goes on (`kalab.lifeline`); the run's
record of what it made (`kalab.runtime.state`) is removed only once all it
lists is gone. A run cut short by a signal still gets its report, marked
incomplete with the phase it had reached (`Interrupted`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from kalab import evidence, handoff, lifeline, render
from kalab import report as report_mod
from kalab.exitcodes import BY_VERDICT
from kalab.report import Report
from kalab.runtime.clean import remove_recorded, still_there
from kalab.runtime.compose import ComposeError, ComposeLab, docker_problem
from kalab.runtime.local import LocalLab
from kalab.runtime.netns import NetnsLab
from kalab.runtime.node import Process
from kalab.runtime.state import RunState
from kalab.runtime.target import TargetLab
from kalab.scenario import Scenario
from kalab.target import server_of

RUNTIMES = {"netns": NetnsLab, "local": LocalLab}
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class LabError(Exception):
    """A run that could not be carried out (not a verdict about the wire)."""


class Interrupted(Exception):
    """The run was cut short by a signal: its report (marked incomplete) and what of the
    run could not be removed (empty when nothing was left)."""

    def __init__(self, report: Report, left: list[str]) -> None:
        super().__init__(f"interrupted during {report.phase}")
        self.report, self.left = report, left


class _Signals:
    """SIGINT and SIGTERM during a run: note the phase the run was in (read off its
    files before stopping the roles changes them), then unwind like Ctrl-C."""

    def __init__(self, scenario: Scenario, results: Path, watch_files: bool) -> None:
        self.scenario, self.results, self.watch_files = scenario, results, watch_files
        self.roles_started = False
        self.phase: str | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _interrupt(self, signum: int, frame: object) -> None:
        # Only the first signal unwinds: a second one, while the first unwinds, would
        # land anywhere (inside logging's fork hooks, a finally) and could skip cleanup.
        if self.phase is not None:
            return
        self.phase = handoff.phase_reached(self.results, list(self.scenario.engines),
                                           self.roles_started) \
            if self.watch_files else ("scenario" if self.roles_started else "setup")
        raise KeyboardInterrupt


def time_limit(scenario: Scenario) -> float:
    target = server_of(scenario)
    if target is not None:  # a server the lab did not start: its own bound, and no more
        return target.max_seconds + handoff.ROLE_START_TIMEOUT
    per_engine = handoff.session_time_limit(scenario) + 2 * handoff.ROLE_START_TIMEOUT
    return per_engine * len(scenario.engines)


def run(scenario: Scenario, runtime: str, results: Path, state: RunState,
        say: Callable[[str], None] = lambda text: None) -> Report:
    """Run ``scenario`` into ``results`` (a new folder of the run's own); its report.

    Raises `Interrupted` after a signal (the report is written all the same) and
    `LabError` when the lab could not run.
    """
    started = time.time()
    signals = _Signals(scenario, results, watch_files=runtime != "compose")
    interrupted = False
    state.save()
    # The handlers stay until the cleanup has its own: restoring the default SIGINT
    # between the two would let a second Ctrl-C cut the cleanup short.
    with signals:
        try:
            if runtime == "compose":
                _run_compose(scenario, results, state, say)
            else:
                _run_processes(scenario, runtime, results, state, say, signals)
            report = report_mod.from_dict(handoff.read_json(results / handoff.REPORT))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            with lifeline.deferred_signals(lambda sig: say("still cleaning up; please wait")):
                left = _finish(state)
                if interrupted:
                    report = _interrupted_report(scenario, runtime, results, started,
                                                 signals.phase or "setup")
    if interrupted:
        raise Interrupted(report, left)
    if left:
        print(f"kalab: could not remove {', '.join(left)}: run `kalab clean`", file=sys.stderr)
    return report


def _finish(state: RunState) -> list[str]:
    """Remove whatever the run's record still names (idempotent: a second pass finds
    nothing); forget the record once nothing it lists is left. What is left."""
    data = state.as_dict()
    remove_recorded(data)
    left = still_there(data)
    if not left:
        state.forget()
    return left


def _interrupted_report(scenario: Scenario, runtime: str, results: Path, started: float,
                        phase: str) -> Report:
    """The report of a run cut short at ``phase``: the observer's, if it wrote one, marked
    incomplete; else one made here from what the roles left. Written with its views."""
    path = results / handoff.REPORT
    report = None
    if path.exists():
        try:
            report = report_mod.from_dict(handoff.read_json(path))
        except (OSError, ValueError, TypeError, KeyError):
            report = None  # half a report: make it again below
    if report is None:
        report = evidence.build_report(results, scenario, list(scenario.engines), runtime,
                                       started, label=scenario.file, interrupted=phase)
    else:
        evidence.mark_interrupted(report, phase)
    render.publish(report, results)
    return report


def _run_compose(scenario: Scenario, results: Path, state: RunState,
                 say: Callable[[str], None]) -> None:
    problem = docker_problem()
    if problem:
        raise LabError(f"the compose runtime needs Docker: {problem}")
    lab = ComposeLab(state)
    try:
        say(f"docker compose project {lab.project}: building and starting the containers")
        try:
            code = lab.run(Path(scenario.file), results, time_limit(scenario),
                           scenario.student)
        except (ComposeError, subprocess.TimeoutExpired) as exc:
            raise LabError(str(exc)) from None
        if code not in BY_VERDICT.values() or not (results / handoff.REPORT).exists():
            raise LabError(_explain_failure(scenario, results, []) +
                           f" (docker compose exited {code}; see {results / handoff.COMPOSE_LOG})")
    finally:
        with lifeline.deferred_signals():
            lab.down()


def _run_processes(scenario: Scenario, runtime: str, results: Path, state: RunState,
                   say: Callable[[str], None], signals: _Signals) -> None:
    target = server_of(scenario)
    lab = TargetLab(state, target) if target is not None else RUNTIMES[runtime](state)
    processes: list[Process] = []
    try:
        lab.start()
        common = [str(Path(scenario.file).resolve()), "--run-dir", str(results.resolve()),
                  "--student", scenario.student or ""]
        if target is not None:  # every role reads the target from the run folder
            handoff.write_json(results / handoff.TARGET, asdict(target))
            common.append("--target")
        signals.roles_started = True  # from here on the run folder tells the phase
        observer = lab.observer.start_role(
            "observer", [*common, "--interface", lab.capture_interface, "--report",
                         "--runtime", runtime, "--scenario-label", scenario.file],
            results / "observer.log", PROJECT_ROOT)
        processes.append(observer)
        for node, role in ((lab.server, "server"), (lab.client, "client")):
            processes.append(node.start_role(role, [*common, "--host", lab.server_host],
                                             results / f"{role}.log", PROJECT_ROOT))
        code = _wait_for_observer(observer, scenario, results, say)
        if code not in BY_VERDICT.values() or not (results / handoff.REPORT).exists():
            raise LabError(_explain_failure(scenario, results, processes))
    finally:
        with lifeline.deferred_signals(lambda sig: say("still cleaning up; please wait")):
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
