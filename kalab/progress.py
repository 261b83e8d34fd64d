"""The live progress lines: `kalab run`'s (which engine, which step, a countdown through
sleeps) and `kalab analyze`'s (how much of a big capture is read, `reading`).

The roles are separate processes; what they have reached shows in the run
folder (`kalab.handoff`): ``observer.ready``, ``server.json``, the
client's ``client.progress`` (the step each session is on, and when its
sleep ends), ``client.done``, ``capture.json``. `RunProgress` reads those
files each time rich refreshes the line, and prints what `kalab.lab` says
above it. On anything but a terminal it shows nothing at all: piped output
and logs get only the summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.spinner import Spinner
from rich.text import Text

from kalab import handoff
from kalab.pcap import compression

if TYPE_CHECKING:  # `kalab analyze` uses this module too, and never a scenario
    from kalab.scenario import Scenario

REFRESH_PER_SECOND = 4


class RunProgress:
    """The status of a run as its files show it; a rich renderable that redraws itself."""

    def __init__(self, scenario: Scenario, results: Path | None, console: Console,
                 at_once: bool = False) -> None:
        self.scenario, self.results, self.console = scenario, results, console
        self.at_once = at_once
        self.started = time.monotonic()
        self.message = "starting the lab"
        self.spinner = Spinner("dots", style="cyan")

    def say(self, text: str) -> None:
        """What `kalab.lab` tells: printed above the live line, and the line's fallback."""
        self.message = text
        self.console.print(f"[dim]kalab: {escape(text)}[/]")

    def status(self, now: float | None = None) -> str:
        """One line: the engine on, what its roles have reached, the client's step."""
        now = time.time() if now is None else now
        elapsed = f"{time.monotonic() - self.started:.0f} s"
        if self.results is None:  # under compose the files appear only at the end
            return f"{self.message} ({elapsed})"
        engines = self.scenario.engines
        going = [(index, engine) for index, engine in enumerate(engines, 1)
                 if not (handoff.engine_dir(self.results, engine) /
                         handoff.CAPTURE_STATS).exists()]
        if not going:
            return f"analysing the captures and writing the report ({elapsed})"
        index, engine = going[0]
        step = self._engine_step(handoff.engine_dir(self.results, engine), engine.describe(),
                                 now)
        if self.at_once and len(engines) > 1:  # the engine furthest behind speaks for all
            done = len(engines) - len(going)
            return (f"{len(engines)} engines at once, {done} done; {engine.name}: {step} "
                    f"({elapsed})")
        return f"{engine.name} ({index}/{len(engines)}): {step} ({elapsed})"

    def _engine_step(self, folder: Path, description: str, now: float) -> str:
        if not (folder / handoff.OBSERVER_READY).exists():
            return "starting the capture"
        if not (folder / handoff.SERVER_READY).exists():
            return f"starting {description}"
        if (folder / handoff.CLIENT_DONE).exists():
            return "client done; the capture takes the last packets"
        sessions = _read(folder / handoff.CLIENT_PROGRESS).get("sessions") or {}
        if not sessions:
            return "the client is starting"
        steps = []
        for name, step in sessions.items():
            text = f"step {step.get('step')}/{step.get('steps')}: {step.get('doing')}"
            until = step.get("until")
            if isinstance(until, (int, float)) and until > now:
                text += f", {until - now:.1f} s left"
            steps.append(text if len(sessions) == 1 else f"{name} {text}")
        return "client " + "; ".join(steps)

    def __rich__(self) -> Spinner:
        self.spinner.update(text=Text(self.status()))
        return self.spinner


def _read(path: Path) -> dict[str, Any]:
    try:
        data = handoff.read_json(path)
    except (OSError, ValueError):
        return {}  # not there yet (or from another version): show less, never fail
    return data if isinstance(data, dict) else {}


@contextmanager
def shown(console: Console, scenario: Scenario, results: Path | None,
          at_once: bool = False) -> Iterator[Callable[[str], None]]:
    """Show the run's progress while the block runs; yields the `say` for `kalab.lab.run`.

    Quiet (a `say` that prints nothing, no live line) unless ``console`` is a
    terminal; the line disappears when the block ends, even on an error.
    """
    if not console.is_terminal:
        yield lambda text: None
        return
    progress = RunProgress(scenario, results, console, at_once)
    with Live(progress, console=console, refresh_per_second=REFRESH_PER_SECOND,
              transient=True):
        yield progress.say


# A capture below this size is read in a second or two: no line for it. A compressed one
# holds about this many times its size (gzip makes synthetic and real HTTP captures 9 and
# 5-10 times smaller).
READING_SHOWN_FROM = 16 << 20
COMPRESSED_HOLDS = 8


class ReadingProgress:
    """`kalab analyze`'s line while a capture is read: a bar of the file's bytes read, the
    connections whose records are final, the time left. `update` is the
    ``progress`` of `kalab.evidence.analyze_capture`; it redraws at most
    REFRESH_PER_SECOND times a second, from the analysing thread itself: no thread of
    its own, for the analysis forks its reading process."""

    def __init__(self, progress: Progress, size: int) -> None:
        self._progress = progress
        self._task = progress.add_task("reading", total=size, connections=0)
        self._next = 0.0

    def update(self, position: int, connections: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + 1 / REFRESH_PER_SECOND
        self._progress.update(self._task, completed=position, connections=connections)
        self._progress.refresh()


@contextmanager
def reading(console: Console, pcap: Path) -> Iterator[Callable[[int, int], None] | None]:
    """Show how far ``pcap`` is read while the block runs; yields the ``progress`` for
    `kalab.evidence.analyze_capture`, or None (no line) unless ``console`` is a terminal
    and the file holds at least READING_SHOWN_FROM bytes (a compressed one, about
    COMPRESSED_HOLDS times its size; its bar counts its compressed bytes). The line goes
    when the block ends, even on an error: the report is printed alone."""
    try:
        size = pcap.stat().st_size
        held = size * (COMPRESSED_HOLDS if compression(pcap) else 1)
    except OSError:
        size = held = 0
    if not console.is_terminal or held < READING_SHOWN_FROM:
        yield None
        return
    progress = Progress(TextColumn(f"reading {escape(pcap.name)}"), BarColumn(),
                        DownloadColumn(), TextColumn("{task.fields[connections]:,} connections,"),
                        TimeRemainingColumn(), TextColumn("left"),
                        console=console, transient=True, auto_refresh=False,
                        redirect_stdout=False, redirect_stderr=False)
    with progress:
        yield ReadingProgress(progress, size).update
