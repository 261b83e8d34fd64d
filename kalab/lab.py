"""One lab run: make the network, start the roles, wait for the observer's verdict.

The roles pace themselves through their shared run folder (see
`kalab.handoff`), in namespaces, on loopback or in containers alike, so
this module only provides the network (or hands over to docker compose),
starts the same three entry points and waits for the observer, which
writes the report and exits with the verdict. A scenario `targeted` at a
server the lab did not start (`kalab.target`) runs its roles on this host
(`kalab.runtime.target`), bounded by the target's ``max_seconds``.

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

import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from kalab import evidence, handoff, lifeline, render
from kalab import report as report_mod
from kalab import sweep as sweep_mod
from kalab.exitcodes import BY_VERDICT
from kalab.report import Report
from kalab.runtime import forkserver
from kalab.runtime.clean import remove_recorded, still_there
from kalab.runtime.compose import ComposeError, ComposeLab, docker_problem
from kalab.runtime.local import LocalLab
from kalab.runtime.netns import NetnsLab
from kalab.runtime.node import Node, Process, stop_all
from kalab.runtime.state import RunState
from kalab.runtime.target import TargetLab
from kalab.scenario import Engine, Scenario, load
from kalab.target import server_of

RUNTIMES = {"netns": NetnsLab, "local": LocalLab}
AT_ONCE_RUNTIMES = ("netns",)  # where each engine can have a network of its own
PROJECT_ROOT = Path(__file__).resolve().parent.parent
OBSERVER_EXIT_GRACE = 10.0  # seconds an observer may take to exit once it is done
# Each role's output when the engines go at once: in the engine's folder, beside the
# engine's own server.log (which the server role writes there).
ROLE_LOGS = {"observer": "observer.log", "server": "server-role.log", "client": "client.log"}


class LabError(Exception):
    """A run that could not be carried out (not a verdict about the wire)."""


class TimedOut(LabError):
    """The run went past its time limit (`time_limit`): the lab stops it, as a signal
    would, and its report says so."""


class Interrupted(Exception):
    """The run was cut short by a signal, or by the lab at its time limit (``why``): its
    report (marked incomplete) and what of the run could not be removed (empty when
    nothing was left)."""

    def __init__(self, report: Report, left: list[str], why: str | None = None) -> None:
        super().__init__(f"interrupted during {report.phase}")
        self.report, self.left, self.why = report, left, why


class _Signals:
    """SIGINT and SIGTERM during a run: note the phase the run was in (read off its
    files before stopping the roles changes them), then unwind like Ctrl-C."""

    def __init__(self, scenario: Scenario, results: Path, watch_files: bool,
                 at_once: bool) -> None:
        self.scenario, self.results, self.watch_files = scenario, results, watch_files
        self.at_once = at_once
        self.roles_started = False
        self.reporting = False  # a sweep's: every trial is over, its report is being made
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
        self.note_phase()
        raise KeyboardInterrupt

    def note_phase(self) -> None:
        """The phase the run is in, read off its files (before the roles are stopped)."""
        if self.phase is not None:
            return
        if self.reporting:
            self.phase = "report writing"
        elif self.watch_files:
            self.phase = handoff.phase_reached(self.results, list(self.scenario.engines),
                                               self.roles_started, self.at_once)
        else:
            self.phase = "scenario" if self.roles_started else "setup"


def time_limit(scenario: Scenario, at_once: bool = False) -> float:
    target = server_of(scenario)
    if target is not None:  # a server the lab did not start: its own bound, and no more
        return target.max_seconds + handoff.ROLE_START_TIMEOUT
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
    # A sweep's phase is not read off files: its engines' folders are the trials'.
    signals = _Signals(scenario, results, watch_files=runtime != "compose" and
                       scenario.sweep is None, at_once=at_once)
    interrupted = False
    why = None  # the lab's own reason to cut the run short, if it was not a signal
    state.save()
    # The handlers stay until the cleanup has its own: restoring the default SIGINT
    # between the two would let a second Ctrl-C cut the cleanup short.
    with signals:
        try:
            if runtime == "compose":
                _run_compose(scenario, results, state, say)
            elif scenario.sweep is not None:
                _run_sweep(scenario, results, state, say, signals, started)
            elif at_once:
                _run_at_once(scenario, results, state, say, signals, started)
            else:
                _run_processes(scenario, runtime, results, state, say, signals)
            report = report_mod.from_dict(handoff.read_json(results / handoff.REPORT))
        except KeyboardInterrupt:
            interrupted = True
        except TimedOut as exc:
            interrupted, why = True, str(exc)
        finally:
            with lifeline.deferred_signals(lambda sig: say("still cleaning up; please wait")):
                left = _finish(state)
                if interrupted:
                    report = _interrupted_report(scenario, runtime, results, started,
                                                 signals.phase or "setup", why)
    if interrupted:
        raise Interrupted(report, left, why)
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
                        phase: str, why: str | None = None) -> Report:
    """The report of a run cut short at ``phase`` (by the lab itself: ``why``): the
    observer's, if it wrote one, marked incomplete; else one made here from what the roles
    left. Written with its views."""
    path = results / handoff.REPORT
    report = None
    if path.exists():
        try:
            report = report_mod.from_dict(handoff.read_json(path))
        except (OSError, ValueError, TypeError, KeyError):
            report = None  # half a report: make it again below
    if report is None and scenario.sweep is not None:
        report = sweep_report(scenario, results, started, interrupted=phase)
    elif report is None:
        report = evidence.build_report(results, scenario, list(scenario.engines), runtime,
                                       started, label=scenario.file, interrupted=phase)
    else:
        evidence.mark_interrupted(report, phase)
    if why is not None:
        for engine_run in report.runs:
            engine_run.capture.problems.append(f"the lab stopped the run: {why}")
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
            if target.ca is not None:  # the CA the clients trust, kept with the run
                shutil.copyfile(target.ca, results / handoff.TARGET_CA)
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
        (code,) = _wait_for_observers({"all": observer}, scenario, results, say, signals,
                                      at_once=False)
        if code not in BY_VERDICT.values() or not (results / handoff.REPORT).exists():
            raise LabError(_explain_failure(scenario, results, processes))
    finally:
        with lifeline.deferred_signals(lambda sig: say("still cleaning up; please wait")):
            for process in reversed(processes):
                process.stop()
            lab.stop()


class _Batch:
    """Every engine of a scenario at once, in ``folder``: per engine a pair of namespaces
    (numbered ``numbers``, one per engine) and a trio of roles given that engine."""

    def __init__(self, scenario: Scenario, folder: Path, state: RunState, numbers: list[int],
                 extra: tuple[str, ...] = (),
                 forks: forkserver.RoleForkServer | None = None) -> None:
        """``forks``: start the roles from this fork server (the fast way), not by exec."""
        self.scenario, self.folder, self.state = scenario, folder, state
        self.numbers, self.extra, self.forks = numbers, extra, forks
        self.labs: list[NetnsLab] = []
        self.processes: list[Process] = []
        self.observers: dict[str, Process] = {}

    def make_network(self) -> None:
        for number in self.numbers:
            self.labs.append(NetnsLab(self.state, number))  # listed first: stopped even half made
            self.labs[-1].start()

    def start_roles(self) -> None:
        common = [str(Path(self.scenario.file).resolve()), "--run-dir",
                  str(self.folder.resolve()), "--student", self.scenario.student or "",
                  "--together", *self.extra]
        pairs = list(zip(self.labs, self.scenario.engines, strict=True))
        # Every observer first: the servers wait for theirs, and the clients for their
        # servers, so the observers' start is the one every engine waits on.
        for lab, engine in pairs:
            folder = handoff.shared_engine_dir(self.folder, engine)
            observer = self._start(lab.observer, "observer",
                                   [*common, "--engine", engine.name,
                                    "--interface", lab.capture_interface],
                                   folder / ROLE_LOGS["observer"])
            self.observers[engine.name] = observer
            self.processes.append(observer)
        for role in ("server", "client"):
            for lab, engine in pairs:
                node = lab.server if role == "server" else lab.client
                self.processes.append(self._start(
                    node, role, [*common, "--engine", engine.name, "--host", lab.server_host],
                    handoff.engine_dir(self.folder, engine) / ROLE_LOGS[role]))

    def _start(self, node: Node, role: str, args: list[str], log: Path) -> Process:
        if self.forks is not None:
            try:
                return self.forks.start_role(node, role, args, log, PROJECT_ROOT)
            except forkserver.ForkServerError as exc:
                raise LabError(str(exc)) from None
        return node.start_role(role, args, log, PROJECT_ROOT)

    def release_when_up(self) -> None:
        """Write ``engines.ready`` once every engine's server is up or a role of it has
        failed: the clients (``--together``) start their sessions then, all at once."""
        ready = self.folder / handoff.ENGINES_READY
        if ready.exists():
            return
        for engine in self.scenario.engines:
            folder = handoff.engine_dir(self.folder, engine)
            if not (folder / handoff.SERVER_READY).exists() and not handoff.failures(folder):
                return
        ready.touch()

    def codes(self) -> list[int] | None:
        """The observers' exit codes once every one is over; None while one runs."""
        self.release_when_up()
        if any(observer.alive() for observer in self.observers.values()):
            return None
        return [observer.wait(0) for observer in self.observers.values()]

    def done_files(self) -> dict[str, Path]:
        """Each engine's observer.done: its observer has written all it writes."""
        return {name: handoff.observer_done(self.folder, name) for name in self.observers}

    def exit_codes(self, grace: float) -> list[int | None]:
        """The observers' exit codes, each waited for within one shared ``grace``; None
        for one still running then."""
        deadline = time.monotonic() + grace
        codes: list[int | None] = []
        for observer in self.observers.values():
            try:
                codes.append(observer.wait(max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        return codes

    def stop(self) -> None:
        """Stop the roles, remove the namespaces; what is gone leaves the run's record."""
        stop_all(list(reversed(self.processes)))
        for lab in self.labs:
            lab.stop()
        names = [ns for lab in self.labs for ns in (lab.server_ns, lab.client_ns)]
        pids = [process.pid for process in self.processes]
        if not still_there({"namespaces": names, "pids": [[pid, 0] for pid in pids]}):
            self.state.release(names, pids)


def _run_at_once(scenario: Scenario, results: Path, state: RunState,
                 say: Callable[[str], None], signals: _Signals, started: float) -> None:
    """Every engine at once, each in its own pair of namespaces with its own observer,
    server and client; the report written here once every observer is over."""
    batch = _Batch(scenario, results, state, list(range(len(scenario.engines))))
    forks = None
    try:
        batch.forks = forks = _role_forks(state, results)  # it warms while the network is made
        batch.make_network()
        signals.roles_started = True  # from here on the run folder tells the phase
        batch.start_roles()
        # An observer is over once its observer.done is there: the report is written while
        # the roles exit (seven interpreters and engines ending at once take a while).
        _wait_for_observers(batch.observers, scenario, results, say, signals, at_once=True,
                            done=batch.done_files(), each_poll=batch.release_when_up)
        record = evidence.build_report(results, scenario, list(scenario.engines), "netns",
                                       started, label=scenario.file)
        render.publish(record, results)
        codes = batch.exit_codes(grace=OBSERVER_EXIT_GRACE)
        if any(code != 0 for code in codes):
            stuck = [name for name, code in zip(batch.observers, codes, strict=True)
                     if code is None]
            raise LabError(_explain_failure(scenario, results, batch.processes)
                           + "".join(f"\n{name}: its observer did not exit "
                                     f"{OBSERVER_EXIT_GRACE:g} s after it was done"
                                     for name in stuck))
    finally:
        with lifeline.deferred_signals(lambda sig: say("still cleaning up; please wait")):
            batch.stop()
            if forks is not None:
                forks.close()


def _role_forks(state: RunState, folder: Path) -> forkserver.RoleForkServer | None:
    """The run's role fork server (`kalab.runtime.forkserver`), unless KALAB_ROLES=exec."""
    if not forkserver.wanted():
        return None
    return forkserver.RoleForkServer(state, PROJECT_ROOT, folder / forkserver.LOG)


def _run_sweep(scenario: Scenario, results: Path, state: RunState,
               say: Callable[[str], None], signals: _Signals, started: float) -> None:
    """A sweep's trials (`kalab.sweep`), at most ``at_once`` at a time, each a batch of
    every engine at once in its own folder with its own report; then the sweep's report."""
    plan = scenario.sweep
    assert plan is not None
    count = len(scenario.engines)
    waiting = deque((point, trial) for point in range(len(plan.values))
                    for trial in range(plan.trials))
    planned = len(waiting)
    free = deque(range(plan.at_once))  # a slot's pairs are numbered slot * engines + n
    running: dict[int, tuple[_Batch, float, float]] = {}  # slot: batch, start, deadline
    finished = 0
    forks = None
    try:
        forks = _role_forks(state, results)  # every trial's roles forked from it
        while waiting or running:
            while waiting and free:
                slot = free.popleft()
                point, trial = waiting.popleft()
                folder = sweep_mod.trial_folder(results, point, trial)
                folder.mkdir(parents=True)
                at_point = load(scenario.file, scenario.student, point)
                batch = _Batch(at_point, folder, state,
                               [slot * count + n for n in range(count)],
                               ("--sweep-point", str(point)), forks)
                running[slot] = (batch, time.time(),
                                 time.monotonic() + time_limit(at_point, at_once=True))
                batch.make_network()
                signals.roles_started = True
                batch.start_roles()
            for slot, (batch, begun, deadline) in list(running.items()):
                codes = batch.codes()
                if codes is None and time.monotonic() < deadline:
                    continue
                if codes is None:
                    raise LabError(f"{batch.folder}: the trial took longer than "
                                   f"{time_limit(batch.scenario, at_once=True):.0f} s")
                with lifeline.deferred_signals() as seen:  # a trial stops whole
                    batch.stop()
                    del running[slot]
                free.append(slot)
                if seen:  # now it may unwind the sweep
                    signal.raise_signal(seen[0])
                record = evidence.build_report(batch.folder, batch.scenario,
                                               list(batch.scenario.engines), "netns", begun,
                                               label=scenario.file)
                report_mod.write(record, batch.folder)
                if any(code != 0 for code in codes):
                    raise LabError(_explain_failure(batch.scenario, batch.folder,
                                                    batch.processes))
                finished += 1
                if finished % max(1, planned // 10) == 0 or finished == planned:
                    say(f"{finished} of {planned} trials done")
            time.sleep(0.05)
        signals.reporting = True
        render.publish(sweep_report(scenario, results, started), results)
    finally:
        with lifeline.deferred_signals(lambda sig: say("still cleaning up; please wait")):
            for batch, _, _ in running.values():
                batch.stop()
            if forks is not None:
                forks.close()


def sweep_report(scenario: Scenario, results: Path, started: float,
                 interrupted: str | None = None) -> Report:
    """A sweep's report from the trials' reports in ``results`` (those that finished)."""
    plan = scenario.sweep
    assert plan is not None
    trials = []
    for path in sorted((results / "trials").glob("*/report.json")):
        try:
            point = int(path.parent.name.split("-", 1)[0]) - 1
            trials.append((point, f"trials/{path.parent.name}",
                           report_mod.from_dict(handoff.read_json(path))))
        except (OSError, ValueError, TypeError, KeyError):
            continue  # half written when a signal came: not counted
    clients = {r.ref: s.client for s in scenario.sessions for r in s.requests}
    sweep, verdict = sweep_mod.result(plan, clients, tuple(e.name for e in scenario.engines),
                                      trials, len(plan.values) * plan.trials)
    record = Report(schema=report_mod.SCHEMA, scenario=scenario.file, name=scenario.name,
                    runtime="netns", started_at=started, finished_at=time.time(), runs=[],
                    verdict=verdict, exit_code=BY_VERDICT[verdict],
                    student=scenario.student, sweep=sweep)
    if interrupted is not None:
        evidence.mark_interrupted(record, interrupted)
    return record


def _wait_for_observers(observers: dict[str, Process], scenario: Scenario, results: Path,
                        say: Callable[[str], None], signals: _Signals, at_once: bool,
                        done: dict[str, Path] | None = None,
                        each_poll: Callable[[], None] | None = None) -> list[int | None]:
    """Wait until every observer is over (it exited, or its file in ``done`` is there),
    saying which engines are on as they come up; their exit codes (None: not yet).
    `TimedOut` past the run's time limit, the phase noted in ``signals`` first."""
    limit = time_limit(scenario, at_once)
    deadline = time.monotonic() + limit
    announced: set[str] = set()
    codes: dict[str, int | None] = {}
    while True:
        if each_poll is not None:
            each_poll()
        for name, observer in observers.items():
            if name not in codes and not observer.alive():
                codes[name] = observer.wait(0)
            elif name not in codes and done is not None and done[name].exists():
                codes[name] = None
        if len(codes) == len(observers):
            return [codes[name] for name in observers]
        time.sleep(0.05)
        for engine in scenario.engines:
            if engine.name not in announced and _is_up(results, engine):
                announced.add(engine.name)
                say(f"{engine.name}: {engine.describe()} is up; the client is running")
        if time.monotonic() > deadline:
            signals.note_phase()  # now: stopping the roles changes their files
            raise TimedOut(f"the run took longer than {limit:.0f} s")


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
