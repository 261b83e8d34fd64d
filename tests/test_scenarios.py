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
import tshark_referee
from conftest import ROOT, requires_lab, run_kalab
from tshark_referee import compare

from kalab.scenario import load

pytestmark = [requires_lab, pytest.mark.slow]

# lab.yaml and seed-claims.yaml run in the README walkthrough; engines.yaml in
# test_runtimes; broken-example.yaml is broken on purpose; those below with a
# test of their own run there (edge-sweep.yaml in test_sweep).
ELSEWHERE = {"engines.yaml", "seed-claims.yaml", "broken-example.yaml", "race.yaml",
             "delay-100ms.yaml", "nginx-502.yaml", "tcp-keepalive.yaml", "no-session.yaml",
             "tutorial-more-engines.yaml", "every-client.yaml", "apache-max.yaml",
             "haproxy-chain.yaml", "haproxy-chain-fixed.yaml", "edge-sweep.yaml"}
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
    assert any("Retrying" in line for line in retry["client"]["events"])  # urllib3's words
    assert run["disagreements"] == []


def test_link_impairments_are_refused_on_loopback(tmp_path):
    done = run_kalab("run", "--runtime", "local", "scenarios/slow-rate.yaml", "--results",
                     str(tmp_path))
    assert done.returncode == 2
    assert "link" in done.stderr and "netns or compose" in done.stderr
    assert not (tmp_path / "report.json").exists()


needs_tshark = pytest.mark.skipif(not tshark_referee.available(), reason="tshark is not installed")


@needs_tshark
def test_tcp_keepalive_probes_are_counted_and_do_not_hold_the_connection_open(tmp_path):
    (run,) = run_bundled("tcp-keepalive.yaml", tmp_path)["runs"]
    pcap = tmp_path / run["capture"]["pcap"]
    # tshark agrees on every connection, and on its keep-alive probes
    assert compare(run, pcap, 5000) == []
    first, second = run["connections"]
    # tshark's own list of probes: (stream, time, sender's port)
    flagged = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "tcp.analysis.keep_alive", "-T", "fields",
         "-e", "tcp.stream", "-e", "frame.time_epoch", "-e", "tcp.srcport"],
        capture_output=True, text=True, check=True).stdout.split()
    probes = [(int(stream), float(at), int(port)) for stream, at, port in
              zip(flagged[::3], flagged[1::3], flagged[2::3], strict=True)]
    client_port = int(first["client"].rsplit(":", 1)[1])
    assert {stream for stream, _, _ in probes} == {0}  # all on the first connection
    assert {port for _, _, port in probes} == {client_port}  # all from the client
    assert first["keepalive_probes"] == len(probes) and second["keepalive_probes"] == 0
    # idle 1 s, interval 1 s: a probe about each second until gunicorn's FIN at 6 s
    before_fin = [at for _, at, _ in probes if at < first["first_fin_at"]]
    assert len(before_fin) >= 4
    assert first["first_fin_at"] - before_fin[-1] < 1.5
    # the probes are no data: the server's idle time runs from its response, through them
    assert first["last_data_at"] == first["last_response_at"] < before_fin[0]
    assert first["first_fin_by"] == "server"
    assert 5.5 <= first["idle_before_close"] <= 6.5
    summary = (tmp_path / "summary.txt").read_text()
    assert f"({len(probes)} TCP keep-alive probes on it, not data)" in summary


@needs_tshark
def test_without_a_session_each_request_has_a_connection_the_client_closes(tmp_path):
    (run,) = run_bundled("no-session.yaml", tmp_path)["runs"]
    assert compare(run, tmp_path / run["capture"]["pcap"], 5000) == []
    requests = {r["id"]: r for r in run["requests"]}
    connections = {c["id"]: c for c in run["connections"]}
    plain = [requests[f"plain.{n}"] for n in (1, 2, 3)]
    assert len({r["connection"] for r in plain}) == 3
    for request, after in zip(plain, [*plain[1:], None], strict=True):
        conn = connections[request["connection"]]
        assert (request["depth"], request["story"]) == (1, "new")
        assert request["client"]["local_port"] == int(conn["client"].rsplit(":", 1)[1])
        # the client's FIN, right after the response, before the next request left
        assert conn["first_fin_by"] == "client" and conn["requests"] == [request["id"]]
        assert conn["first_fin_at"] - request["response_end_at"] < 0.1
        if after is not None:
            assert conn["first_fin_at"] < after["sent_at"]
    pooled = {requests[f"pooled.{n}"]["connection"] for n in (1, 2, 3)}
    assert len(pooled) == 1 and connections[pooled.pop()]["first_fin_by"] == "server"
    assert run["disagreements"] == []  # urllib3 believed each request opened a connection


