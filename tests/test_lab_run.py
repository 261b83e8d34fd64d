"""The acceptance of `kalab run lab.yaml`, measured on a real run in namespaces.

The run is the README walkthrough's (one run serves both); tshark referees
every fact taken from its pcaps.
"""

from __future__ import annotations

import json

import pytest
import tshark_referee
from conftest import requires_lab

pytestmark = [requires_lab, pytest.mark.slow]


@pytest.fixture(scope="module")
def report(lab_yaml_run):
    return json.loads((lab_yaml_run / "report.json").read_text())


def engine(report, name):
    (run,) = [r for r in report["runs"] if r["engine"] == name]
    return run


def by_id(items):
    return {item["id"]: item for item in items}


def test_report_is_versioned_and_passes(report):
    assert report["schema"] == "kalab.report/2"
    assert report["runtime"] == "netns"
    assert report["verdict"] == "pass" and report["exit_code"] == 0


def test_werkzeug_opens_one_connection_per_request_and_closes_each_itself(report):
    run = engine(report, "werkzeug")
    assert run["capture"]["kernel_drops"] == 0 and run["capture"]["problems"] == []
    requests = by_id(run["requests"])
    assert sorted(requests) == ["1", "2", "3", "4"]
    assert len({r["connection"] for r in requests.values()}) == 4
    assert all(r["depth"] == 1 and not r["reused"] for r in requests.values())
    server_port = run["listen"].rsplit(":", 1)[1]
    for conn in run["connections"]:
        assert conn["server"].endswith(f":{server_port}")
        assert conn["first_fin_by"] == "server"
        assert 0 <= conn["first_fin_at"] - conn["last_response_at"] < 1.0
    # What Werkzeug really sends beside the app's header.
    assert all(r["response_connection"] == "keep-alive, close" for r in requests.values())
    assert all(r["advertised_timeout"] == 5.0 for r in requests.values())


def test_gthread_reuses_then_server_closes_at_its_keep_alive(report):
    run = engine(report, "gthread-5")
    requests = by_id(run["requests"])
    conns = by_id(run["connections"])
    first = {requests[ref]["connection"] for ref in ("1", "2", "3")}
    assert len(first) == 1
    assert [requests[ref]["depth"] for ref in ("1", "2", "3")] == [1, 2, 3]
    shared = conns[first.pop()]
    assert shared["first_fin_by"] == "server"
    assert shared["first_fin_at"] - requests["3"]["response_end_at"] == pytest.approx(5.0, abs=0.5)
    fourth = conns[requests["4"]["connection"]]
    assert fourth["id"] != shared["id"] and requests["4"]["depth"] == 1
    assert fourth["first_fin_by"] == "client"
    assert fourth["first_fin_at"] - requests["4"]["response_end_at"] == pytest.approx(3.0, abs=0.5)


def test_client_beliefs_are_joined_to_the_wire(report):
    run = engine(report, "gthread-5")
    for request in run["requests"]:
        client = request["client"]
        assert client is not None and client["status"] == 200
        conn = by_id(run["connections"])[request["connection"]]
        assert conn["client"].endswith(f":{client['local_port']}")
    fourth = by_id(run["requests"])["4"]["client"]
    # The server's FIN arrived during the 6 s pause: urllib3 noticed and reconnected.
    assert any("Resetting dropped connection" in line or "Starting new" in line
               for line in fourth["events"])  # urllib3's words


@pytest.mark.skipif(not tshark_referee.available(), reason="tshark is not installed")
def test_tshark_agrees_with_every_connection_request_and_fin(report, lab_yaml_run):
    for run in report["runs"]:
        port = int(run["listen"].rsplit(":", 1)[1])
        problems = tshark_referee.compare(run, lab_yaml_run / run["capture"]["pcap"], port)
        assert problems == [], f"{run['engine']}: {problems}"


def test_seed_claims_are_refuted_by_name(walkthrough_results):
    (done,) = [d for c, d in walkthrough_results
               if c.argv == ["run", "scenarios/seed-claims.yaml"]]
    assert done.returncode == 1
    assert "requests within 5 seconds reuse the same connection" in done.stdout
    refuted = done.stdout.split("The wire refuted:", 1)[1]
    assert "the first request establishes a connection" not in refuted
