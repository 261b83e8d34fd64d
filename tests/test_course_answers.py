"""Answers files are students' input: every bad one is refused with its file and line."""

from __future__ import annotations

import subprocess

import pytest
from conftest import KALAB, ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import tally

from kalab.course import answers
from kalab.scenario import ScenarioError, load

LAB = load(ROOT / "course" / "05-idle-gap" / "lab.yaml")
GOOD = """\
lab: 05-idle-gap
student: ada
answers:
  below-reused: yes
  above-story: replaced dropped connection
  server-idle: 3.0
  closer: server
predictions:
  gthread:
    - same_connection: [1, 2]
    - close: {request: 2, by: server, idle: 3, tolerance: 0.5}
"""


def test_a_good_answers_file_loads():
    got = answers.parse(GOOD, "a.yaml", LAB)
    assert got.student == "ada" and got.answers["below-reused"] is True
    assert got.answers["server-idle"] == 3.0
    assert [e.kind for e in got.predictions["gthread"]] == ["same_connection", "close"]


BAD = {
    "not a mapping": ("- 1\n", "lab"),
    "no lab": ("answers: {closer: server}\n", "lab"),
    "another lab": ("lab: 01-tutorial\n", "not to '05-idle-gap'"),
    "unknown question": ("lab: 05-idle-gap\nanswers: {nope: 1}\n", "no question 'nope'"),
    "a list as an answer": ("lab: 05-idle-gap\nanswers: {closer: [server]}\n", "closer"),
    "a mapping as an answer": ("lab: 05-idle-gap\nanswers: {closer: {a: 1}}\n", "closer"),
    "a control character": ('lab: 05-idle-gap\nanswers: {closer: "ser\\x1bver"}\n', "closer"),
    "a long answer": (f"lab: 05-idle-gap\nanswers: {{closer: {'x' * 300}}}\n", "closer"),
    "a student who is a path": ("lab: 05-idle-gap\nstudent: ../../etc\n", "student"),
    "a tag": ("lab: 05-idle-gap\nanswers: {closer: !!python/object:os.system x}\n", "tag"),
    "an alias": ("lab: 05-idle-gap\nx: &a 1\nanswers: {closer: *a}\n", "alias"),
    "a duplicate key": ("lab: 05-idle-gap\nlab: 05-idle-gap\n", "duplicate"),
    "an unknown field": ("lab: 05-idle-gap\nscore: 100\n", "unknown field"),
    "a prediction for no engine": ("lab: 05-idle-gap\npredictions: {nginx: []}\n",
                                   "no engine 'nginx'"),
    "an engine with a line break": ('lab: 05-idle-gap\npredictions: {"a\\nb": []}\n',
                                    "predictions['a\\nb']: the lab has no engine 'a\\nb'"),
    "a bad prediction": ("lab: 05-idle-gap\npredictions: {gthread: [{connections: -1}]}\n",
                         "connections"),
    "a prediction on no request": ("lab: 05-idle-gap\npredictions: "
                                   "{gthread: [{same_connection: [1, 9]}]}\n", "no request"),
    "nesting": ("lab: 05-idle-gap\nanswers: " + "[" * 40 + "]" * 40 + "\n", "nesting depth"),
    "not UTF-8": (b"lab: 05-idle-gap\nanswers: {closer: \xff}\n", "UTF-8"),
}


@pytest.mark.reliability
def test_every_bad_answers_file_is_refused_with_its_line(tmp_path):
    survived = 0
    for name, (text, words) in BAD.items():
        path = tmp_path / "answers.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        try:
            answers.load(path, LAB)
        except ScenarioError as exc:
            assert str(exc).startswith(f"{path}:"), (name, str(exc))
            assert words.lower() in str(exc).lower(), (name, str(exc))
            survived += 1
            continue
        pytest.fail(f"{name}: accepted")
    tally("Answers files (kalab grade)", "answers files of every bad shape: wrong types, "
          "unknown questions or engines, tags, aliases, deep nesting, bad predictions",
          len(BAD), survived)


@pytest.mark.reliability
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([q.id for q in LAB.course.questions] + ["x", "../y"]),
                       st.one_of(st.floats(allow_nan=True), st.integers(-10**30, 10**30),
                                 st.text(max_size=300), st.booleans(), st.none(),
                                 st.lists(st.integers(), max_size=3)), max_size=6))
def test_any_answers_either_load_or_are_refused_cleanly(tmp_path_factory, given_answers):
    import yaml

    text = yaml.safe_dump({"lab": "05-idle-gap", "answers": given_answers})
    try:
        got = answers.parse(text, "fuzz.yaml", LAB)
    except ScenarioError as exc:
        assert str(exc).startswith("fuzz.yaml")
        return
    # Accepted: only known questions, each answered with one scalar.
    assert set(got.answers) <= {q.id for q in LAB.course.questions}
    assert not any(isinstance(value, (list, dict)) for value in got.answers.values())


@pytest.mark.parametrize("lab", ["no-such-lab", "README.md", "lab.yaml", "..", "course"])
def test_the_lab_an_answers_file_names_is_one_of_the_course(tmp_path, lab):
    # The answers are a student's: their `lab:` names a lab of the course, never a file
    # to read (README.md and lab.yaml are there, where kalab runs); --lab gives any other.
    path = tmp_path / "answers.yaml"
    path.write_text(f"student: ada\nlab: {lab}\n")
    done = subprocess.run([*KALAB, "grade", str(path), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"kalab: {path}:2: lab: no lab {lab!r} in the course ({ROOT / 'course'}); for a lab "
        "of your own, give --lab FILE"] or (lab == ".." and ":2: lab:" in done.stderr)


def test_kalab_grade_refuses_a_bad_answers_file_with_exit_2(tmp_path):
    path = tmp_path / "answers.yaml"
    path.write_text("lab: 05-idle-gap\nanswers: {nope: 1}\n")
    done = subprocess.run([*KALAB, "grade", str(path), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"kalab: {path}:2: answers.nope:"), done.stderr
    assert "Traceback" not in done.stderr
