"""How the roles work together: files in a shared run folder, one folder per engine.

The roles run in separate namespaces or containers and share only a folder
(a volume under compose, a plain folder otherwise). Nobody conducts them:
each role walks the scenario's engines in order and, for each engine, waits
for the file that says its turn has come:

    observer  listening               -> ENGINE/observer.ready
    server    engine accepting        -> ENGINE/server.json     (waited on observer.ready)
              with `tls: true`, first  -> ENGINE/tls-ca.pem, tls-cert.pem (the run's own CA)
    client    each step it starts     -> ENGINE/client.progress (for the live display)
    client    sessions done           -> ENGINE/client.json, client.done  (on server.json)
              with `tls: true`, as it goes -> ENGINE/tls-keys.log (its TLS secrets)
    observer  capture closed          -> ENGINE/capture.json, capture.pcap (on client.done)
    server    engine stopped          -> ENGINE/server.stopped  (on capture.json)
    observer  next engine's capture starts once the previous server.stopped

and at the very end the observer writes the report and ``observer.done``;
the server and the client stay until then (under compose the first
container to exit ends the others). Roles given one engine (``--engine``,
as `kalab run` starts them when the engines go at once, each trio in its
own namespaces) write and wait for ENGINE/observer.done instead: each
trio ends on its own, and `kalab run` writes the report. Given ``--together`` too, the
client also waits for ``engines.ready`` in the run folder, which `kalab run` writes once
every engine's server is up (or has failed): the engines' sessions share one start, and
none runs while another engine is still starting. So the capture always starts before
the server and the client, and stops before the server does (an engine's
shutdown is never taken for a keep-alive close). A role that cannot go on
writes ENGINE/ROLE.failed with the reason; every wait sees it and gives up
at once. Every record is written atomically: a reader never sees half a file.

A run against a server the lab did not start (`kalab run --target`) has one
more file, ``target.json`` in the run folder, written before any role
starts (`kalab.report.TargetServer`); every role, given ``--target``, reads
it and takes the scenario's engines for one pseudo-engine, ``target``
(`kalab.target.targeted`), whose server role only stands in: it writes
``server.json`` for the target and starts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

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
# A `tls: true` run (`kalab.certs`): the CA the client trusts and the engine's certificate
# (its private key stays in the server's private scratch folder, never in the results),
# and the key log the client writes, NSS format (SSLKEYLOGFILE), for the observer's analysis.
TLS_CA = "tls-ca.pem"
TLS_CERT = "tls-cert.pem"
TLS_KEYLOG = "tls-keys.log"
OBSERVER_DONE = "observer.done"  # in the run folder itself: the run is over
TARGET = "target.json"  # in the run folder itself: the server of a `kalab run --target`
TARGET_CA = "target-ca.pem"  # in the run folder itself: the CA of `kalab run --target-ca`
ENGINES_READY = "engines.ready"  # in the run folder itself: every engine is up (--together)

# Where a run can be cut short, in the order a run passes them (an engine at a
# time from "capture start" to "between engines"); `phase_reached` reads them off
# the run folder, so every role and `kalab` itself name the same phase.
PHASES = ("setup", "capture start", "server start", "scenario", "between engines",
          "report writing")

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
             what: str = "", stop: Callable[[], bool] | None = None,
             failures_in: Path | None = None) -> None:
    """Wait until ``path`` exists; give up if a role failed (in ``failures_in``, by default
    ``path``'s folder), ``alive()`` or ``stop()`` says so."""
    deadline = time.monotonic() + timeout
    what = what or path.name
    watched = failures_in or path.parent
    while not path.exists():
        failed = failures(watched) if watched.is_dir() else []
        if failed:
            raise Aborted(f"waiting for {what}: {'; '.join(failed)}")
        if alive is not None and not alive():
            raise Aborted(f"{what}: the process ended before it was ready")
        if stop is not None and stop():
            raise Aborted(f"waiting for {what}: asked to stop")
        if time.monotonic() > deadline:
            raise Aborted(f"{what}: not there after {timeout:g} s")
        time.sleep(0.02)


def observer_done(run_dir: Path, engine: str | None) -> Path:
    """The file that says the observer is over: in the run folder when it observes every
    engine, in the engine's folder when it was given one (``--engine``)."""
    return run_dir / OBSERVER_DONE if engine is None else run_dir / engine / OBSERVER_DONE


def exit_role(code: int) -> NoReturn:
    """End a role once its main has returned: everything it writes is written and closed
    by then. The interpreter's teardown (50-80 ms of freeing modules per role, times 21
    roles ending together on two cores when seven engines run at once) is skipped."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def linger_until_observer_done(run_dir: Path, engine: str | None,
                               timeout: float = 120.0) -> None:
    """Keep a finished role alive until its observer is over (`observer_done`)."""
    try:
        wait_for(observer_done(run_dir, engine), timeout, what="the observer's report")
    except Aborted:
        pass


def engine_dir(run_dir: Path, engine: Engine) -> Path:
    """The engine's folder: a child of the run folder, checked on the resolved path
    (the scenario checks names too; this holds whatever a name or a link says)."""
    folder = run_dir / engine.name
    if folder.resolve().parent != run_dir.resolve():
        raise ValueError(f"engine name {engine.name!r} does not name a folder inside "
                         f"{run_dir}")
    return folder


def shared_engine_dir(run_dir: Path, engine: Engine) -> Path:
    """The engine's folder, made writable by every role: in containers they run as
    different users, and the observer is root without CAP_DAC_OVERRIDE. Only the
    role that makes the folder opens it up: never a folder this run did not make."""
    folder = engine_dir(run_dir, engine)
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return folder  # made by another role, which opened it already
    folder.chmod(0o777)
    return folder


def new_results_folder(parent: Path, name: str, run_id: str | None = None) -> Path:
    """Make a run's own results folder under ``parent``: ``NAME-YYYYmmdd-HHMMSS-RUNID``.

    The run id makes two runs started in the same second distinct, and the folder
    is made exclusively: a run never writes into a folder it did not make.
    """
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = parent / f"{name}-{stamp}-{run_id or secrets.token_hex(3)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            run_id = None  # taken (the same id in the same second): draw another


COMPOSE_LOG = "compose.log"


def claim_results_folder(folder: Path, already_there: frozenset[str] = frozenset()) -> None:
    """Take ``folder`` for a run: made new, or a folder that exists holding nothing but
    ``already_there`` (the observer under `kalab run --runtime compose` finds the
    compose.log that `kalab run` is writing). Anything else in it is another run's, or
    the user's: `FileExistsError`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        if not folder.is_dir() or folder.is_symlink() or \
                any(entry.name not in already_there for entry in folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not an empty folder: a run never "
                                  "writes over what another left") from None


