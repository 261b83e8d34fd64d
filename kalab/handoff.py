"""How the roles work together: files in a shared run folder, one folder per engine.

The roles run in separate namespaces or containers and share only a folder
(a volume under compose, a plain folder otherwise). Nobody conducts them:
each role walks the scenario's engines in order and, for each engine, waits
for the file that says its turn has come:

    observer  listening               -> ENGINE/observer.ready
    server    engine accepting        -> ENGINE/server.json     (waited on observer.ready)
    client    each step it starts     -> ENGINE/client.progress (for the live display)
    client    sessions done           -> ENGINE/client.json, client.done  (on server.json)
    observer  capture closed          -> ENGINE/capture.json, capture.pcap (on client.done)
    server    engine stopped          -> ENGINE/server.stopped  (on capture.json)
    observer  next engine's capture starts once the previous server.stopped

and at the very end the observer writes the report and ``observer.done``;
the server and the client stay until then (under compose the first
container to exit ends the others). So the capture always starts before
the server and the client, and stops before the server does (an engine's
shutdown is never taken for a keep-alive close). A role that cannot go on
writes ENGINE/ROLE.failed with the reason; every wait sees it and gives up
at once. Every record is written atomically: a reader never sees half a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # names for annotations: `kalab analyze` loads without the scenario
    from kalab.scenario import Engine, Scenario

SERVER_READY = "server.json"
SERVER_STOPPED = "server.stopped"
OBSERVER_READY = "observer.ready"
CAPTURE_STATS = "capture.json"
CAPTURE_PCAP = "capture.pcap"
CLIENT_RECORDS = "client.json"
CLIENT_DONE = "client.done"
CLIENT_PROGRESS = "client.progress"  # the step each session is on (a display aid)
REPORT = "report.json"
OBSERVER_DONE = "observer.done"  # in the run folder itself: the run is over

ROLE_START_TIMEOUT = 60.0  # an engine (or a container) may take a while to come up


class Aborted(Exception):
    """Another role failed, or the time ran out: this role stops too."""


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON, atomically. A NaN or an infinity (which json writes as
    NaN or Infinity, and strict parsers refuse) is written as null, as report.json writes
    it: these files carry measurements into the report, where null is the word for a
    value not known, and a role that raised here would lose its engine's whole run."""
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except ValueError:
        from kalab.report import finite

        text = json.dumps(finite(data), indent=2, allow_nan=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def failures(folder: Path) -> list[str]:
    """The reasons roles gave up in this engine's folder."""
    return [f"{p.stem}: {p.read_text(errors='replace').strip()}"
            for p in sorted(folder.glob("*.failed"))]


def fail(folder: Path, role: str, reason: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{role}.failed").write_text(reason + "\n", encoding="utf-8")


def wait_for(path: Path, timeout: float, alive: Callable[[], bool] | None = None,
             what: str = "", stop: Callable[[], bool] | None = None) -> None:
    """Wait until ``path`` exists; give up if a role failed, ``alive()`` or ``stop()`` says so."""
    deadline = time.monotonic() + timeout
    what = what or path.name
    while not path.exists():
        failed = failures(path.parent) if path.parent.is_dir() else []
        if failed:
            raise Aborted(f"waiting for {what}: {'; '.join(failed)}")
        if alive is not None and not alive():
            raise Aborted(f"{what}: the process ended before it was ready")
        if stop is not None and stop():
            raise Aborted(f"waiting for {what}: asked to stop")
        if time.monotonic() > deadline:
            raise Aborted(f"{what}: not there after {timeout:g} s")
        time.sleep(0.02)


def linger_until_observer_done(run_dir: Path, timeout: float = 120.0) -> None:
    """Keep a finished role alive until the observer has written the report."""
    try:
        wait_for(run_dir / OBSERVER_DONE, timeout, what="the observer's report")
    except Aborted:
        pass


def engine_dir(run_dir: Path, engine: Engine) -> Path:
    return run_dir / engine.name


def shared_engine_dir(run_dir: Path, engine: Engine) -> Path:
    """The engine's folder, made writable by every role: in containers they run as
    different users, and the observer is root without CAP_DAC_OVERRIDE."""
    folder = engine_dir(run_dir, engine)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        folder.chmod(0o777)
    except PermissionError:
        pass  # made by another role, which opened it already
    return folder


def engines_to_run(scenario: Scenario, name: str | None) -> list[Engine]:
    if name is None:
        return list(scenario.engines)
    try:
        return [scenario.engine(name)]
    except KeyError:
        known = ", ".join(e.name for e in scenario.engines)
        raise SystemExit(f"{scenario.file}: no engine named {name!r} (known: {known})") from None


def session_time_limit(scenario: Scenario) -> float:
    """Upper bound on how long the client may take for one engine."""
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
    return longest + 30.0


def parse_role(parser: argparse.ArgumentParser, argv: list[str] | None,
               role: str) -> tuple[argparse.Namespace, Scenario]:
    """A role's arguments and scenario; bad input exits 2 with the one-line error."""
    from kalab.scenario import ScenarioError, load

    args = parser.parse_args(argv)
    try:
        return args, load(args.scenario)
    except ScenarioError as exc:
        print(f"kalab {role}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def role_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every role takes: the same in netns, local and compose runs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("scenario", help="the scenario file (e.g. lab.yaml)")
    parser.add_argument("--engine", help="run only this engine of the scenario "
                        "(default: every engine, in turn)")
    parser.add_argument("--run-dir", type=Path, default=Path("results/run"),
                        help="folder shared by the roles; one subfolder per engine")
    return parser


class StopSignal:
    """SIGTERM and SIGINT set a flag that a role's waits check (compose stops with SIGTERM)."""

    def __init__(self) -> None:
        import signal

        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, signum: int, frame: object) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested
