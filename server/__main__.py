"""The server role: ``python -m server SCENARIO --host ADDR --run-dir DIR``.

For each engine of the scenario in turn: wait until the observer listens,
(with ``tls``) make the run's CA and the engine's certificate
(`kalab.certs`), start the engine as a child, wait until its port accepts a
connection (over HTTPS: a verified handshake), and write ``server.json``
(engine, version, address): the client's signal to start. When the observer
has closed its capture, stop the engine by its pid and write
``server.stopped``. SIGTERM or SIGINT stops the engine and the role.
With ``--target`` (a server the lab did not start) it only stands in for
one: the same files at the same moments, and nothing started (`stand_in`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kalab import handoff, lifeline
from kalab.certs import make_server_tls
from kalab.kinds import AbortStart, wait_until_accepting
from kalab.scenario import Engine, Scenario
from kalab.target import TargetEngine
from server.engines import plan, version

__all__ = ["main", "serve", "stand_in", "stop_engine", "wait_until_accepting"]

# The engine's private files (nginx's 0700 buffers) live in its own folder, so
# a role killed before it could remove them leaves nothing outside the results.
SCRATCH_PREFIX = ".scratch-"


def serve(scenario: Scenario, engine: Engine, host: str, folder: Path,
          stop: handoff.StopSignal, tls_names: list[str] | None = None) -> None:
    """Serve ``engine``'s turn; with the scenario's ``tls``, over HTTPS with a certificate
    for ``host``, loopback and ``tls_names`` (the names the client uses)."""
    handoff.wait_for(folder / handoff.OBSERVER_READY, handoff.ROLE_START_TIMEOUT,
                     what="the observer", stop=stop)
    children: list[subprocess.Popen] = []
    with open(folder / "server.log", "wb") as log, \
            tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=folder) as scratch:
        tls = make_server_tls(folder, Path(scratch), host, tls_names or []) \
            if scenario.tls is not None else None
        launches = plan(engine, engine.app or scenario.app, host, scenario.port, folder,
                        Path(scratch), tls)
        try:
            for launch in launches:
                # The engine goes when this role goes, however it goes (SIGKILL included).
                child = lifeline.spawn(launch.argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL,
                                       env={**os.environ, **launch.env})
                children.append(child)
                try:
                    engine.kind_class.ready(launch, child, handoff.ROLE_START_TIMEOUT)
                except AbortStart as exc:
                    raise handoff.Aborted(str(exc)) from None
            handoff.write_json(folder / handoff.SERVER_READY, {
                "engine": engine.name, "kind": engine.kind, "description": engine.describe(),
                "version": version(engine), "listen": f"{host}:{scenario.port}",
                "tls": tls is not None,
                "pids": [c.pid for c in children], "argv": [lc.argv for lc in launches],
                "logs": _logs(engine), "ready_at": time.time(),
            })
            handoff.wait_for(folder / handoff.CAPTURE_STATS,
                             handoff.session_time_limit(scenario) + 60,
                             alive=lambda: all(c.poll() is None for c in children),
                             what="the end of the capture", stop=stop)
        finally:
            for child in reversed(children):
                stop_engine(child)
    (folder / handoff.SERVER_STOPPED).touch()


def stand_in(engine: TargetEngine, folder: Path, stop: handoff.StopSignal) -> None:
    """A server the lab did not start: nothing to start or stop, nothing listens here.
    Its ``server.json`` names the target (its URL, the address its host resolved to, its
    port) when the observer listens, so the client and the observer go on as with any
    engine."""
    handoff.wait_for(folder / handoff.OBSERVER_READY, handoff.ROLE_START_TIMEOUT,
                     what="the observer", stop=stop)
    target = engine.server
    host = f"[{target.address}]" if ":" in target.address else target.address
    handoff.write_json(folder / handoff.SERVER_READY, {
        "engine": engine.name, "kind": engine.kind, "description": engine.describe(),
        "version": None, "listen": f"{host}:{target.port}", "url": target.url,
        "address": target.address, "port": target.port, "pids": [], "argv": [], "logs": [],
        "ready_at": time.time(),
    })
    handoff.wait_for(folder / handoff.CAPTURE_STATS, target.max_seconds + 60,
                     what="the end of the capture", stop=stop)
    (folder / handoff.SERVER_STOPPED).touch()


def _logs(engine: Engine) -> list[str]:
    """The files in the engine's folder where it (and a proxy's engine behind) writes its
    trouble, beside server.log: the report quotes their error lines."""
    kinds = [engine.kind_class]
    if engine.kind_class.proxy:
        kinds.append(engine.kind_class.behind(engine).kind_class)  # type: ignore[attr-defined]
    return ["server.log", *dict.fromkeys(name for kind in kinds for name in kind.logs)]


def stop_engine(child: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not gone in 5 s."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = handoff.role_arguments("Serve the scenario's app with each engine in turn.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: never a public one)")
    parser.add_argument("--tls-name", action="append", default=[], metavar="NAME",
                        help="with a scenario's tls: a name the client uses for this server, "
                        "put in its certificate beside the address (repeatable)")
    args, scenario = handoff.parse_role(parser, argv, "server")
    stop = handoff.StopSignal()
    for engine in handoff.engines_to_run(scenario, args.engine):
        folder = handoff.shared_engine_dir(args.run_dir, engine)
        try:
            if isinstance(engine, TargetEngine):
                stand_in(engine, folder, stop)
            else:
                serve(scenario, engine, args.host, folder, stop, args.tls_name)
        except handoff.Aborted as exc:
            if stop():
                return 0
            reason = f"{engine.name}: {exc} (see {folder / 'server.log'})"
            handoff.fail(folder, "server", reason)
            print(f"kalab server: {reason}", file=sys.stderr)
            return 1
    handoff.linger_until_observer_done(args.run_dir, args.engine)
    handoff.stay_until_stopped(args.stay)
    return 0


if __name__ == "__main__":
    handoff.exit_role(main())
