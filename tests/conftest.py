"""Shared fixtures: real runs of the lab, and a check that nothing is left behind."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KALAB = [sys.executable, "-m", "kalab.cli"]


def lab_namespaces() -> list[str]:
    if shutil.which("ip") is None:
        return []
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("kalab-")]


# A role, exec'd or forked (kalab.runtime.forkserver names its forks alike), or the fork
# server itself.
ROLE_PATTERN = "-m (server|client|observer|kalab.runtime.forkserver) "


def role_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "--", ROLE_PATTERN],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def free_port(low: int, high: int) -> int:
    """A loopback port in [low, high) that nothing listens on; each test file keeps its
    own range so that files run side by side do not race for a port."""
    for port in random.sample(range(low, high), min(40, high - low)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high - 1}")


@contextmanager
def capturing(port: int, pcap: Path, linger: float, hosts: Sequence[str] = ()) -> Iterator:
    """The observer's capture of ``port`` on lo (to and from ``hosts`` only, if given),
    read in a thread while the body runs.

    On the way out it keeps reading ``linger`` seconds more (the last FINs and
    ACKs), then closes: the yielded capture's ``stats`` are then final.
    """
    from observer.capture import Capture

    capture = Capture("lo", port, pcap, hosts=hosts)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            capture.poll(0.02)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        yield capture
    finally:
        time.sleep(linger)
        stop.set()
        reader.join()
        capture.close()


def can_run_lab() -> str | None:
    """Why the real lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, packet capture)"
    if shutil.which("ip") is None:
        return "needs iproute2"
    return None


requires_lab = pytest.mark.skipif(can_run_lab() is not None, reason=str(can_run_lab()))


def run_kalab(*args: str, cwd: Path | None = None, timeout: float = 300,
              env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COLUMNS": "120", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([*KALAB, *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env=environment)


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def _owned_elsewhere(namespace: str) -> bool:
    """True when a live lab run that this test session did not start owns it."""
    from kalab.runtime.state import saved_states

    for _, data in saved_states():
        owner = data.get("owner")
        if namespace in data.get("namespaces", []) and owner and Path(f"/proc/{owner}").exists():
            return not _descends_from(owner, os.getpid())
    return False


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory):
    """After the suite: no namespace or role process of this session may remain.

    Lab runs of other sessions on the same machine are not this suite's: their
    namespaces belong to a live owner outside this process tree, and their
    role processes work in other folders.
    """
    before = set(lab_namespaces())
    ours = str(tmp_path_factory.getbasetemp())
    yield
    left = [ns for ns in lab_namespaces() if ns not in before and not _owned_elsewhere(ns)]
    processes = [p for p in role_processes() if ours in p]
    if left or processes:
        subprocess.run([*KALAB, "clean"], cwd=ROOT, capture_output=True)
        pytest.fail(f"the tests left behind namespaces {left} and processes {processes}")


@pytest.fixture(scope="session")
def lab_workdir(tmp_path_factory) -> Path:
    """A folder that looks like the checkout (scenarios linked) for runs to write into."""
    work = tmp_path_factory.mktemp("lab")
    for name in ("lab.yaml", "scenarios", "course"):
        (work / name).symlink_to(ROOT / name)
    return work


@pytest.fixture(scope="session")
def walkthrough_results(lab_workdir):
    """Run the README walkthrough once, in order, in a scratch copy of the checkout."""
    from walkthrough import commands

    results = []
    for command in commands(ROOT / "README.md"):
        results.append((command, run_kalab(*command.argv, cwd=lab_workdir)))
    return results


@pytest.fixture(scope="session")
def lab_yaml_run(walkthrough_results, lab_workdir) -> Path:
    """The results folder of the walkthrough's `./lab run lab.yaml`."""
    folders = sorted((lab_workdir / "results").glob("tutorial-truth-*/report.json"))
    assert folders, "the walkthrough did not run lab.yaml"
    return folders[-1].parent


@pytest.fixture(scope="session", autouse=True)
def reports_match_the_schema(tmp_path_factory):
    """After the suite: every report.json a test made matches schema/report.schema.json."""
    yield
    import json

    try:
        import jsonschema
    except ImportError:
        pytest.fail("jsonschema is missing: pip install -e '.[test]'")
    schema = json.loads((ROOT / "schema" / "report.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    wrong = []
    for path in sorted(Path(tmp_path_factory.getbasetemp()).rglob("report.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            wrong.append(f"{path}: {exc}")
            continue
        wrong += [f"{path}: {e.json_path}: {e.message}" for e in validator.iter_errors(data)]
    if wrong:
        pytest.fail("reports that do not match schema/report.schema.json:\n" + "\n".join(wrong))
