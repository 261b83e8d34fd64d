"""The run folder: what a run may write, where, and how far a run got."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from kalab import handoff


@dataclass(frozen=True)
class Named:
    """Stands in for an engine: the folder functions read only its name."""

    name: str


@pytest.mark.parametrize("name", ["..", ".", "", "/etc", "../escape", "a/../../b"])
def test_an_engine_name_never_names_a_folder_outside_the_run(tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ValueError):
        handoff.engine_dir(run, Named(name))
    with pytest.raises(ValueError):
        handoff.shared_engine_dir(run, Named(name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_link_inside_the_run_folder_is_not_followed_out(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "werkzeug").symlink_to(tmp_path)
    with pytest.raises(ValueError):
        handoff.engine_dir(run, Named("werkzeug"))


def test_only_the_role_that_makes_an_engine_folder_opens_it_up(tmp_path):
    made = handoff.shared_engine_dir(tmp_path, Named("gthread-5"))
    assert made.stat().st_mode & 0o777 == 0o777
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    assert handoff.shared_engine_dir(tmp_path, Named("theirs")) == theirs
    assert theirs.stat().st_mode & 0o777 == 0o700


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    folders = {handoff.new_results_folder(tmp_path, "lab", "abc123") for _ in range(5)}
    assert len(folders) == 5
    assert all(f.parent == tmp_path and f.name.startswith("lab-") for f in folders)


def test_a_run_claims_only_a_new_or_empty_folder(tmp_path):
    handoff.claim_results_folder(tmp_path / "new" / "run")
    empty = tmp_path / "empty"
    empty.mkdir()
    handoff.claim_results_folder(empty)
    full = tmp_path / "full"
    full.mkdir()
    (full / "summary.txt").write_text("theirs")
    with pytest.raises(FileExistsError):
        handoff.claim_results_folder(full)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FileExistsError):
        handoff.claim_results_folder(tmp_path / "a-file")
    assert (full / "summary.txt").read_text() == "theirs"


def test_the_observer_under_kalab_run_takes_a_folder_holding_only_the_compose_log(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / handoff.COMPOSE_LOG).write_text("compose is writing this")
    with pytest.raises(FileExistsError):
        handoff.claim_results_folder(folder)
    handoff.claim_results_folder(folder, frozenset({handoff.COMPOSE_LOG}))
    (folder / "summary.txt").write_text("a run was here")
    with pytest.raises(FileExistsError):
        handoff.claim_results_folder(folder, frozenset({handoff.COMPOSE_LOG}))


def test_latest_follows_the_newest_run_and_leaves_a_real_folder_alone(tmp_path):
    first = handoff.new_results_folder(tmp_path, "lab")
    handoff.link_latest(first)
    second = handoff.new_results_folder(tmp_path, "lab")
    handoff.link_latest(second)
    assert os.readlink(tmp_path / "latest") == second.name
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "latest").mkdir()
    handoff.link_latest(other / "x")
    assert (other / "latest").is_dir() and not (other / "latest").is_symlink()


def test_the_phase_is_read_off_the_files_the_roles_leave(tmp_path):
    engines = [Named("one"), Named("two")]

    def phase() -> str:
        return handoff.phase_reached(tmp_path, engines)

    assert handoff.phase_reached(tmp_path, engines, roles_started=False) == "setup"
    assert phase() == "capture start"
    one = tmp_path / "one"
    one.mkdir()
    (one / handoff.OBSERVER_READY).touch()
    assert phase() == "server start"
    (one / handoff.SERVER_READY).touch()
    assert phase() == "scenario"
    (one / handoff.CAPTURE_STATS).touch()
    assert phase() == "between engines"
    two = tmp_path / "two"
    two.mkdir()
    (two / handoff.OBSERVER_READY).touch()
    assert phase() == "server start"
    (two / handoff.CAPTURE_STATS).touch()
    assert phase() == "report writing"
