"""`kalab clean`: remove what crashed runs left behind.

A run's namespaces are removed (with anything still running in them) and
its recorded role processes killed, when the run that made them is gone.
Namespaces named like the lab's with no state file left are removed too.
"""

from __future__ import annotations

import os
import signal
import subprocess

from kalab.runtime.netns import remove_namespace
from kalab.runtime.state import PREFIX, saved_states


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_role(pid: int) -> bool:
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return False
    return any(part in (b"server", b"client", b"observer") for part in cmdline)


def lab_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def clean(everything: bool = False) -> list[str]:
    """Remove leftovers of runs that are over; ``everything`` also those still running."""
    removed: list[str] = []
    live_namespaces: set[str] = set()
    for path, data in saved_states():
        owner = data.get("owner")
        if owner and _alive(owner) and not everything:
            live_namespaces.update(data.get("namespaces", []))
            continue
        for pid in data.get("pids", []):
            if _alive(pid) and _is_role(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                removed.append(f"process {pid}")
        for project in data.get("compose_projects", []):
            from kalab.runtime.compose import down_project

            down_project(project)
            removed.append(f"compose project {project}")
        for ns in data.get("namespaces", []):
            if ns in lab_namespaces():
                remove_namespace(ns)
                removed.append(f"namespace {ns}")
        path.unlink(missing_ok=True)
    for ns in lab_namespaces():
        if ns not in live_namespaces:
            remove_namespace(ns)
            removed.append(f"namespace {ns}")
    return removed
