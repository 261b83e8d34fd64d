"""One lab run: every engine of the scenario in turn, on one runtime.

For each engine: the observer starts listening first, then the server
(ready once its port accepts), then the client; when the client ends the
observer stops, and only then the server, so the engine's shutdown never
looks like a keep-alive close. The roles leave their records in the
engine's folder; `evidence.engine_run` turns them into the report.
Whatever happens (an error, Ctrl-C, SIGTERM), every process is stopped and
the runtime's namespaces removed before this returns or raises.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kalab import evidence, handoff
from kalab.report import EXIT_CODES, SCHEMA, EngineRun, Report, overall_verdict
from kalab.runtime.local import LocalLab
from kalab.runtime.netns import NetnsLab
from kalab.runtime.node import Process
from kalab.runtime.state import RunState
from kalab.scenario import Engine, Scenario

RUNTIMES = {"netns": NetnsLab, "local": LocalLab}
PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0


class LabError(Exception):
    """A run that could not be carried out (not a verdict about the wire)."""


class _Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that every cleanup on the way out runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def planned_duration(scenario: Scenario) -> float:
    """Upper bound on how long the client should take, for its time limit."""
    longest = 0.0
    for session in scenario.sessions:
        total = 0.0
        for step in session.steps:
            if step.kind == "sleep":
                total += step.seconds
            elif step.kind == "at":
                total = max(total, step.seconds)
            elif step.kind == "request":
                total += 35.0  # the client's connect and read timeouts
        longest = max(longest, total)
    return longest


def run(scenario: Scenario, runtime: str, results: Path,
        say: Callable[[str], None] = lambda text: None) -> Report:
    results.mkdir(parents=True, exist_ok=True)
    state = RunState()
    lab = RUNTIMES[runtime](state)
    started = time.time()
    runs: list[EngineRun] = []
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        state.save()
        lab.start()
        for engine in scenario.engines:
            say(f"{engine.name}: {engine.describe()}")
            runs.append(_run_engine(lab, scenario, engine, results, say))
    except _Terminated:
        raise KeyboardInterrupt from None
    finally:
        lab.stop()
        state.forget()
        signal.signal(signal.SIGTERM, previous)
    verdict = overall_verdict([r.verdict for r in runs])
    return Report(schema=SCHEMA, scenario=scenario.file, name=scenario.name, runtime=runtime,
                  started_at=started, finished_at=time.time(), runs=runs, verdict=verdict,
                  exit_code=EXIT_CODES[verdict])


def _run_engine(lab, scenario: Scenario, engine: Engine, results: Path,
                say: Callable[[str], None]) -> EngineRun:
    run_dir = results / engine.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    common = [str(Path(scenario.file).resolve()), "--engine", engine.name,
              "--run-dir", str(run_dir.resolve())]
    processes: list[Process] = []
    try:
        observer = lab.observer.start_role(
            "observer", [*common, "--interface", lab.capture_interface],
            run_dir / "observer.log", PROJECT_ROOT)
        processes.append(observer)
        _wait(run_dir / handoff.OBSERVER_READY, observer, "the observer")
        server = lab.server.start_role("server", [*common, "--host", lab.server_host],
                                       run_dir / "server-role.log", PROJECT_ROOT)
        processes.append(server)
        _wait(run_dir / handoff.SERVER_READY, server, "the server")
        say(f"{engine.name}: server ready, client running "
            f"(about {planned_duration_without_timeouts(scenario):.0f} s)")
        client = lab.client.start_role("client", [*common, "--host", lab.server_host],
                                       run_dir / "client.log", PROJECT_ROOT)
        processes.append(client)
        try:
            code = client.wait(planned_duration(scenario) + 30)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{engine.name}: the client did not finish: {exc}") from None
        if code != 0:
            raise LabError(f"{engine.name}: the client role failed (exit {code}):\n"
                           f"{client.tail()}")
        time.sleep(0.5)  # the last FINs and ACKs
        observer.stop()
        if not (run_dir / handoff.CAPTURE_STATS).exists():
            raise LabError(f"{engine.name}: the observer left no capture:\n{observer.tail()}")
        server.stop()
    finally:
        for process in reversed(processes):
            process.stop()
    return evidence.engine_run(run_dir, scenario, engine, f"{engine.name}/{handoff.CAPTURE_PCAP}")


def planned_duration_without_timeouts(scenario: Scenario) -> float:
    return max(sum(s.seconds for s in session.steps if s.kind == "sleep")
               for session in scenario.sessions)


def _wait(path: Path, process: Process, what: str) -> None:
    try:
        handoff.wait_for(path, START_TIMEOUT, process.alive, what)
    except (RuntimeError, TimeoutError) as exc:
        raise LabError(f"{exc}:\n{process.tail()}") from None
