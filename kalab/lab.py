"""One lab run: make the network, start the roles, wait for the observer's verdict.

The roles pace themselves through their shared run folder (see
`kalab.handoff`), in namespaces, on loopback or in containers alike, so
this module only provides the network (or hands over to docker compose),
starts the same three entry points and waits for the observer, which
writes the report and exits with the verdict.

On the netns runtime the engines go at once: each engine gets its own pair
of namespaces with its own addresses (`kalab.runtime.netns`) and its own
observer, server and client, given that one engine (``--engine``); once
every observer is over, the report is written here from the engines'
folders, the same report as engines in turn give. ``serial`` (and the
local and compose runtimes, whose engines share one loopback or one
project) keeps the engines in turn, one trio of roles walking them all.

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
from pathlib import Path

from kalab import evidence, handoff, lifeline, render
from kalab import report as report_mod
from kalab.report import Report
from kalab.runtime.clean import remove_recorded, still_there
from kalab.runtime.compose import ComposeError, ComposeLab, docker_problem
from kalab.runtime.local import LocalLab
from kalab.runtime.netns import NetnsLab
from kalab.runtime.node import Process, stop_all
from kalab.runtime.state import RunState
from kalab.scenario import Engine, Scenario

RUNTIMES = {"netns": NetnsLab, "local": LocalLab}
AT_ONCE_RUNTIMES = ("netns",)  # where each engine can have a network of its own
PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXIT_ROLE_FAILED = 4
# Each role's output when the engines go at once: in the engine's folder, beside the
# engine's own server.log (which the server role writes there).
ROLE_LOGS = {"observer": "observer.log", "server": "server-role.log", "client": "client.log"}


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

    def __init__(self, scenario: Scenario, results: Path, watch_files: bool,
                 at_once: bool) -> None:
        self.scenario, self.results, self.watch_files = scenario, results, watch_files
        self.at_once = at_once
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
                                           self.roles_started, self.at_once) \
            if self.watch_files else ("scenario" if self.roles_started else "setup")
        raise KeyboardInterrupt


def time_limit(scenario: Scenario, at_once: bool = False) -> float:
    per_engine = handoff.session_time_limit(scenario) + 2 * handoff.ROLE_START_TIMEOUT
    return per_engine * (1 if at_once else len(scenario.engines))


def goes_at_once(runtime: str, serial: bool) -> bool:
    """Whether a run on ``runtime`` runs its engines at once (else in turn)."""
    return runtime in AT_ONCE_RUNTIMES and not serial


def run(scenario: Scenario, runtime: str, results: Path, state: RunState,
        say: Callable[[str], None] = lambda text: None, serial: bool = False) -> Report:
    """Run ``scenario`` into ``results`` (a new folder of the run's own); its report.
    The engines go at once where the runtime allows (`goes_at_once`), unless ``serial``.

    Raises `Interrupted` after a signal (the report is written all the same) and
    `LabError` when the lab could not run.
    """
    started = time.time()
    at_once = goes_at_once(runtime, serial)
    signals = _Signals(scenario, results, watch_files=runtime != "compose", at_once=at_once)
    interrupted = False
    state.save()
    # The handlers stay until the cleanup has its own: restoring the default SIGINT
    # between the two would let a second Ctrl-C cut the cleanup short.
    with signals:
        try:
            if runtime == "compose":
                _run_compose(scenario, results, state, say)
            elif at_once:
                _run_at_once(scenario, results, state, say, signals, started)
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
        if code not in report_mod.EXIT_CODES.values() or not (results / handoff.REPORT).exists():
            raise LabError(_explain_failure(scenario, results, []) +
                           f" (docker compose exited {code}; see {results / handoff.COMPOSE_LOG})")
    finally:
        with lifeline.deferred_signals():
            lab.down()


def _run_processes(scenario: Scenario, runtime: str, results: Path, state: RunState,
                   say: Callable[[str], None], signals: _Signals) -> None:
    lab = RUNTIMES[runtime](state)
    processes: list[Process] = []
    try:
        lab.start()
        common = [str(Path(scenario.file).resolve()), "--run-dir", str(results.resolve()),
                  "--student", scenario.student or ""]
        signals.roles_started = True  # from here on the run folder tells the phase
        observer = lab.observer.start_role(
            "observer", [*common, "--interface", lab.capture_interface, "--report",
                         "--runtime", runtime, "--scenario-label", scenario.file],
            results / "observer.log", PROJECT_ROOT)
        processes.append(observer)
        for node, role in ((lab.server, "server"), (lab.client, "client")):
            processes.append(node.start_role(role, [*common, "--host", lab.server_host],
                                             results / f"{role}.log", PROJECT_ROOT))
        (code,) = _wait_for_observers({"all": observer}, scenario, results, say,
                                      at_once=False)
        if code not in report_mod.EXIT_CODES.values() or not (results / handoff.REPORT).exists():
            raise LabError(_explain_failure(scenario, results, processes))
    finally:
        with lifeline.deferred_signals(lambda sig: say("still cleaning up; please wait")):
            for process in reversed(processes):
                process.stop()
            lab.stop()


def _run_at_once(scenario: Scenario, results: Path, state: RunState,
                 say: Callable[[str], None], signals: _Signals, started: float) -> None:
    """Every engine at once, each in its own pair of namespaces with its own observer,
    server and client; the report written here once every observer is over."""
    labs: list[NetnsLab] = []
    processes: list[Process] = []
    try:
        for number in range(len(scenario.engines)):
            labs.append(NetnsLab(state, number))  # listed first: stopped even half made
            labs[-1].start()
        common = [str(Path(scenario.file).resolve()), "--run-dir", str(results.resolve()),
                  "--student", scenario.student or ""]
        signals.roles_started = True  # from here on the run folder tells the phase
        observers: dict[str, Process] = {}
        for lab, engine in zip(labs, scenario.engines, strict=True):
            folder = handoff.shared_engine_dir(results, engine)
            mine = [*common, "--engine", engine.name]
            observers[engine.name] = lab.observer.start_role(
                "observer", [*mine, "--interface", lab.capture_interface],
                folder / ROLE_LOGS["observer"], PROJECT_ROOT)
            processes.append(observers[engine.name])
            for node, role in ((lab.server, "server"), (lab.client, "client")):
                processes.append(node.start_role(role, [*mine, "--host", lab.server_host],
                                                 folder / ROLE_LOGS[role], PROJECT_ROOT))
        codes = _wait_for_observers(observers, scenario, results, say, at_once=True)
        record = evidence.build_report(results, scenario, list(scenario.engines), "netns",
                                       started, label=scenario.file)
        render.publish(record, results)
        if any(code != 0 for code in codes):
            raise LabError(_explain_failure(scenario, results, processes))
    finally:
        with lifeline.deferred_signals(lambda sig: say("still cleaning up; please wait")):
            stop_all(list(reversed(processes)))
            for lab in labs:
                lab.stop()


def _wait_for_observers(observers: dict[str, Process], scenario: Scenario, results: Path,
                        say: Callable[[str], None], at_once: bool) -> list[int]:
    """Wait until every observer is over, saying which engines are on as they come up;
    their exit codes."""
    limit = time_limit(scenario, at_once)
    deadline = time.monotonic() + limit
    announced: set[str] = set()
    codes: dict[str, int] = {}
    while True:
        for name, observer in observers.items():
            if name not in codes and not observer.alive():
                codes[name] = observer.wait(0)
        if len(codes) == len(observers):
            return [codes[name] for name in observers]
        time.sleep(0.1)
        for engine in scenario.engines:
            if engine.name not in announced and _is_up(results, engine):
                announced.add(engine.name)
                say(f"{engine.name}: {engine.describe()} is up; the client is running")
        if time.monotonic() > deadline:
            raise LabError(f"the run took longer than {limit:.0f} s")


def _is_up(results: Path, engine: Engine) -> bool:
    return (handoff.engine_dir(results, engine) / handoff.SERVER_READY).exists()


def _explain_failure(scenario: Scenario, results: Path, processes: list[Process]) -> str:
    reasons = [reason for engine in scenario.engines
               for reason in handoff.failures(handoff.engine_dir(results, engine))]
    for process in processes:
        if not process.alive() and process.popen.returncode not in (0, None):
            reasons.append(f"{process.name} exited with {process.popen.returncode}:\n"
                           f"{process.tail()}")
    return "the run failed: " + ("\n".join(reasons) or "the observer wrote no report")
