"""Every bundled scenario runs on real engines and its expectations hold.

Each scenario file states, with its expectations, what the wire shows (see
the comment at its top); a run that exits 0 is the lab agreeing with it.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, requires_lab, run_kalab
from tshark_referee import compare

from kalab.scenario import load

pytestmark = [requires_lab, pytest.mark.slow]

# lab.yaml and seed-claims.yaml run in the README walkthrough; engines.yaml in
# test_runtimes; broken-example.yaml is broken on purpose; those below with a
# test of their own run there.
ELSEWHERE = {"engines.yaml", "seed-claims.yaml", "broken-example.yaml", "race.yaml",
             "delay-100ms.yaml", "nginx-502.yaml"}
BUNDLED = sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml") if p.name not in ELSEWHERE)


def run_bundled(name: str, results: Path) -> dict:
    """Run a bundled scenario; check it passes with every expectation; its report."""
    done = run_kalab("run", f"scenarios/{name}", "--results", str(results), timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr
    report = json.loads((results / "report.json").read_text())
    assert report["verdict"] == "pass"
    scenario = load(ROOT / "scenarios" / name)
    assert all(len(run["expectations"]) == len(engine.expect) and engine.expect
               for run, engine in zip(report["runs"], scenario.engines, strict=True))
    if scenario.link:
        applied = report["runs"][0]["capture"]["impairments"]
        assert sorted(line.split(":")[0] for line in applied) == sorted(scenario.link)
    return report


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_scenario_holds_on_the_wire(name, tmp_path):
    run_bundled(name, tmp_path)


def test_a_delayed_link_delays_each_way_and_nothing_else(tmp_path):
    (run,) = run_bundled("delay-100ms.yaml", tmp_path)["runs"]
    pcap = tmp_path / run["capture"]["pcap"]
    assert compare(run, pcap, 5000) == []  # tshark agrees on connections, FINs, times
    # tshark on the observer's pcap (at the server): the server answers the SYN
    # at once, the client's ACK comes a round trip (100 ms each way) later.
    fields = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "tcp.flags.syn == 1 || tcp.seq == 1 && tcp.ack == 1 "
         "&& tcp.len == 0", "-T", "fields", "-e", "frame.time_relative", "-e", "tcp.flags.str"],
        capture_output=True, text=True, check=True).stdout.split("\n")
    syn, syn_ack, ack = (float(line.split("\t")[0]) for line in fields[:3])
    assert syn_ack - syn < 0.05
    assert 0.195 <= ack - syn_ack < 0.5
    # the server's response leaves in one go: the delay line holds nothing on its side
    (conn,) = run["connections"]
    assert 1.8 <= conn["idle_before_close"] <= 3.0
    lines = " ".join(run["capture"]["impairments"])
    assert "server_to_client: delay 100ms" in lines and "coming in by" in lines
    assert "client_to_server: delay 100ms" in lines and "LOST" not in lines


def test_the_proxy_502_and_its_fix(tmp_path):
    (broken,) = run_bundled("nginx-502.yaml", tmp_path / "broken")["runs"]
    requests = {r["id"]: r for r in broken["requests"]}
    assert requests["2"]["status"] == 502 and requests["2"]["story"] == "reused"
    assert requests["2"]["client"]["status"] == 502
    # nginx says why, and the report carries its words: the pooled upstream
    # connection was gone under the POST
    error_log = (tmp_path / "broken" / broken["engine"] / "nginx-error.log").read_text()
    reason = re.compile(r"upstream prematurely closed|Connection reset by peer")
    assert reason.search(error_log)
    assert [line for line in broken["engine_log"] if reason.search(line)]
    summary = (tmp_path / "broken" / "summary.txt").read_text()
    assert "the engine logged:" in summary and reason.search(summary)
    assert "only FIN packets from port" in " ".join(broken["capture"]["impairments"])


def test_the_race_is_shown_from_both_sides(tmp_path):
    (run,) = run_bundled("race.yaml", tmp_path)["runs"]
    requests = {r["id"]: r for r in run["requests"]}
    connections = {c["id"]: c for c in run["connections"]}
    post = requests["post.2"]
    # On the wire: the server's FIN, then the POST on the same connection, no answer.
    conn = connections[post["connection"]]
    assert conn["first_fin_by"] == "server" and post["sent_at"] > conn["first_fin_at"]
    assert post["status"] is None and post["story"] == "raced the FIN"
    # The client: requests does not retry a POST; it saw the connection aborted.
    assert post["client"]["error"].startswith("ConnectionError")
    # The GET raced too, and urllib3's retry went out on a new connection.
    first_try, retry = requests["get.2~1"], requests["get.2"]
    assert first_try["story"] == "raced the FIN" and first_try["attempt"] == 1
    assert retry["attempt"] == 2 and retry["depth"] == 1 and retry["status"] == 200
    assert any("Retrying" in line for line in retry["client"]["urllib3"])
    assert run["disagreements"] == []


def test_link_impairments_are_refused_on_loopback(tmp_path):
    done = run_kalab("run", "--runtime", "local", "scenarios/slow-rate.yaml", "--results",
                     str(tmp_path))
    assert done.returncode == 2
    assert "link" in done.stderr and "netns or compose" in done.stderr
    assert not (tmp_path / "report.json").exists()
