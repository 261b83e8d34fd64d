"""The server role: ``python -m server SCENARIO --engine NAME --host ADDR``.

Starts the engine as a child, waits until its port accepts a connection,
then writes ``server.json`` (engine, version, address) into the run folder:
that file is the signal the other roles wait for. SIGTERM or SIGINT stops
the engine, by its pid, and the role exits.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from kalab import handoff
from kalab.scenario import ScenarioError, load
from server.engines import command, version

READY_TIMEOUT = 20.0


def wait_until_accepting(host: str, port: int, child: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if child.poll() is not None:
            raise RuntimeError(f"the engine exited with code {child.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing accepts on {host}:{port} after {timeout:g} s") from None
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = handoff.role_arguments("Serve the scenario's app with one engine.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: never a public one)")
    args = parser.parse_args(argv)
    try:
        scenario = load(args.scenario)
    except ScenarioError as exc:
        print(f"kalab server: {exc}", file=sys.stderr)
        return 2
    engine = scenario.engine(args.engine) if args.engine else scenario.engines[0]
    args.run_dir.mkdir(parents=True, exist_ok=True)
    argv_engine = command(engine, scenario.app, args.host, scenario.port)
    log = open(args.run_dir / "server.log", "wb")  # noqa: SIM115 - the child writes to it
    child = subprocess.Popen(argv_engine, stdout=log, stderr=subprocess.STDOUT)

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        wait_until_accepting(args.host, scenario.port, child, READY_TIMEOUT)
        handoff.write_json(args.run_dir / handoff.SERVER_READY, {
            "engine": engine.name, "kind": engine.kind, "description": engine.describe(),
            "version": version(engine), "listen": f"{args.host}:{scenario.port}",
            "pid": child.pid, "argv": argv_engine, "ready_at": time.time(),
        })
        while child.poll() is None:
            time.sleep(0.1)
        return 0 if stopping else (child.returncode or 1)
    except (RuntimeError, TimeoutError) as exc:
        print(f"kalab server: {engine.name}: {exc} (see {args.run_dir / 'server.log'})",
              file=sys.stderr)
        return 1
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
