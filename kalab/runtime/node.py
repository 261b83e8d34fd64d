"""A node: a place where role processes run (a network namespace, or the host).

Every process is started in a session of its own, so stopping it stops
its children too (the server role's engine, gunicorn's workers), and its
pid is recorded in the run's state before anything else happens. Each gets
SIGTERM if `kalab` dies (`kalab.lifeline`): a killed run's roles do not
keep capturing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kalab.lifeline import spawn
from kalab.runtime.state import RunState


class Process:
    def __init__(self, name: str, popen: subprocess.Popen, log: Path) -> None:
        self.name, self.popen, self.log = name, popen, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def terminate(self) -> None:
        """SIGTERM the process group, if the process still runs (`stop` waits for it)."""
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        # Children that outlived their parent, e.g. a worker.
        _signal_group(self.popen.pid, signal.SIGKILL)
        return self.popen.returncode

    def tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all(processes: list[Process], grace: float = 5.0) -> None:
    """Stop ``processes`` together: SIGTERM to each in the order given, then each waited
    for within one shared ``grace`` before its SIGKILL."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.stop(max(0.0, deadline - time.monotonic()))


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Node:
    """Runs commands on the host (``netns=None``) or inside a namespace."""

    def __init__(self, name: str, state: RunState, netns: str | None = None) -> None:
        self.name, self.state, self.netns = name, state, netns

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def start_role(self, role: str, args: list[str], log: Path, cwd: Path) -> Process:
        """Start ``python -m ROLE ARGS`` here, its output to ``log``."""
        argv = [*self.prefix(), sys.executable, "-m", role, *args]
        with open(log, "ab") as out:
            popen = spawn(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                          env=role_environment(cwd),
                          start_new_session=True, stdin=subprocess.DEVNULL)
        self.state.add_pid(popen.pid)
        time.sleep(0)  # let the child get going before the caller polls its files
        return Process(f"{self.name}:{role}", popen, log)


def role_environment(root: Path) -> dict[str, str]:
    """A role's environment: this one's, its output unbuffered, the project importable."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath(root)}


def pythonpath(root: Path) -> str:
    # The roles are packages at the project's top level; keep them importable
    # whether the project is installed or run from a checkout.
    current = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{current}" if current else str(root)
