"""client.progress: what each session is doing now, for `kalab run`'s live display.

A courtesy file beside the engine's other records (`kalab.handoff`): the
step each session is on, out of how many, in words, and when a sleep ends
(epoch seconds, so that the display counts down on its own clock). It is
rewritten atomically at every step; nothing depends on it, and a failure
to write it never stops the client.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from kalab import handoff
from kalab.scenario import Step


def describe(step: Step) -> str:
    """A step in words, as the live display shows it."""
    if step.kind == "sleep":
        return f"sleep {step.seconds:g} s"
    if step.kind == "at":
        return f"wait until {step.seconds:g} s after the start"
    if step.kind == "close":
        return "close the session"
    request = step.request
    return f"request {request.ref}: {request.method} {request.path}"


class ProgressFile:
    """Each session's current step, shared by the session threads of one client.

    A step only notes itself; a writer thread of its own writes the file, at most every
    `INTERVAL` seconds (the display redraws about as often). The session threads never
    wait on the file system: a write before each request was part of its send lag.
    """

    INTERVAL = 0.1

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lock = threading.Lock()  # the sessions' entries
        self.write_lock = threading.Lock()  # one writer: write_json's temporary name is per process
        self.sessions: dict[str, dict[str, Any]] = {}
        self.dirty = False
        self.wake = threading.Event()
        self.writer: threading.Thread | None = None

    def step(self, session: str, number: int, steps: int, doing: str,
             until: float | None = None) -> None:
        if self.path is None:
            return
        with self.lock:
            self.sessions[session] = {"step": number, "steps": steps, "doing": doing,
                                      "until": until}
            self.dirty = True
            if self.writer is None:
                self.writer = threading.Thread(target=self._write_loop, daemon=True,
                                               name="progress-file")
                self.writer.start()
        self.wake.set()

    def flush(self) -> None:
        """Write what the sessions noted since the last write, now."""
        if self.path is None:
            return
        with self.write_lock:
            with self.lock:
                if not self.dirty:
                    return
                data = {"sessions": {name: dict(entry) for name, entry in self.sessions.items()},
                        "updated_at": time.time()}
                self.dirty = False
            try:
                handoff.write_json(self.path, data)
            except OSError:
                pass  # a display aid: never worth failing the client for

    def _write_loop(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            self.flush()
            time.sleep(self.INTERVAL)