def test_the_other_engines_on_the_tutorial_s_client(tmp_path):
    runs = {run["engine"]: run for run in
            run_bundled("tutorial-more-engines.yaml", tmp_path)["runs"]}
    for name in ("uvicorn", "hypercorn", "apache", "uwsgi", "haproxy"):
        run = runs[name]
        assert run["version"] and run["kind"] == name
        assert compare(run, tmp_path / run["capture"]["pcap"], 5000) == [], name
    first = {name: by_id(run["requests"])["1"] for name, run in runs.items()}
    # uvicorn, Hypercorn and uWSGI pass the app's own header through; Apache puts its
    # own with max= counting down; HAProxy strips the app's hop-by-hop headers.
    for name in ("uvicorn", "hypercorn", "uwsgi"):
        assert first[name]["response_keep_alive"] == "timeout=5", name
    assert [r["response_keep_alive"] for r in runs["apache"]["requests"][:3]] == \
        ["timeout=5, max=100", "timeout=5, max=99", "timeout=5, max=98"]
    assert first["haproxy"]["response_keep_alive"] is None
    # Hypercorn 0.13 never closes an idle connection; later ones at keep_alive_timeout
    hypercorn = runs["hypercorn"]
    idle_closed = hypercorn["connections"][0]
    if hypercorn["version"].startswith("Hypercorn 0.13."):
        assert len(hypercorn["connections"]) == 1 and idle_closed["first_fin_by"] == "client"
    else:
        assert idle_closed["first_fin_by"] == "server"
        assert abs(idle_closed["idle_before_close"] - 5.0) < 0.5
    assert first["haproxy"]["response_connection"] is None
    assert "in front of gunicorn" in runs["haproxy"]["version"]


def by_id(items: list[dict]) -> dict:
    return {item["id"]: item for item in items}


def test_every_client_says_what_it_did_about_the_server_s_close(tmp_path):
    (run,) = run_bundled("every-client.yaml", tmp_path)["runs"]
    assert compare(run, tmp_path / run["capture"]["pcap"], 5000) == []
    requests = by_id(run["requests"])
    for name in ("requests", "urllib3", "httpx", "aiohttp", "curl"):
        assert all(r["client"]["client"] == name for r in run["requests"]
                   if r["id"].startswith(name + ".")), name
    for name in ("requests", "urllib3", "httpx"):
        second = requests[f"{name}.2"]["client"]
        assert (second["new_connection"], second["replaced_dropped"]) == (True, True), name
    aiohttp = requests["aiohttp.2"]["client"]
    assert aiohttp["new_connection"] is True and aiohttp["replaced_dropped"] is None
    curl = [requests[f"curl.{n}"]["client"] for n in (1, 2, 3)]
    assert [c["new_connection"] for c in curl] == [True, False, True]
    assert run["disagreements"] == []


def test_apache_counts_a_connection_s_requests_down(tmp_path):
    (run,) = run_bundled("apache-max.yaml", tmp_path)["runs"]
    assert compare(run, tmp_path / run["capture"]["pcap"], 5000) == []
    first_four = run["requests"][:4]
    assert [r["response_keep_alive"] for r in first_four[:3]] == \
        ["timeout=5, max=3", "timeout=5, max=2", "timeout=5, max=1"]
    # the 4th: Apache's close beside the app's own keep-alive, and the app's header
    assert first_four[3]["response_connection"].endswith("close")
    assert "max=" not in (first_four[3]["response_keep_alive"] or "")


def test_the_load_balancer_chain_loses_a_post_and_its_fix_does_not(tmp_path):
    (broken,) = run_bundled("haproxy-chain.yaml", tmp_path / "broken")["runs"]
    requests = by_id(broken["requests"])
    connections = by_id(broken["connections"])
    post = requests["post.2"]
    # HAProxy answers nothing, not even a 502: it closes the client's connection, on
    # which the POST was a reused request
    assert post["reused"] and post["status"] is None and post["story"] == "unanswered"
    assert post["client"]["error_cause"].startswith("RemoteDisconnected")
    conn = connections[post["connection"]]
    assert conn["first_fin_by"] == "server" and conn["first_fin_at"] > post["sent_at"]
    # the GET's first try met the same; urllib3 retried it on a new connection
    assert requests["get.2~1"]["story"] == "unanswered"
    assert (requests["get.2"]["depth"], requests["get.2"]["status"]) == (1, 200)
    assert "only FIN packets from port" in " ".join(broken["capture"]["impairments"])
    (fixed,) = run_bundled("haproxy-chain-fixed.yaml", tmp_path / "fixed")["runs"]
    assert all(r["status"] == 200 and "~" not in r["id"] for r in fixed["requests"])