def link_latest(folder: Path) -> None:
    """Point ``latest`` beside ``folder`` at it (relative), replacing the link atomically;
    anything at ``latest`` that is not a link is left alone."""
    latest = folder.parent / "latest"
    if latest.exists() and not latest.is_symlink():
        return
    tmp = folder.parent / f".latest.{os.getpid()}.{secrets.token_hex(3)}"
    try:
        tmp.symlink_to(folder.name)
        tmp.replace(latest)
    except OSError:
        tmp.unlink(missing_ok=True)


def engine_phase(folder: Path) -> str | None:
    """How far one engine's turn had got ("capture start", "server start" or "scenario"),
    from the files in its folder; None once its capture is closed."""
    if (folder / CAPTURE_STATS).exists():
        return None
    if (folder / SERVER_READY).exists():
        return "scenario"
    if (folder / OBSERVER_READY).exists():
        return "server start"
    return "capture start"


def phase_reached(run_dir: Path, engines: list[Engine], roles_started: bool = True,
                  at_once: bool = False) -> str:
    """How far a run had got (one of `PHASES`), from the files its roles left.

    Engines in turn: the phase of the first engine not done, "between engines" when
    it has not begun but an engine before it has. Engines at once (``at_once``): the
    phase of the engine furthest behind; there is no "between engines"."""
    if not roles_started:
        return "setup"
    going = [(index, phase) for index, engine in enumerate(engines)
             if (phase := engine_phase(run_dir / engine.name)) is not None]
    if not going:
        return "report writing"
    if at_once:
        return min((phase for _, phase in going), key=PHASES.index)
    index, phase = going[0]
    return "between engines" if phase == "capture start" and index > 0 else phase


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
        scenario = load(args.scenario, args.student or None, args.sweep_point)
    except ScenarioError as exc:
        print(f"kalab {role}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.shared_volume:
        args.run_dir = volume_run_dir(args.run_dir, role)
    if args.target:
        from kalab.report import TargetServer
        from kalab.target import targeted

        scenario = targeted(scenario, TargetServer(**read_json(args.run_dir / TARGET)))
    return args, scenario


def role_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every role takes: the same in netns, local and compose runs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("scenario", help="the scenario file (e.g. lab.yaml)")
    parser.add_argument("--engine", help="run only this engine of the scenario "
                        "(default: every engine, in turn)")
    parser.add_argument("--run-dir", type=Path, default=Path("results/run"),
                        help="folder shared by the roles; one subfolder per engine")
    parser.add_argument("--student", default="", metavar="ID",
                        help="a lab's student: its params are drawn for this ID, as "
                        "`kalab run --student` drew them (empty: the defaults)")
    parser.add_argument("--sweep-point", type=int, default=None, metavar="N",
                        help="a sweep's scenario at its point N (from 0; default: the first)")
    parser.add_argument("--stay", action="store_true",
                        help="after the run, wait until stopped (SIGTERM) instead of "
                        "ending: a Kubernetes Deployment's pod must not end")
    parser.add_argument("--target", action="store_true",
                        help="run against a server the lab did not start, the one "
                        f"RUN_DIR/{TARGET} names (written by `kalab run --target`): the "
                        "scenario's engines are not started")
    parser.add_argument("--together", action="store_true",
                        help=f"with --engine, engines at once: the client starts once "
                        f"RUN_DIR/{ENGINES_READY} says every engine is up")
    parser.add_argument("--shared-volume", action="store_true",
                        help="--run-dir is a volume every run of a compose project shares: "
                        "the observer makes this run's folder in it, the server takes the "
                        "first made after it started, the client the current one")
    return parser


# Under compose the roles' folder is a volume that outlives a run (until `docker compose
# down -v`): a second `up` would find the first's files. So each run works in a folder of
# its own in the volume, which the observer makes and names in CURRENT_RUN. The server
# starts first (the observer shares its network) and waits for a folder whose observer
# started after it did; the client starts once the server is healthy, by which time the
# current folder is this run's. Start times are the kernel's (ticks since boot), the same
# clock in every container on the host.
CURRENT_RUN = "current-run.json"


def volume_run_dir(volume: Path, role: str, timeout: float = ROLE_START_TIMEOUT) -> Path:
    """This run's folder in a compose project's shared volume, for ``role``."""
    from kalab.runtime.state import process_start

    me = process_start(os.getpid()) or 0
    if role == "observer":
        folder = new_results_folder(volume, "run")
        folder.chmod(0o777)  # the server and client run as other users
        write_json(volume / CURRENT_RUN, {"folder": folder.name, "observer_started": me})
        return folder
    deadline = time.monotonic() + timeout
    while True:
        try:
            current = read_json(volume / CURRENT_RUN)
            if role == "client" or current["observer_started"] >= me:
                folder = volume / current["folder"]
                if folder.resolve().parent == volume.resolve():
                    return folder
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not written yet
        if time.monotonic() > deadline:
            raise SystemExit(f"kalab {role}: no run folder in {volume} after {timeout:g} s: "
                             "is the observer running?")
        time.sleep(0.05)


def stay_until_stopped(asked: bool) -> None:
    """With ``--stay``, wait here for SIGTERM or SIGINT, whatever handlers are set."""
    if not asked:
        return
    import signal

    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    signal.sigwait(stops)


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
