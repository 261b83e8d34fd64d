"""`kalab probe` against servers the tests start in namespaces of their own.

Each server (gunicorn gthread at keep-alive 2 and 5, Werkzeug, nginx with
`keepalive_timeout 3`, gthread with `max_requests`) runs in a server
namespace joined by a veth to a client namespace, where `kalab probe` runs
with its capture: the enforced idle timeout it reports must be within 50 ms
of the server's own setting and of what the lab's analyzer shows on the
probe's own capture (the same value a lab run reports). A server whose FIN
never reaches the client (dropped by iptables in its namespace) is found by
bisection. Nothing but the tests' own namespaces is ever addressed.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import KALAB, ROOT, requires_lab
from served import PORT, ip, served

pytestmark = [requires_lab, pytest.mark.slow]


def probe(client_ns: str, url: str, out: Path, *extra: str) -> dict:
    done = subprocess.run(["ip", "netns", "exec", client_ns, *KALAB, "probe", url,
                           "--results", str(out), *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    return json.loads((out / "report.json").read_text())


CASES = {
    "gthread-2": ("{engine: gunicorn, worker: gthread, keep_alive: 2}", 2.0, None),
    "gthread-5": ("{engine: gunicorn, worker: gthread, keep_alive: 5}", 5.0, None),
    "werkzeug": ("{engine: werkzeug}", 0.0, 1),
    "nginx-3": ("{engine: nginx, keepalive_timeout: 3, keep_alive: 10}", 3.0, None),
    "gthread-max-4": ("{engine: gunicorn, worker: gthread, keep_alive: 5, max_requests: 4}",
                      5.0, 4),
}


def run_case(item: tuple[int, tuple[str, tuple]], tmp: Path) -> tuple[str, dict]:
    number, (name, (engine, _, _)) = item
    with served(name, engine, number + 1) as (client_ns, url):
        return name, probe(client_ns, url, tmp / name, "--max-idle", "8")


def test_the_probe_finds_what_each_server_enforces(tmp_path):
    with ThreadPoolExecutor(3) as pool:
        reports = dict(pool.map(lambda item: run_case(item, tmp_path), enumerate(CASES.items())))
    for name, (_, idle, per_connection) in CASES.items():
        report = reports[name]
        found = report["probe"]
        assert found["idle_timeout"] == pytest.approx(idle, abs=0.05), (name, found)
        if idle:
            assert found["idle_found_by"] == "watched close" and found["closed_with"] == "fin"
            # The lab's analyzer, on the probe's own capture, shows the same close.
            (run,) = report["runs"]
            closed = [c for c in run["connections"] if c["first_fin_by"] == "server"]
            assert closed, name
            assert any(abs(c["idle_before_close"] - found["idle_timeout"]) <= 0.05
                       for c in closed), (name, closed, found)
        else:
            assert found["idle_found_by"] == "closed after each response"
        if per_connection is not None:
            assert found["requests_limited"] is True
            assert found["requests_per_connection"] == per_connection, (name, found)
        else:
            assert found["requests_limited"] is False
        assert found["requests_sent"] <= 60 and report["runtime"] == "probe"
        assert report["verdict"] == "observed" and report["exit_code"] == 0


def test_a_close_that_never_reaches_the_client_is_found_by_bisection(tmp_path):
    with served("silent", "{engine: gunicorn, worker: gthread, keep_alive: 2}", 9) \
            as (client_ns, url):
        server_ns = client_ns[:-1] + "s"
        ip("netns", "exec", server_ns, "iptables", "-A", "OUTPUT", "-p", "tcp", "--sport",
           str(PORT), "--tcp-flags", "FIN", "FIN", "-j", "DROP")
        report = probe(client_ns, url, tmp_path / "silent", "--max-idle", "4",
                       "--no-capture")
    found = report["probe"]
    assert found["closed_with"] == "silent"
    assert found["idle_found_by"].startswith("bisection")
    assert found["idle_timeout"] == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("url", ["ftp://10.215.0.1/", "10.215.0.1:5000", "file:///etc/passwd",
                                 "http://user:pw@10.215.0.1/", "http://", "http://x:99999/",
                                 "http://a b/"])
def test_the_probe_takes_only_an_explicit_http_url(tmp_path, url):
    done = subprocess.run([*KALAB, "probe", url, "--no-capture", "--results",
                           str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("option,value", [("--max-requests", "0"), ("--rate", "nan"),
                                          ("--max-seconds", "1e9"), ("--max-idle", "-1")])
def test_the_probe_s_bounds_are_bounded(tmp_path, option, value):
    done = subprocess.run([*KALAB, "probe", "http://10.215.0.1:5000/", option, value,
                           "--no-capture"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and option in done.stderr


@pytest.mark.parametrize("carried,reported,note", [
    ([(4, True), (4, True)], 4, None),
    ([(2, True), (4, True), (4, True)], 4, "the last two agreed"),
    ([(2, True), (4, True), (1, True)], 4, "none agreed; the most is reported"),
])
def test_requests_per_connection_is_what_connections_agree_on_or_the_most_one_carried(
        monkeypatch, carried, reported, note):
    """A limit counted over a server's life (gunicorn --max-requests) cuts connections
    short; under load a restart can cut two, so the one carried in full is reported."""
    from kalab import probe as probe_mod

    tries = iter(carried)
    monkeypatch.setattr(probe_mod, "_carried", lambda *args: next(tries))
    found = probe_mod.Findings()
    probe_mod._per_connection(None, probe_mod.Limits(), None, found, None)
    assert (found.requests_per_connection, found.requests_limited) == (reported, True)
    assert (note is None and not found.notes) or note in found.notes[0]
