"""The live progress of `kalab run`: from the roles' files to one line, and silence when piped."""

from __future__ import annotations

import io
import threading
import time

import pytest
from rich.console import Console

from client.progress import ProgressFile
from client.sessions import SessionRunner
from kalab import handoff, progress
from kalab.scenario import Session, Step, parse

SCENARIO = parse("""\
sessions: [{name: tutorial, steps: [get: /, sleep: 3, get: /]}]
engines:
  - {name: first, engine: werkzeug}
  - {name: second, engine: gunicorn, worker: gthread}
""", "lab.yaml")
NOW = 1_800_000_000.0


def folder(results, name):
    path = results / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_line_follows_the_roles_files_engine_by_engine(tmp_path):
    shown = progress.RunProgress(SCENARIO, tmp_path, Console(file=io.StringIO()))
    assert shown.status(NOW).startswith("first (1/2): starting the capture")
    first = folder(tmp_path, "first")
    (first / handoff.OBSERVER_READY).touch()
    assert "first (1/2): starting werkzeug" in shown.status(NOW)
    handoff.write_json(first / handoff.SERVER_READY, {})
    assert "the client is starting" in shown.status(NOW)
    handoff.write_json(first / handoff.CLIENT_PROGRESS, {"sessions": {"tutorial": {
        "step": 2, "steps": 3, "doing": "sleep 3 s", "until": NOW + 2.25}}})
    assert "first (1/2): client step 2/3: sleep 3 s, 2.2 s left" in shown.status(NOW)
    assert "0.2 s left" in shown.status(NOW + 2.0)
    assert "left" not in shown.status(NOW + 3.0)  # the sleep is over: no countdown below 0
    (first / handoff.CLIENT_DONE).touch()
    assert "client done" in shown.status(NOW)
    handoff.write_json(first / handoff.CAPTURE_STATS, {})
    assert shown.status(NOW).startswith("second (2/2): starting the capture")
    second = folder(tmp_path, "second")
    handoff.write_json(second / handoff.CAPTURE_STATS, {})
    assert shown.status(NOW).startswith("analysing the captures and writing the report")


def test_several_sessions_each_show_their_step(tmp_path):
    engine = folder(tmp_path, "first")
    for name in (handoff.OBSERVER_READY, handoff.SERVER_READY):
        (engine / name).write_text("{}")
    handoff.write_json(engine / handoff.CLIENT_PROGRESS, {"sessions": {
        "a": {"step": 1, "steps": 2, "doing": "request a.1: GET /", "until": None},
        "b": {"step": 2, "steps": 2, "doing": "sleep 1 s", "until": NOW + 1}}})
    line = progress.RunProgress(SCENARIO, tmp_path, Console(file=io.StringIO())).status(NOW)
    assert "client a step 1/2: request a.1: GET /; b step 2/2: sleep 1 s, 1.0 s left" in line


def test_a_half_written_or_odd_progress_file_shows_less_and_never_fails(tmp_path):
    engine = folder(tmp_path, "first")
    for name in (handoff.OBSERVER_READY, handoff.SERVER_READY):
        (engine / name).write_text("{}")
    shown = progress.RunProgress(SCENARIO, tmp_path, Console(file=io.StringIO()))
    for text in ("{", "[]", '{"sessions": null}'):
        (engine / handoff.CLIENT_PROGRESS).write_text(text)
        assert "the client is starting" in shown.status(NOW)


def test_without_the_roles_files_it_shows_what_the_lab_says(tmp_path):
    shown = progress.RunProgress(SCENARIO, None, Console(file=io.StringIO()))
    shown.message = "docker compose project kalab-1: building"
    assert shown.status(NOW).startswith("docker compose project kalab-1: building (")


def test_piped_output_gets_no_progress_at_all(tmp_path):
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    with progress.shown(console, SCENARIO, tmp_path) as say:
        say("werkzeug is up")
        time.sleep(0.3)
    assert out.getvalue() == ""


def test_a_terminal_gets_the_messages_and_a_live_line_that_goes_away(tmp_path):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    with progress.shown(console, SCENARIO, tmp_path) as say:
        say("werkzeug [bold] is up")  # brackets from a description are not markup
        time.sleep(0.6)
    text = out.getvalue()
    assert "kalab: werkzeug [bold] is up" in text
    assert "first (1/2): starting the capture" in text
    assert text.endswith("\x1b[2K")  # transient: the line is erased at the end


def test_the_client_writes_its_step_and_when_its_sleep_ends(tmp_path):
    path = tmp_path / handoff.CLIENT_PROGRESS
    session = Session(name="s", steps=(Step("sleep", seconds=0.6), Step("close")))
    t0, epoch0 = time.monotonic(), time.time()
    runner = SessionRunner(SCENARIO, session, "http://127.0.0.1:9", t0, epoch0)
    runner.progress = ProgressFile(path)
    thread = threading.Thread(target=runner.run)
    thread.start()
    time.sleep(0.3)
    during = handoff.read_json(path)["sessions"]["s"]
    thread.join(5)
    after = handoff.read_json(path)["sessions"]["s"]
    assert during["step"] == 1 and during["steps"] == 2 and during["doing"] == "sleep 0.6 s"
    assert during["until"] == pytest.approx(epoch0 + 0.6, abs=0.05)
    assert after == {"step": 2, "steps": 2, "doing": "close the session", "until": None}


def test_no_progress_file_is_written_without_a_path(tmp_path):
    ProgressFile(None).step("s", 1, 1, "close the session")
    assert list(tmp_path.iterdir()) == []
