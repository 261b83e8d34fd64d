"""What a run created, written down as it is created, so `kalab clean` can undo it.

Each run keeps one JSON file under STATE_DIR naming its owner (pid and
start time, so a reused pid is never taken for the owner), its namespaces,
its compose projects and the role processes it started. The file goes only
when the run has removed everything it lists: a run cut short in its own
cleanup leaves the file, and the next `kalab run` or `kalab clean` finishes
the job.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

STATE_DIR = Path(os.environ.get("KALAB_STATE_DIR", "/run/kalab"))
PREFIX = "kalab-"  # every namespace the lab makes starts with this


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22);
    None when no such process runs. A pid and its start time name one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def is_running(pid: int, started: int | None) -> bool:
    """True when ``pid`` runs and is the process that started at ``started`` (if known)."""
    now = process_start(pid)
    return now is not None and (started is None or now == started)


class RunState:
    def __init__(self) -> None:
        self.run_id = secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.pids: list[list[int]] = []  # [pid, start time]
        self.compose_projects: list[str] = []
        self.path = STATE_DIR / f"{self.run_id}.json"

    def as_dict(self) -> dict:
        return {"owner": os.getpid(), "owner_start": process_start(os.getpid()),
                "namespaces": self.namespaces, "pids": self.pids,
                "compose_projects": self.compose_projects}

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.as_dict(), allow_nan=False))  # strict: no float here
        tmp.replace(self.path)

    def add_namespace(self, name: str) -> None:
        if name not in self.namespaces:  # a sweep makes a pair again once it is gone
            self.namespaces.append(name)
        self.save()

    def release(self, namespaces: list[str], pids: list[int]) -> None:
        """Forget namespaces and processes the run has removed already (a sweep's finished
        trials), so that the record stays the size of what runs now."""
        gone = set(pids)
        self.namespaces = [ns for ns in self.namespaces if ns not in namespaces]
        self.pids = [item for item in self.pids if item[0] not in gone]
        self.save()

    def add_pid(self, pid: int) -> None:
        self.pids.append([pid, process_start(pid) or 0])
        self.save()

    def add_compose_project(self, name: str) -> None:
        self.compose_projects.append(name)
        self.save()

    def forget(self) -> None:
        """Remove the record: only once everything it lists is gone."""
        self.path.unlink(missing_ok=True)


def saved_states() -> list[tuple[Path, dict]]:
    if not STATE_DIR.is_dir():
        return []
    out = []
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        out.append((path, data if isinstance(data, dict) else {}))
    return out


def owner_alive(data: dict) -> bool:
    owner = data.get("owner")
    return isinstance(owner, int) and is_running(owner, data.get("owner_start"))


def recorded_pids(data: dict) -> list[tuple[int, int | None]]:
    """The role processes a state names, each with its start time (None in old files)."""
    out = []
    for item in data.get("pids", []):
        if isinstance(item, int):
            out.append((item, None))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item):
            out.append((item[0], item[1] or None))
    return out
