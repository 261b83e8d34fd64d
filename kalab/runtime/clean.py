"""`kalab clean`: remove what runs cut short left behind.

A run whose owner is gone (killed, crashed, or cut short in its own
cleanup) has its recorded role processes killed, its compose projects
taken down and its namespaces removed; only then does its record go.
`kalab run` does this for dead runs before it starts, so a SIGKILLed run
leaves nothing past the next run. `kalab clean` also removes namespaces
named like the lab's that no record names (from a lab older than records);
`--all` stops runs still going too.
"""

from __future__ import annotations

import os
import signal
import subprocess

from kalab.runtime.netns import remove_namespace
from kalab.runtime.state import PREFIX, is_running, owner_alive, recorded_pids, saved_states

# The lab's processes, by the module they run: the roles, and the fork server of engines
# at once (`kalab.runtime.forkserver`).
LAB_MODULES = (b"server", b"client", b"observer", b"kalab.runtime.forkserver")


def _is_role(pid: int) -> bool:
    """Whether ``pid`` runs ``python -m`` one of `LAB_MODULES`: its arguments apart, as
    exec'd, or in one title, as the fork server names a role it forked (setproctitle)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().replace(b"\0", b" ").split()
    except OSError:
        return False
    return any(flag == b"-m" and module in LAB_MODULES
               for flag, module in zip(words, words[1:], strict=False))


def lab_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def remove_recorded(data: dict) -> list[str]:
    """Kill, take down and remove everything one run's record names; what was removed."""
    removed: list[str] = []
    for pid, started in recorded_pids(data):
        if is_running(pid, started) and _is_role(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            removed.append(f"process {pid}")
    for project in data.get("compose_projects", []):
        from kalab.runtime.compose import down_project

        down_project(project)
        removed.append(f"compose project {project}")
    existing = set(lab_namespaces()) if data.get("namespaces") else set()
    for ns in data.get("namespaces", []):
        if ns in existing:
            remove_namespace(ns)
            removed.append(f"namespace {ns}")
    return removed


def still_there(data: dict) -> list[str]:
    """What of a run's record still exists: namespaces and live role processes."""
    left = [f"namespace {ns}" for ns in set(data.get("namespaces", [])) & set(lab_namespaces())]
    left += [f"process {pid}" for pid, started in recorded_pids(data)
             if is_running(pid, started) and _is_role(pid)]
    return left


def _finish_runs(everything: bool) -> tuple[list[str], set[str]]:
    """Remove what runs that are over recorded (``everything``: every run); what was
    removed, and the namespaces of runs still going."""
    removed: list[str] = []
    live_namespaces: set[str] = set()
    for path, data in saved_states():
        if owner_alive(data) and not everything:
            live_namespaces.update(data.get("namespaces", []))
            continue
        removed += remove_recorded(data)
        if not still_there(data):
            path.unlink(missing_ok=True)
    return removed, live_namespaces


def clean_dead_runs() -> list[str]:
    """Finish the cleanup of every run whose owner is gone; what was removed."""
    return _finish_runs(everything=False)[0]


def clean(everything: bool = False) -> list[str]:
    """Remove leftovers of runs that are over; ``everything`` also those still running."""
    removed, live_namespaces = _finish_runs(everything)
    for ns in lab_namespaces():
        if ns not in live_namespaces:
            remove_namespace(ns)
            removed.append(f"namespace {ns}")
    return removed
