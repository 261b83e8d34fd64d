"""The roles forked from one warmed process (kalab.runtime.forkserver) against the
reference, exec'd roles: the same run, the same report; and the fork server's children
behave as exec'd ones do (their exit codes, their logs, their names, their end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import requires_lab, role_processes, run_kalab

from kalab.runtime.forkserver import ForkServerError, RoleForkServer
from kalab.runtime.node import Node
from kalab.runtime.state import RunState

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = """\
name: forked
sessions:
  - steps: [get: /keep-alive, sleep: 0.6, get: /keep-alive, sleep: 0.3, close]
engines:
  - name: werkzeug
    engine: werkzeug
    expect:
      - connections: 2
  - name: gthread
    engine: gunicorn
    worker: gthread
    keep_alive: 5
    expect:
      - same_connection: [1, 2]
"""


def _wire(report: dict) -> dict:
    """What the wire said, per engine: verdicts, which request on which connection at
    which depth, who closed each connection."""
    return {run["engine"]: (run["verdict"],
                            [(r["id"], r["connection"], r["depth"], r["status"])
                             for r in run["requests"]],
                            [c["closed_by"] for c in run["connections"]])
            for run in report["runs"]}


@requires_lab
def test_forked_roles_make_the_same_run_as_exec_d_ones(tmp_path):
    (tmp_path / "forked.yaml").write_text(SCENARIO)
    reports = {}
    for way in ("exec", "fork"):
        done = run_kalab("run", "forked.yaml", "--results", str(tmp_path / way), cwd=tmp_path,
                         env={"KALAB_ROLES": way})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr
        reports[way] = json.loads((tmp_path / way / "report.json").read_text())
        # nothing of the fork server is left in the results: no log when it had nothing to say
        assert not (tmp_path / way / "role-forks.log").exists()
    assert _wire(reports["fork"]) == _wire(reports["exec"])
    assert _wire(reports["fork"])["gthread"][0] == "pass"


@pytest.fixture
def forks(tmp_path):
    state = RunState()
    server = RoleForkServer(state, ROOT, tmp_path / "role-forks.log")
    try:
        yield server, Node("host", state)
    finally:
        server.close()
        state.forget()


def test_a_forked_role_exits_as_the_exec_d_one_does_and_writes_to_its_log(tmp_path, forks):
    server, host = forks
    log = tmp_path / "role.log"
    forked = server.start_role(host, "json.tool", [str(tmp_path / "absent.json")], log,
                               tmp_path)
    code = forked.wait(30)
    reference = subprocess.run([sys.executable, "-m", "json.tool",
                                str(tmp_path / "absent.json")], capture_output=True, text=True)
    assert code == reference.returncode != 0
    assert "absent.json" in log.read_text() and "absent.json" in reference.stderr
    (tmp_path / "in.json").write_text('{"b": 1, "a": [2]}')
    ok = server.start_role(host, "json.tool", ["--sort-keys", "in.json", "out.json"],
                           tmp_path / "ok.log", tmp_path)  # relative: its working folder
    assert ok.wait(30) == 0
    assert json.loads((tmp_path / "out.json").read_text()) == {"a": [2], "b": 1}


def test_a_forked_role_is_named_as_an_exec_d_one_and_stops_on_sigterm(tmp_path, forks):
    server, host = forks
    role = server.start_role(host, "timeit", ["-n", "1", "import time; time.sleep(30)"],
                             tmp_path / "timeit.log", tmp_path)
    deadline = time.monotonic() + 10
    while "-m timeit -n 1" not in Path(f"/proc/{role.pid}/cmdline").read_text() \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"{sys.executable} -m timeit -n 1" in Path(f"/proc/{role.pid}/cmdline").read_text()
    assert os.getpgid(role.pid) == role.pid  # a session of its own: stop() signals its group
    assert role.alive()
    assert role.stop(grace=5) == -15
    assert not role.alive()


def test_the_fork_server_refuses_a_namespace_that_is_no_name(tmp_path, forks):
    server, _ = forks
    odd = Node("odd", server.state, "../../etc")
    with pytest.raises(ForkServerError, match="no namespace name"):
        server.start_role(odd, "json.tool", [], tmp_path / "odd.log", tmp_path)


def test_when_the_fork_server_goes_its_roles_go_too(tmp_path, forks):
    server, host = forks
    role = server.start_role(host, "timeit", ["-n", "1", "import time; time.sleep(30)"],
                             tmp_path / "timeit.log", tmp_path)
    server.popen.kill()  # as when kalab is killed: the kernel kills the fork server
    assert role.wait(10) == -15  # its PDEATHSIG
    assert not [p for p in role_processes() if str(role.pid) in p.split()[0]]


def test_kalab_run_refuses_a_kalab_roles_it_does_not_know(tmp_path):
    (tmp_path / "forked.yaml").write_text(SCENARIO)
    done = run_kalab("run", "forked.yaml", cwd=tmp_path, env={"KALAB_ROLES": "spawn"})
    assert done.returncode == 2
    assert done.stderr.startswith("kalab: KALAB_ROLES='spawn': fork or exec")
    assert not (tmp_path / "results").exists()  # nothing started


def test_kalab_clean_knows_the_fork_server_and_what_it_forked(tmp_path, forks):
    """`kalab clean` kills only the lab's processes a dead run recorded: the fork server,
    and a role by the one title its fork has (python -m ROLE ARGS, not separate
    arguments; the naming itself is tested above); another module is not one."""
    from kalab.runtime.clean import _is_role

    server, host = forks
    other = server.start_role(host, "timeit", ["-n", "1", "import time; time.sleep(30)"],
                              tmp_path / "timeit.log", tmp_path)
    titled = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\nfrom setproctitle import setproctitle\n"
                               "setproctitle(sys.argv[1])\nprint(flush=True)\ntime.sleep(30)",
                               f"{sys.executable} -m observer scenario.yaml --engine x"],
                              stdout=subprocess.PIPE)
    try:
        titled.stdout.readline()  # its title is set
        assert _is_role(server.popen.pid)
        assert _is_role(titled.pid)
        assert not _is_role(other.pid)
        assert not _is_role(os.getpid())
    finally:
        titled.kill()
        titled.wait()
        other.stop(grace=5)
