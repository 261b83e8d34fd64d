"""What a run created, written down as it is created, so `kalab clean` can undo it.

Each run keeps one JSON file under STATE_DIR naming its owner pid, its
namespaces and the pids of the role processes it started. The file goes
when the run has removed everything itself.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

STATE_DIR = Path(os.environ.get("KALAB_STATE_DIR", "/run/kalab"))
PREFIX = "kalab-"  # every namespace the lab makes starts with this


class RunState:
    def __init__(self) -> None:
        self.run_id = secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.pids: list[int] = []
        self.compose_projects: list[str] = []
        self.path = STATE_DIR / f"{self.run_id}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        data = {"owner": os.getpid(), "namespaces": self.namespaces, "pids": self.pids,
                "compose_projects": self.compose_projects}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, allow_nan=False))  # strict: names and ids, no float
        tmp.replace(self.path)

    def add_namespace(self, name: str) -> None:
        self.namespaces.append(name)
        self.save()

    def add_pid(self, pid: int) -> None:
        self.pids.append(pid)
        self.save()

    def add_compose_project(self, name: str) -> None:
        self.compose_projects.append(name)
        self.save()

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def saved_states() -> list[tuple[Path, dict]]:
    if not STATE_DIR.is_dir():
        return []
    out = []
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            out.append((path, {}))
    return out
