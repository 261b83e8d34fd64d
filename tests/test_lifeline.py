"""kalab.lifeline.spawn: children that die with their parent, and a Ctrl-C that is
never dropped in Python's fork hooks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

STOPS = {signal.SIGINT, signal.SIGTERM}


def _blocked(pid: int) -> set[int]:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigBlk:"):
            mask = int(line.split()[1], 16)
            return {sig for sig in STOPS if mask & (1 << (sig - 1))}
    raise AssertionError("no SigBlk line")


def test_the_child_takes_signals_and_the_parent_gets_its_mask_back():
    from kalab import lifeline

    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    child = lifeline.spawn(["sleep", "30"])
    try:
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
        assert _blocked(child.pid) == set()
    finally:
        child.kill()
        child.wait()


def test_the_child_goes_when_its_parent_is_killed(tmp_path):
    pid_file = tmp_path / "pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from kalab import lifeline
        child = lifeline.spawn(["sleep", "30"])
        pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))
        time.sleep(30)
    """)])
    try:
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the parent never started its child"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_ctrl_c_while_forking_is_raised_where_the_caller_can_catch_it():
    """A Ctrl-C that arrives while Python runs its fork hooks (here one of the test's
    own sends it, so the moment is certain): the caller's ``except KeyboardInterrupt``
    sees it, rather than Python printing "Exception ignored" and carrying on."""
    program = textwrap.dedent("""
        import os, signal, subprocess, sys
        from kalab import lifeline
        def interrupt(signum, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGINT, interrupt)
        os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))
        start = {"spawn": lifeline.spawn,
                 "popen": lambda argv: subprocess.Popen(
                     argv, preexec_fn=lifeline.die_with_parent)}[sys.argv[1]]
        try:
            start(["true"]).wait()
            print("went on")
        except KeyboardInterrupt:
            print("caught")
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def outcome(way: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", program, way], capture_output=True,
                              text=True, timeout=60, env=env)

    spawned = outcome("spawn")
    assert spawned.stdout.strip() == "caught", spawned.stdout + spawned.stderr
    assert "Exception ignored" not in spawned.stderr, spawned.stderr
    # The plain way drops it: what spawn exists for.
    plain = outcome("popen")
    assert plain.stdout.strip() == "went on" and "Exception ignored" in plain.stderr
