"""Every bundled scenario runs on real engines and its expectations hold.

Each scenario file states, with its expectations, what the wire shows (see
the comment at its top); a run that exits 0 is the lab agreeing with it.
"""

from __future__ import annotations

import json
from functools import cache

import pytest
from conftest import ROOT, requires_lab, run_kalab

from kalab.netem import netem_available
from kalab.scenario import load

pytestmark = [requires_lab, pytest.mark.slow]

# lab.yaml and seed-claims.yaml run in the README walkthrough; engines.yaml in
# test_runtimes; broken-example.yaml is broken on purpose.
ELSEWHERE = {"engines.yaml", "seed-claims.yaml", "broken-example.yaml"}
BUNDLED = sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml") if p.name not in ELSEWHERE)


@cache
def _netem() -> bool:
    return netem_available()


def needs_netem(name: str) -> bool:
    scenario = load(ROOT / "scenarios" / name)
    return any(i.delay_ms or i.jitter_ms or i.loss_percent for i in scenario.link.values())


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_scenario_holds_on_the_wire(name, tmp_path):
    if needs_netem(name) and not _netem():
        pytest.skip("this kernel has no netem (CONFIG_NET_SCH_NETEM is not set)")
    done = run_kalab("run", f"scenarios/{name}", "--results", str(tmp_path), timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "pass"
    scenario = load(ROOT / "scenarios" / name)
    assert all(len(run["expectations"]) == len(engine.expect) and engine.expect
               for run, engine in zip(report["runs"], scenario.engines, strict=True))
    if scenario.link:
        applied = report["runs"][0]["capture"]["impairments"]
        assert sorted(line.split(":")[0] for line in applied) == sorted(scenario.link)


def test_the_race_is_shown_from_both_sides(tmp_path):
    done = run_kalab("run", "scenarios/race.yaml", "--results", str(tmp_path))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr
    (run,) = json.loads((tmp_path / "report.json").read_text())["runs"]
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
