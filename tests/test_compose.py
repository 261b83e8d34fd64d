"""The containers: `docker compose up` really runs, and agrees with the netns runtime.

These need a Docker engine with compose v2 and a base image the images can
be built from without a registry (CI builds one: see .ci/docker); they skip,
saying why, where no engine answers.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import tshark_referee
from conftest import ROOT, requires_lab, run_kalab
from walkthrough import docker_commands

from kalab.runtime.compose import docker_problem
from kalab.scenario import load

PROBLEM = docker_problem()
REQUIRED = os.environ.get("KALAB_REQUIRE_DOCKER") == "1"  # CI: a missing engine is a failure
pytestmark = [pytest.mark.skipif(PROBLEM is not None and not REQUIRED,
                                 reason=f"Docker: {PROBLEM}"),
              pytest.mark.slow]


def test_docker_is_there_when_required():
    assert PROBLEM is None, f"KALAB_REQUIRE_DOCKER=1 but {PROBLEM}"


def project_leftovers(project: str) -> list[str]:
    label = f"label=com.docker.compose.project={project}"
    found = []
    for kind in (["ps", "-aq"], ["network", "ls", "-q"], ["volume", "ls", "-q"]):
        out = subprocess.run(["docker", *kind, "--filter", label], capture_output=True,
                             text=True).stdout.split()
        found += [f"{kind[0]} {item}" for item in out]
    return found


def shape(run: dict) -> dict:
    """What must agree between runtimes: connections, request grouping and depth, closers."""
    by_conn: dict[int, list[str]] = {}
    for request in run["requests"]:
        by_conn.setdefault(request["connection"], []).append(request["id"])
    conns = {c["id"]: c for c in run["connections"] if not c["probe"]}
    racy = {r["connection"] for r in run["requests"] if r["response_connection"] == "close"
            and not run["kind"] == "werkzeug"}
    return {
        "connections": len(conns),
        "groups": sorted(tuple(ids) for ids in by_conn.values()),
        "depths": {r["id"]: r["depth"] for r in run["requests"]},
        # Where the server answers `Connection: close` who sends the first FIN is a race.
        "closers": sorted((tuple(by_conn[c]), conns[c]["first_fin_by"]) for c in conns
                          if c not in racy),
    }


def idle_times(run: dict) -> dict:
    by_conn = {}
    for request in run["requests"]:
        by_conn.setdefault(request["connection"], []).append(request["id"])
    return {tuple(by_conn[c["id"]]): c["idle_before_close"] for c in run["connections"]
            if c["id"] in by_conn}


def assert_same_wire(compose_report: dict, netns_report: dict) -> None:
    assert [r["engine"] for r in compose_report["runs"]] == \
        [r["engine"] for r in netns_report["runs"]]
    for ours, theirs in zip(compose_report["runs"], netns_report["runs"], strict=True):
        assert shape(ours) == shape(theirs), ours["engine"]
        for group, idle in idle_times(ours).items():
            other = idle_times(theirs)[group]
            # gunicorn's gthread looks for idle connections once a second.
            assert idle == pytest.approx(other, abs=1.1), (ours["engine"], group)


@pytest.fixture(scope="module")
def compose_lab_yaml(tmp_path_factory):
    results = tmp_path_factory.mktemp("compose-lab")
    done = run_kalab("run", "--runtime", "compose", "lab.yaml", "--results", str(results),
                     timeout=600)
    return done, results


def test_compose_runs_lab_yaml_and_exits_with_the_verdict(compose_lab_yaml):
    done, results = compose_lab_yaml
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((results / "report.json").read_text())
    assert report["runtime"] == "compose" and report["verdict"] == "pass"
    for run in report["runs"]:
        assert run["capture"]["interface"] == "eth0"
        assert (results / run["capture"]["pcap"]).stat().st_size > 24
    assert (results / "summary.txt").read_text().count("PASS") >= 10


@requires_lab
def test_compose_and_netns_see_the_same_wire_on_lab_yaml(compose_lab_yaml, lab_yaml_run):
    _, results = compose_lab_yaml
    assert_same_wire(json.loads((results / "report.json").read_text()),
                     json.loads((lab_yaml_run / "report.json").read_text()))


@requires_lab
@pytest.mark.parametrize("scenario", ["scenarios/engines.yaml", "scenarios/nginx.yaml",
                                      "scenarios/slow-rate.yaml"])
def test_compose_and_netns_see_the_same_wire(tmp_path, scenario):
    compose = run_kalab("run", "--runtime", "compose", scenario, "--results",
                        str(tmp_path / "compose"), timeout=600)
    netns = run_kalab("run", scenario, "--results", str(tmp_path / "netns"))
    assert (compose.returncode, netns.returncode) == (0, 0), compose.stderr + netns.stderr
    assert_same_wire(json.loads((tmp_path / "compose" / "report.json").read_text()),
                     json.loads((tmp_path / "netns" / "report.json").read_text()))


@pytest.mark.parametrize("scenario", ["scenarios/race.yaml", "scenarios/waitress.yaml",
                                      "scenarios/delay-100ms.yaml", "scenarios/nginx-502.yaml",
                                      "scenarios/haproxy-chain.yaml",
                                      "scenarios/haproxy-chain-fixed.yaml",
                                      "scenarios/every-client.yaml"])
def test_issue_scenarios_hold_in_containers(tmp_path, scenario):
    """Engines and clients of the bundled scenarios run in containers too.

    Not compared connection by connection with the netns run: the images carry
    Debian's urllib3 1.26 and the host's venv urllib3 2.x, and after a retry
    2.x leaves the new connection open past session.close() (the wire shows
    it), where 1.26 closes it.
    """
    done = run_kalab("run", "--runtime", "compose", scenario, "--results", str(tmp_path),
                     timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "pass"
    # a link's impairments were applied in the containers, each direction by its role
    applied = report["runs"][0]["capture"]["impairments"]
    assert sorted(line.split(":")[0] for line in applied) == sorted(load(ROOT / scenario).link)


# The images on each Debian base CI builds (.ci/docker): bookworm's, the lab's own, and
# trixie's, whose renamed packages and newer libraries the code must work with too.
BASES = {"bookworm": "KALAB_BASE_IMAGE", "trixie": "KALAB_BASE_IMAGE_TRIXIE"}


@pytest.mark.parametrize("base", list(BASES))
def test_every_engine_and_client_runs_in_containers_on_both_debian_bases(tmp_path, base):
    image = os.environ.get(BASES[base])
    if not image:
        if REQUIRED:
            pytest.fail(f"KALAB_REQUIRE_DOCKER=1 but {BASES[base]} names no base image")
        pytest.skip(f"no {base} base image ({BASES[base]})")
    env = {"KALAB_BASE_IMAGE": image, "KALAB_TAG": f"test-{base}"}
    versions = {}
    for scenario in ("scenarios/every-client.yaml", "scenarios/tutorial-more-engines.yaml"):
        results = tmp_path / scenario.split("/")[1].removesuffix(".yaml")
        done = run_kalab("run", "--runtime", "compose", scenario, "--results", str(results),
                         env=env, timeout=900)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr
        report = json.loads((results / "report.json").read_text())
        assert report["verdict"] == "pass"
        versions.update({run["kind"]: run["version"] for run in report["runs"]})
        for client in results.glob("*/client.json"):
            versions.update(json.loads(client.read_text())["versions"])
    # the libraries are the base's own Debian packages
    assert {"uvicorn", "hypercorn", "apache", "uwsgi", "haproxy", "httpx", "aiohttp",
            "curl", "urllib3"} <= set(versions), versions


def test_plain_docker_compose_up_gives_the_verdict_and_down_leaves_nothing(tmp_path):
    """The README's one-liner, as a user types it, on the tutorial's own claims; then
    another scenario: each run keeps a folder of its own, `latest` the newest."""
    (readme_env, up_argv), down_argv = docker_commands(ROOT / "README.md")
    project = f"kalab-test-{os.getpid()}"
    env = {**os.environ, **readme_env, "KALAB_RESULTS": str(tmp_path),
           "KALAB_PROJECT": project}
    try:
        up = subprocess.run(up_argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**env, "KALAB_SCENARIO": "./scenarios/seed-claims.yaml"})
        assert up.returncode == 1, up.stdout[-3000:] + up.stderr[-3000:]
        (first,) = tmp_path.glob("seed-claims-*")
        report = json.loads((first / "report.json").read_text())
        assert report["verdict"] == "fail"
        refuted = [e["claim"] for r in report["runs"] for e in r["expectations"]
                   if not e["passed"]]
        assert "requests within 5 seconds reuse the same connection" in refuted
        assert project_leftovers(project)  # the stopped containers are still there
        written = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
        again = subprocess.run(up_argv, cwd=ROOT, capture_output=True, text=True,
                               timeout=600,
                               env={**env, "KALAB_SCENARIO": "./scenarios/engines.yaml"})
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    finally:
        down = subprocess.run(down_argv, cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert project_leftovers(project) == []
    (second,) = tmp_path.glob("engines-*")
    assert (tmp_path / "latest").resolve() == second.resolve()
    assert json.loads((second / "report.json").read_text())["verdict"] == "pass"
    # Nothing the first run wrote was touched by the second.
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == written


def test_https_runs_in_containers_and_tshark_reads_it_with_the_client_s_key_log(tmp_path):
    """scenarios/https.yaml in containers: the server's certificate names the compose
    service the client connects to, the client trusts the run's CA and writes its key
    log into the engine's folder, and the observer's copy of it reads the pcap: the run
    passes, its report read through the key log as tshark reads it."""
    from test_https import sent, server_hello_versions, tshark_http

    done = run_kalab("run", "--runtime", "compose", "scenarios/https.yaml", "--results",
                     str(tmp_path), timeout=900)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["engine"] for r in report["runs"]] == ["gunicorn-gthread-tls", "nginx-tls"], \
        done.stdout[-3000:] + done.stderr
    for run in report["runs"]:
        folder = tmp_path / run["engine"]
        client = json.loads((folder / "client.json").read_text())
        assert client["base_url"] == "https://server:5000"
        assert [r["status"] for r in client["requests"]] == [200, 200, 200]
        pcap = tmp_path / run["capture"]["pcap"]
        assert server_hello_versions(pcap, 5000) == {"0x0304"}
        seen = tshark_http(pcap, 5000, folder / "tls-keys.log")
        assert sorted((m, u) for _, m, u, _ in seen if m) == sent(client)
        assert not list(folder.rglob("*key.pem"))
        # the observer read the requests with the key log, as on netns
        assert tshark_referee.compare(run, pcap, 5000, folder / "tls-keys.log") == []
        assert [(r["method"], r["status"], r["inferred"]) for r in run["requests"]] == \
            [("GET", 200, False)] * 3
        assert run["verdict"] == "pass" and len(run["expectations"]) == 4
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
