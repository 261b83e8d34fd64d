"""The observer role: ``python -m observer SCENARIO --interface IFACE --run-dir DIR``.

For each engine of the scenario in turn: start listening before anything
else (``observer.ready``), capture until the client is done and its last
packets have passed, then close the pcap and write its accounting
(``capture.json``). With ``--report`` it then analyses every engine's
capture and writes the run's report (``report.json``) and exits with the
verdict's code: 0 pass, 1 fail, 3 inconclusive, 4 a role failed.

On SIGTERM or SIGINT the capture in progress is closed and accounted for,
and the report is still written for what was captured: nothing is lost.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from kalab import evidence, handoff, impairment, render, summary
from kalab import report as report_mod
from kalab.scenario import Engine, Scenario, upstream_port
from observer.capture import Capture

LINGER = 0.5  # seconds to keep listening after the client ends: its FINs, the last ACKs
EXIT_ROLE_FAILED = 4


def capture_engine(scenario: Scenario, engine: Engine, folder: Path, interface: str,
                   stop: handoff.StopSignal, applied: list[impairment.Applied]) -> None:
    capture = Capture(interface, scenario.port, folder / handoff.CAPTURE_PCAP)
    try:
        (folder / handoff.OBSERVER_READY).touch()
        done = folder / handoff.CLIENT_DONE
        deadline = time.monotonic() + handoff.session_time_limit(scenario) \
            + 2 * handoff.ROLE_START_TIMEOUT
        stop_at = None
        while not stop():
            capture.poll(0.05)
            now = time.monotonic()
            if stop_at is None and done.exists():
                stop_at = now + LINGER
            if stop_at is not None and now >= stop_at:
                break
            if handoff.failures(folder):
                raise handoff.Aborted("; ".join(handoff.failures(folder)))
            if now > deadline:
                raise handoff.Aborted("the client did not finish in time")
    finally:
        stats = capture.close()
        stats.impairments = [a.describe() for a in applied]
        handoff.write_json(folder / handoff.CAPTURE_STATS, stats.to_dict())


def main(argv: list[str] | None = None) -> int:
    parser = handoff.role_arguments("Capture the lab's TCP port for each engine, keep the pcap.")
    parser.add_argument("--interface", default="lo", help="interface to capture on")
    parser.add_argument("--report", action="store_true",
                        help="analyse the captures, write report.json, exit with the verdict")
    parser.add_argument("--runtime", default="local", help="runtime name for the report")
    parser.add_argument("--results", type=Path, default=None,
                        help="copy each engine's folder and the report here "
                        "(default: the run folder itself)")
    parser.add_argument("--scenario-label", default=None,
                        help="the scenario's name as the user gave it (for the report)")
    args, scenario = handoff.parse_role(parser, argv, "observer")
    stop = handoff.StopSignal()
    args.run_dir.mkdir(parents=True, exist_ok=True)
    args.applied = []
    try:
        try:
            args.applied = impairment.apply_in_server_namespace(
                scenario.link, args.interface, upstream_port(scenario.port))
        except impairment.ImpairmentError as exc:
            print(f"kalab observer: {exc}", file=sys.stderr)
            return EXIT_ROLE_FAILED
        return observe(scenario, args, stop)
    finally:
        for applied in args.applied:
            applied.close()
        (args.run_dir / handoff.OBSERVER_DONE).touch()


def observe(scenario: Scenario, args: argparse.Namespace, stop: handoff.StopSignal) -> int:
    """Capture every engine in turn; with --report, write the report; the exit code."""
    started = time.time()
    engines = handoff.engines_to_run(scenario, args.engine)
    captured: list[Engine] = []
    failed = False
    previous: Path | None = None
    for engine in engines:
        folder = handoff.shared_engine_dir(args.run_dir, engine)
        try:
            if previous is not None:
                handoff.wait_for(previous / handoff.SERVER_STOPPED, 30,
                                 what="the previous engine's stop", stop=stop)
            captured.append(engine)
            capture_engine(scenario, engine, folder, args.interface, stop, args.applied)
        except (OSError, RuntimeError, handoff.Aborted) as exc:
            if not stop():
                handoff.fail(folder, "observer", str(exc))
                print(f"kalab observer: {engine.name}: {exc}", file=sys.stderr)
                failed = True
            break
        if stop():
            break
        previous = folder
    if not args.report:
        return EXIT_ROLE_FAILED if failed else 0
    results = args.results or args.run_dir
    results.mkdir(parents=True, exist_ok=True)
    if results.resolve() != args.run_dir.resolve():
        for engine in captured:
            try:
                shutil.copytree(handoff.engine_dir(args.run_dir, engine),
                                handoff.engine_dir(results, engine), dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".scratch-*"))
            except shutil.Error as exc:  # an unreadable file must not cost the report
                print(f"kalab observer: not copied: {exc}", file=sys.stderr)
    record = evidence.build_report(results, scenario, captured, args.runtime, started,
                                   label=args.scenario_label)
    report_mod.write(record, results)
    (results / "summary.txt").write_text(summary.as_text(record), encoding="utf-8")
    try:
        render.write_all(record, results)  # report.html, report.md, junit.xml
    except Exception as exc:  # a view must never cost the run its verdict
        print(f"kalab observer: the report's views failed: {exc!r}", file=sys.stderr)
    return EXIT_ROLE_FAILED if failed else record.exit_code

if __name__ == "__main__":
    sys.exit(main())
