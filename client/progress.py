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
    """Each session's current step, shared by the session threads of one client."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.sessions: dict[str, dict[str, Any]] = {}

    def step(self, session: str, number: int, steps: int, doing: str,
             until: float | None = None) -> None:
        if self.path is None:
            return
        with self.lock:  # one writer at a time: write_json's temporary name is per process
            self.sessions[session] = {"step": number, "steps": steps, "doing": doing,
                                      "until": until}
            try:
                handoff.write_json(self.path, {"sessions": self.sessions,
                                               "updated_at": time.time()})
            except OSError:
                pass  # a display aid: never worth failing the client for
