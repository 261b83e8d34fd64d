"""Drive a scenario's sessions through their steps, each with its client kind, recording
beliefs.

The steps are timed here, for every kind alike, from one monotonic clock:
``sleep`` from the previous response, ``at`` from the session's start. What
sends the requests, and what the client believed about each, is its kind's
(`kalab.kinds.ClientKind`, in ``client/kinds/``): the client's view is
recorded, not trusted, and the report sets it beside the wire. For each
request (`kalab.kinds.RequestRecord`): when it was planned and sent (epoch
seconds), the local port of its socket, the status and the response's
`Connection`/`Keep-Alive` headers, the error if any, the client's own
events while it ran (urllib3's log lines, httpcore's trace, aiohttp's
trace, curl's verbose lines) and what they say: whether it opened a
connection, and whether it replaced one the server had dropped (None where
the client cannot tell).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from client.kinds._shared import sleep_until
from client.progress import ProgressFile, describe
from kalab.certs import ClientTls
from kalab.kinds import CloseRecord, Driver, RequestRecord, client_kinds
from kalab.scenario import Request, Scenario, Session, Step
from kalab.target import Pace

__all__ = ["CloseRecord", "RequestRecord", "SessionRunner", "run_sessions"]


class SessionRunner:
    progress = ProgressFile(None)  # run_sessions sets the run's file
    pace: Pace | None = None  # run_sessions sets the run's, if its requests are paced

    def __init__(self, scenario: Scenario, session: Session, base_url: str, t0: float,
                 epoch0: float, tls: ClientTls | None = None) -> None:
        self.scenario, self.session, self.base_url = scenario, session, base_url
        self.tls = tls
        self.t0, self.epoch0 = t0, epoch0
        self.records: list[RequestRecord] = []
        self.closes: list[CloseRecord] = []
        self.driver: Driver | None = None

    def epoch(self, mono: float) -> float:
        return self.epoch0 + (mono - self.t0)

    def prepare(self) -> None:
        """Make the session's client: its library imported, its pool or loop made."""
        if self.driver is None:
            self.driver = self.session.kind_class.driver(self.session, self.base_url,
                                                         self.epoch, self.tls)
            self.closes = self.driver.closes  # kept as the driver adds to it

    def run(self) -> None:
        self.prepare()
        driver = self.driver
        assert driver is not None
        steps = self.session.steps
        last_done = self.t0
        number = 0
        try:
            while number < len(steps):
                step = steps[number]
                number += 1
                self._show(number, step, last_done)
                if step.kind == "sleep":
                    target = last_done + step.seconds
                    sleep_until(target)
                    last_done = target
                elif step.kind == "at":
                    target = self.t0 + step.seconds
                    sleep_until(target)
                    last_done = max(last_done, target)
                elif step.kind == "close":  # the checker refuses it where it means nothing
                    driver.close(True)
                else:
                    # Requests that follow one another with nothing between go together
                    # (a client such as curl sends them in one invocation).
                    batch: list[Request] = [step.request]
                    while number < len(steps) and steps[number].kind == "request":
                        batch.append(steps[number].request)
                        number += 1
                    if self.pace is not None:  # planned_at stays the plan: send_lag shows it
                        self.pace.take(len(batch))
                    self.records.extend(driver.send_many(batch, self.epoch(last_done)))
                    last_done = time.monotonic()
        finally:
            driver.close(False)
            self.progress.flush()  # the last step is on file when the session is over

    def _show(self, number: int, step: Step, last_done: float) -> None:
        until = None
        if step.kind == "sleep":
            until = self.epoch(last_done + step.seconds)
        elif step.kind == "at":
            until = self.epoch(self.t0 + step.seconds)
        self.progress.step(self.session.name, number, len(self.session.steps), describe(step),
                           until)


def run_sessions(scenario: Scenario, base_url: str, progress: Path | None = None,
                 tls: ClientTls | None = None, pace: Pace | None = None) -> dict[str, Any]:
    """Run every session at once from one start; the records, as JSON-ready data.
    With ``tls``, over HTTPS (``base_url`` is https://), trusting its CA alone and
    writing the TLS secrets to its key log.

    Interrupted (SIGTERM or Ctrl-C, raised here as `KeyboardInterrupt`), it returns
    the records made so far with ``interrupted`` true; the request in flight has none.

    With ``progress``, each session's current step is kept in that file
    (`client.progress.ProgressFile`) for the live display of `kalab run`. With
    ``pace``, every session's requests wait for it (a server the lab did not start).
    """
    t0, epoch0 = time.monotonic(), time.time()
    runners = [SessionRunner(scenario, s, base_url, t0, epoch0, tls)
               for s in scenario.sessions]
    shown = ProgressFile(progress)
    for runner in runners:
        runner.progress, runner.pace = shown, pace
    # Daemons: a client stopped mid-sleep (SIGTERM, Ctrl-C) exits once its main thread
    # has cleaned up, instead of waiting out the sessions' sleeps.
    threads = [threading.Thread(target=r.run, name=f"session-{r.session.name}", daemon=True)
               for r in runners]
    interrupted = False
    started: list[threading.Thread] = []
    try:
        # Every session's client is made here, one after another, before the clock
        # starts: imports in several threads at once can deadlock (Debian's urllib3 1.26
        # imports through six's meta path importer, which takes module locks in the
        # other order), and an import's time would count as the first request's lag.
        for runner in runners:
            try:
                runner.prepare()
            except Exception:  # noqa: BLE001 - its thread tries again and says why
                pass
        t0, epoch0 = time.monotonic(), time.time()
        for runner in runners:
            runner.t0, runner.epoch0 = t0, epoch0
        for thread in threads:
            thread.start()
            started.append(thread)
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C: keep what the sessions recorded so far
        interrupted = True
        for runner, thread in zip(runners, threads, strict=True):
            if thread not in started and runner.driver is not None:
                runner.driver.close(False)  # its thread never ran to close it
    records = sorted((rec for r in runners for rec in list(r.records)),
                     key=lambda rec: rec.sent_at)
    return {
        "started_at": epoch0,
        "base_url": base_url,
        "requests": [asdict(rec) for rec in records],
        "closes": [asdict(c) for r in runners for c in list(r.closes)],
        "versions": _versions(scenario),
        "interrupted": interrupted,
    }


def _versions(scenario: Scenario) -> dict[str, str]:
    """The libraries and tools of the clients the scenario uses."""
    kinds = client_kinds()
    versions: dict[str, str] = {}
    for name in dict.fromkeys(s.client for s in scenario.sessions):
        try:
            versions.update(kinds[name].versions())
        except (ImportError, OSError) as exc:  # a missing client fails its requests, later
            versions[name] = f"unknown ({exc})"
    return versions
