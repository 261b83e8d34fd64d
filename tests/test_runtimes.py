"""Real runs on both runtimes, every engine, and cleanup when a run is cut short."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import tshark_referee
from conftest import KALAB, ROOT, lab_namespaces, requires_lab, role_processes, run_kalab

pytestmark = [requires_lab, pytest.mark.slow]
ENGINES = ROOT / "scenarios" / "engines.yaml"


def by_id(items):
    return {item["id"]: item for item in items}


@pytest.fixture(scope="module", params=["netns", "local"])
def engines_run(request, tmp_path_factory):
    results = tmp_path_factory.mktemp(f"engines-{request.param}")
    done = run_kalab("run", str(ENGINES), "--runtime", request.param, "--results", str(results))
    assert done.returncode == 0, done.stdout + done.stderr
    return request.param, results, json.loads((results / "report.json").read_text())


def test_every_engine_behaves_as_measured(engines_run):
    runtime, _, report = engines_run
    runs = {r["engine"]: r for r in report["runs"]}
    unthreaded = by_id(runs["werkzeug-unthreaded"]["requests"])
    assert {r["response_version"] for r in unthreaded.values()} == {"HTTP/1.0"}
    sync = runs["gunicorn-sync"]
    assert all(r["response_connection"] == "close" for r in sync["requests"])
    assert runs["gunicorn-sync"]["version"].startswith("gunicorn ")
    gthread = by_id(runs["gthread-default"]["requests"])
    assert gthread["1"]["connection"] == gthread["2"]["connection"]
    assert gthread["2"]["reused"] is True
    # gunicorn drops the app's Keep-Alive header: nothing is advertised.
    assert gthread["2"]["response_keep_alive"] is None
    for run in report["runs"]:
        probes = [c for c in run["connections"] if c["probe"]]
        if runtime == "netns":
            # The readiness probe runs inside the server's namespace, on its loopback.
            assert probes == []
        else:
            assert probes, "on loopback the readiness probe is on the wire"
            assert all(not c["requests"] for c in probes)


def test_on_netns_the_engines_go_at_once_each_in_a_network_of_its_own(engines_run):
    runtime, results, report = engines_run
    captures = [run["capture"] for run in report["runs"]]
    listens = [run["listen"] for run in report["runs"]]
    interfaces = [capture["interface"] for capture in captures]
    if runtime == "local":  # one loopback: in turn, on the same address
        assert set(listens) == {"127.0.0.1:5000"} and set(interfaces) == {"lo"}
        spans = sorted((c["started_at"], c["stopped_at"]) for c in captures)
        assert all(end <= start for (_, end), (start, _) in pairwise(spans))
        return
    # Each engine its own pair of namespaces: its own address, veth and observer ...
    assert len(set(listens)) == len(listens) == 3, listens
    assert all(listen.startswith("10.213.") for listen in listens)
    assert len(set(interfaces)) == len(interfaces), interfaces
    for run in report["runs"]:  # ... and the client came from its pair's own address
        server = run["listen"].rsplit(":", 1)[0]
        last = int(server.rsplit(".", 1)[1])
        client = f"{server.rsplit('.', 1)[0]}.{last + 1}"
        assert {c["client"].rsplit(":", 1)[0] for c in run["connections"]} == {client}
    # ... all at once: every capture was open while every other was.
    assert max(c["started_at"] for c in captures) < min(c["stopped_at"] for c in captures)
    for run in report["runs"]:  # each role's output in its engine's folder
        assert {"observer.log", "server-role.log", "client.log"} <= \
            {p.name for p in (results / run["engine"]).iterdir()}


@pytest.mark.skipif(not tshark_referee.available(), reason="tshark is not installed")
def test_tshark_agrees_on_every_engine(engines_run):
    _, results, report = engines_run
    for run in report["runs"]:
        problems = tshark_referee.compare(run, results / run["capture"]["pcap"], 5000)
        assert problems == [], f"{run['engine']}: {problems}"


def start_run(results: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([*KALAB, "run", str(ROOT / "lab.yaml"), "--results", str(results)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_until_client_runs(results: Path, run: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not (results / "werkzeug" / "server.json").exists():
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the run never got its server ready"
        time.sleep(0.05)
    time.sleep(0.5)


def namespaces_of(folder: Path, candidates: set[str]) -> set[str]:
    """Those of ``candidates`` where a process of the run in ``folder`` runs (other runs
    on this machine make and remove namespaces too)."""
    mine = set()
    for ns in candidates:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(folder).encode() in cmdline:
                mine.add(ns)
    return mine


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_removes_everything(tmp_path, sig):
    before = set(lab_namespaces())
    run = start_run(tmp_path)
    try:
        wait_until_client_runs(tmp_path, run)
        made = namespaces_of(tmp_path, set(lab_namespaces()) - before)
        assert len(made) == 4, f"two engines at once: two pairs of namespaces, not {made}"
        run.send_signal(sig)
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 5, err
    assert "interrupted during scenario" in err and "stopped" in err
    assert not made & set(lab_namespaces())
    assert not [p for p in role_processes() if str(tmp_path) in p]


def test_kalab_clean_removes_what_a_killed_run_left(tmp_path):
    before = set(lab_namespaces())
    run = start_run(tmp_path)
    try:
        wait_until_client_runs(tmp_path, run)
        run.kill()  # no chance to clean up after itself
        run.wait()
        assert set(lab_namespaces()) - before
        assert [p for p in role_processes() if str(tmp_path) in p]
    finally:
        done = run_kalab("clean")
    assert done.returncode == 0
    assert "removed namespace" in done.stdout
    assert set(lab_namespaces()) == before
    deadline = time.monotonic() + 5
    while [p for p in role_processes() if str(tmp_path) in p] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in role_processes() if str(tmp_path) in p]


def test_the_observer_keeps_its_pcap_and_report_on_sigterm(tmp_path):
    """As compose stops it: the capture in progress is closed, accounted and reported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    observer = subprocess.Popen(
        [sys.executable, "-m", "observer", str(ROOT / "lab.yaml"), "--interface", "lo",
         "--run-dir", str(tmp_path), "--report", "--runtime", "local"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "werkzeug" / "observer.ready").exists():
            assert observer.poll() is None, observer.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        observer.send_signal(signal.SIGTERM)
        observer.communicate(timeout=20)
    finally:
        if observer.poll() is None:
            os.killpg(observer.pid, signal.SIGKILL)
            observer.wait()
    capture = json.loads((tmp_path / "werkzeug" / "capture.json").read_text())
    assert capture["interface"] == "lo" and capture["stopped_at"] >= capture["started_at"]
    assert (tmp_path / "werkzeug" / "capture.pcap").read_bytes()[:4] == b"\xd4\xc3\xb2\xa1"
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["engine"] for r in report["runs"]] == ["werkzeug"]
    # Stopped before any server started: the report says so, and concludes nothing.
    assert report["verdict"] == "interrupted" and report["exit_code"] == 5
    assert report["complete"] is False and report["phase"] == "server start"
    assert report["runs"][0]["verdict"] == "interrupted"
    assert report["runs"][0]["expectations"] == []
    assert report["engines_not_run"] == ["gthread-5"]
    assert (tmp_path / "observer.done").exists()


MY_APP = '''\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return [b"mine"]
'''


def test_a_users_own_app_file_is_served_by_every_kind_of_engine(tmp_path):
    (tmp_path / "my_app.py").write_text(MY_APP)
    (tmp_path / "mine.yaml").write_text("""\
app: {file: my_app.py}
sessions: [{steps: [get: /, sleep: 0.2, get: /]}]
engines:
  - {engine: werkzeug, expect: [status: 200]}
  - {engine: gunicorn, expect: [status: 200, same_connection: [1, 2]]}
  - {engine: waitress, expect: [status: 200]}
""")
    done = run_kalab("run", str(tmp_path / "mine.yaml"), "--results", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["verdict"] for r in report["runs"]] == ["pass"] * 3
