"""The course, on real runs: every lab holds, its key comes from the run, grading is exact.

Every lab of course/ runs in namespaces (a few side by side) for a student;
its expectations must hold, its key is made from that run by `kalab
worksheet --answers`, and grading the key against the run gives full marks,
while answers made wrong on purpose get exactly the points of the rest,
with the wire quoted. Two students of one lab get different parameters and
keys, each key full marks on its own run only. A class of 30 submissions
made from real runs is graded at once. A report.json edited to say another
side closed a connection is flagged against its pcap.
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT, requires_lab, run_kalab

from kalab.course.lab import draw
from kalab.scenario import load

pytestmark = [requires_lab, pytest.mark.slow]

COURSE = ROOT / "course"
LABS = sorted(p.parent.name for p in COURSE.glob("*/lab.yaml"))
STUDENT = "ada"
PARALLEL = 3
GRADESCOPE = json.loads((Path(__file__).parent / "gradescope-results.schema.json").read_text())


def other_student(lab: str) -> str:
    """A student whose params differ from STUDENT's in ``lab``."""
    scenario = load(COURSE / lab / "lab.yaml")
    mine = draw(scenario.course.params, scenario.name, STUDENT)
    for number in range(1000):
        student = f"student-{number}"
        if draw(scenario.course.params, scenario.name, student) != mine:
            return student
    raise AssertionError("every student draws the same params")


