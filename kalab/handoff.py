"""How the roles hand results to each other: JSON files in the engine's folder.

The roles run in separate namespaces or containers and share only a folder
(a bind mount under compose). Each writes its record atomically, so a reader
never sees half a file, and each role's file names live here, once.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

SERVER_READY = "server.json"
OBSERVER_READY = "observer.ready"
CAPTURE_STATS = "capture.json"
CAPTURE_PCAP = "capture.pcap"
CLIENT_RECORDS = "client.json"
CLIENT_DONE = "client.done"


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def wait_for(path: Path, timeout: float, alive: Any = None, what: str = "") -> None:
    """Wait until ``path`` exists; fail early if ``alive()`` says the writer died."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if alive is not None and not alive():
            raise RuntimeError(f"{what or path.name}: the process ended before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or path.name}: not ready after {timeout:g} s")
        time.sleep(0.02)


def role_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every role takes: the same in netns, local and compose runs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("scenario", help="the scenario file (e.g. lab.yaml)")
    parser.add_argument("--engine", help="the engine's name in the scenario "
                        "(default: the first engine)")
    parser.add_argument("--run-dir", type=Path, default=Path("results/role"),
                        help="folder shared by the roles for this engine's run")
    return parser
