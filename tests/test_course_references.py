"""Each lab's reference run: made by course/make_references.py, never edited.

Students without root or Docker do the worksheet from it, so it must be
what a real run wrote: its report.json must say what its own pcaps and
records say (re-analysed here as `kalab grade` does), every question must
be answerable from it, and the key made from it must grade full. tshark
referees its connections.
"""

from __future__ import annotations

import json

import pytest
import tshark_referee
import yaml
from conftest import ROOT, run_kalab

from kalab.course.grade import differences, rebuild
from kalab.course.lab import reference_run
from kalab.scenario import load

COURSE = ROOT / "course"
LABS = sorted(p.parent.name for p in COURSE.glob("*/lab.yaml"))


@pytest.mark.parametrize("lab", LABS)
def test_the_reference_run_is_what_its_pcaps_show(lab):
    scenario = load(COURSE / lab / "lab.yaml")
    run = reference_run(COURSE / lab / "lab.yaml")
    submitted, rebuilt = rebuild(run, scenario)
    assert differences(submitted, rebuilt) == []
    assert submitted.verdict == "pass" and submitted.student is None
    assert submitted.params == {name: param.default
                                for name, param in scenario.course.params.items()}


@pytest.mark.parametrize("lab", LABS)
def test_the_key_made_from_the_reference_grades_full(lab, tmp_path):
    key = tmp_path / "key.yaml"
    made = run_kalab("worksheet", lab, "--answers", "reference", "-o", str(key))
    assert made.returncode == 0, made.stderr
    answers = yaml.safe_load(key.read_text())
    answers["run"] = "reference"
    (tmp_path / "answers.yaml").write_text(yaml.safe_dump(answers))
    done = run_kalab("grade", str(tmp_path / "answers.yaml"), "--out", str(tmp_path / "g"))
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "g" / "results.json").read_text())
    assert results["score"] == results["max_score"] > 0
    assert "FLAGGED" not in done.stdout


@pytest.mark.skipif(not tshark_referee.available(), reason="tshark is not installed")
@pytest.mark.parametrize("lab", LABS)
def test_tshark_agrees_with_the_reference_reports(lab):
    run = reference_run(COURSE / lab / "lab.yaml")
    report = json.loads((run / "report.json").read_text())
    port = load(COURSE / lab / "lab.yaml").port
    for engine in report["runs"]:
        problems = tshark_referee.compare(engine, run / engine["capture"]["pcap"], port)
        assert problems == [], f"{lab} {engine['engine']}: {problems}"