def run_lab(work: Path, lab: str, student: str) -> Path:
    results = work / f"{lab}-{student}"
    done = run_kalab("run", str(COURSE / lab / "lab.yaml"), "--student", student,
                     "--results", str(results), timeout=600)
    assert done.returncode == 0, f"{lab} for {student}:\n{done.stdout[-3000:]}{done.stderr}"
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Every lab run for STUDENT, and lab 05 for another student too."""
    work = tmp_path_factory.mktemp("course")
    wanted = [(lab, STUDENT) for lab in LABS] + [("05-idle-gap", other_student("05-idle-gap"))]
    with ThreadPoolExecutor(PARALLEL) as pool:
        folders = list(pool.map(lambda job: run_lab(work, *job), wanted))
    return dict(zip(wanted, folders, strict=True))


def make_key(lab: str, student: str, run: Path, out: Path) -> Path:
    done = run_kalab("worksheet", lab, "--student", student, "--answers", str(run),
                     "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out


def grade(answers: Path, run: Path, out: Path) -> tuple[int, dict, str]:
    done = run_kalab("grade", str(answers), str(run), "--out", str(out))
    assert "Traceback" not in done.stderr
    results = json.loads((out / "results.json").read_text())
    return done.returncode, results, done.stdout


def test_the_course_has_the_labs_the_issue_asks_for():
    assert len(LABS) >= 10
    assert LABS[0] == "01-tutorial" and LABS[-1] == "11-proxy-502"
    for lab in LABS:
        scenario = load(COURSE / lab / "lab.yaml")
        course = scenario.course
        assert course.teaches and course.look_for and course.read_first, lab
        assert len(course.questions) >= 3, lab
        assert scenario.name == lab


@pytest.mark.parametrize("lab", LABS)
def test_every_lab_holds_and_its_key_grades_full(runs, tmp_path, lab):
    run = runs[(lab, STUDENT)]
    report = json.loads((run / "report.json").read_text())
    assert report["verdict"] == "pass", lab
    assert report["student"] == STUDENT
    key = make_key(lab, STUDENT, run, tmp_path / "key.yaml")
    code, results, out = grade(key, run, tmp_path / "grading")
    assert code == 0, out
    assert results["score"] == results["max_score"] > 0
    assert all(t["status"] == "passed" for t in results["tests"])
    assert "FLAGGED" not in out
    jsonschema.validate(results, GRADESCOPE)
    suite = ET.parse(tmp_path / "grading" / "junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("tests")) == len(results["tests"])


def wrong(question: dict, value):
    """An answer that is certainly wrong for this value."""
    if isinstance(value, bool):
        return not value
    if value in ("yes", "no"):
        return "no" if value == "yes" else "yes"
    if value in ("server", "client"):
        return "client" if value == "server" else "server"
    if isinstance(value, (int, float)):
        return value + 1000
    return "unanswered" if value != "unanswered" else "new"


def test_wrong_answers_get_exactly_the_points_of_the_rest(runs, tmp_path):
    lab = "01-tutorial"
    run = runs[(lab, STUDENT)]
    key = yaml.safe_load(make_key(lab, STUDENT, run, tmp_path / "key.yaml").read_text())
    questions = {q.id: q for q in load(COURSE / lab / "lab.yaml", STUDENT).course.questions}
    spoiled = sorted(key["answers"])[::2]
    answers = dict(key, answers={qid: (wrong(questions[qid], value) if qid in spoiled
                                       else value) for qid, value in key["answers"].items()})
    (tmp_path / "answers.yaml").write_text(yaml.safe_dump(answers))
    code, results, out = grade(tmp_path / "answers.yaml", run, tmp_path / "grading")
    assert code == 1
    expected = sum(q.points for qid, q in questions.items() if qid not in spoiled)
    assert results["score"] == expected
    assert results["max_score"] == sum(q.points for q in questions.values())
    for test in results["tests"]:
        qid = test["name"].split(":", 1)[0]
        assert (test["status"] == "failed") == (qid in spoiled), test
        if qid in spoiled:
            assert test["output"].startswith("wrong: answered ")
            assert "the wire shows" in test["output"]
    jsonschema.validate(results, GRADESCOPE)


def test_two_students_get_different_labs_and_keys(runs, tmp_path):
    lab = "05-idle-gap"
    other = other_student(lab)
    mine, theirs = runs[(lab, STUDENT)], runs[(lab, other)]
    params = [json.loads((run / "report.json").read_text())["params"] for run in (mine, theirs)]
    assert params[0] != params[1]
    my_key = make_key(lab, STUDENT, mine, tmp_path / "mine.yaml")
    their_key = make_key(lab, other, theirs, tmp_path / "theirs.yaml")
    assert yaml.safe_load(my_key.read_text())["answers"] != \
        yaml.safe_load(their_key.read_text())["answers"]
    assert grade(my_key, mine, tmp_path / "g1")[1]["score"] == \
        grade(my_key, mine, tmp_path / "g1")[1]["max_score"]
    code, results, out = grade(my_key, theirs, tmp_path / "g2")
    assert results["score"] < results["max_score"]
    assert "FLAGGED" in out  # ada's answers on another student's run
    assert code == 3  # flagged: a grader must look, whatever the score


def test_a_report_edited_to_change_who_closed_is_flagged(runs, tmp_path):
    lab = "05-idle-gap"
    run = tmp_path / "run"
    shutil.copytree(runs[(lab, STUDENT)], run)
    key = make_key(lab, STUDENT, run, tmp_path / "key.yaml")
    text = (run / "report.json").read_text()
    assert '"closed_by":"server"' in text
    (run / "report.json").write_text(text.replace('"closed_by":"server"',
                                                  '"closed_by":"client"', 1))
    code, results, out = grade(key, run, tmp_path / "grading")
    assert "FLAGGED: gthread: report.json says connection 1 closed_by = 'client'; its pcaps " \
           "say 'server'" in out
    assert results["score"] == results["max_score"]  # graded on the pcap, not the edit
    assert "FLAGGED" in results["output"]
    assert code == 3  # all right, but not to be trusted without a look


def test_a_whole_class_is_graded_at_once(runs, tmp_path):
    lab = "05-idle-gap"
    students = [STUDENT, other_student(lab)]
    keys = {s: yaml.safe_load(make_key(lab, s, runs[(lab, s)], tmp_path / f"{s}.yaml")
                              .read_text()) for s in students}
    questions = {q.id: q for q in load(COURSE / lab / "lab.yaml").course.questions}
    ids = sorted(questions)
    chance = random.Random(13)
    submissions = tmp_path / "submissions"
    expected_scores, right_counts = {}, dict.fromkeys(ids, 0)
    for number in range(30):
        student = students[number % 2]
        folder = submissions / f"{number:02d}-{student}"
        folder.mkdir(parents=True)
        shutil.copytree(runs[(lab, student)], folder / "run",
                        ignore=shutil.ignore_patterns("grading"))
        key = keys[student]
        spoiled = {qid for qid in ids if chance.random() < 0.35}
        answers = {qid: wrong(questions[qid], value) if qid in spoiled else value
                   for qid, value in key["answers"].items()}
        (folder / "answers.yaml").write_text(yaml.safe_dump(
            {"lab": lab, "student": student, "answers": answers}))
        expected_scores[folder.name] = sum(q.points for qid, q in questions.items()
                                           if qid not in spoiled)
        for qid in ids:
            right_counts[qid] += qid not in spoiled
    broken = submissions / "99-broken"
    broken.mkdir()
    (broken / "answers.yaml").write_text("lab: 05-idle-gap\nanswers: {nope: 1}\n")
    out = tmp_path / "grades"
    done = run_kalab("grade", "--class", str(submissions), "--out", str(out))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    rows = {row[0]: row for row in
            list(csv.reader(io.StringIO((out / "class.csv").read_text())))[1:]}
    assert len(rows) == 31
    for folder, score in expected_scores.items():
        assert float(rows[folder][2]) == score, folder
        results = json.loads((out / folder / "results.json").read_text())
        jsonschema.validate(results, GRADESCOPE)
        assert results["score"] == score
    assert "not graded" in rows["99-broken"][-1] and "no question 'nope'" in rows["99-broken"][-1]
    page = (out / "class.html").read_text()
    for qid in ids:
        share = right_counts[qid] / 31
        assert f"{qid}: " in page and f"{right_counts[qid]} / 31" in page, qid
        assert f"{share * 100:.0f} %" in page


def test_the_gradescope_autograder_grades_an_upload(runs, tmp_path):
    """The generated run_autograder, run as Gradescope would (its /autograder tree made
    here, the installed kalab standing in for the one setup.sh installs), writes a
    results.json of Gradescope's format, for an uploaded run and for the reference."""
    lab = "05-idle-gap"
    root = tmp_path / "autograder"
    made = run_kalab("autograder", lab, str(root / "source"))
    assert made.returncode == 0, made.stderr
    source = root / "source"
    for script in ("setup.sh", "run_autograder"):
        assert (source / script).stat().st_mode & 0o111, script
        assert subprocess.run(["bash", "-n", str(source / script)]).returncode == 0
    assert (source / "lab" / "lab.yaml").is_file() and (source / "lab" / "reference").is_dir()
    assert (source / "keepalive-lab" / "pyproject.toml").is_file()
    venv = root / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "kalab").write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} "
                                "-m kalab.cli \"$@\"\n")
    (venv / "kalab").chmod(0o755)
    script = (source / "run_autograder").read_text().replace("/autograder", str(root))
    key = yaml.safe_load(make_key(lab, STUDENT, runs[(lab, STUDENT)],
                                  tmp_path / "key.yaml").read_text())
    for upload, answers in (("own run", key), ("reference", None)):
        submission, results = root / "submission", root / "results"
        shutil.rmtree(submission, ignore_errors=True)
        shutil.rmtree(results, ignore_errors=True)
        submission.mkdir()
        results.mkdir()
        if answers is None:
            ref = tmp_path / f"ref-{upload}.yaml"
            made = run_kalab("worksheet", lab, "--answers", "reference", "-o", str(ref))
            assert made.returncode == 0, made.stderr
            answers = dict(yaml.safe_load(ref.read_text()), run="reference")
        else:
            shutil.copytree(runs[(lab, STUDENT)], submission / "my-run",
                            ignore=shutil.ignore_patterns("grading"))
        (submission / "answers.yaml").write_text(yaml.safe_dump(answers))
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        graded = json.loads((results / "results.json").read_text())
        jsonschema.validate(graded, GRADESCOPE)
        assert graded["score"] == graded["max_score"] > 0, (upload, graded)
