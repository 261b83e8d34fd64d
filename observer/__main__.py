"""The observer role: ``python -m observer SCENARIO --interface IFACE --run-dir DIR``.

For each engine of the scenario in turn: start listening before anything
else (``observer.ready``), capture until the client is done and its last
packets have passed, then close the pcap and write its accounting
(``capture.json``). With ``--report`` it then analyses every engine's
capture and writes the run's report (``report.json``) and its views, and
exits with the verdict's code: 0 pass, 1 fail, 3 inconclusive, 4 a role
failed, 5 interrupted. At the end it writes ``observer.done`` (in the engine's
folder when given ``--engine``), which lets the server and the client end.

On SIGTERM or SIGINT the capture in progress is closed and accounted for,
and the report is still written for what was captured, marked incomplete
with the phase the run had reached: nothing is lost, nothing is concluded
from a capture cut short.

With ``--results DIR`` (compose) the run gets a folder of its own under DIR,
``NAME-TIME-ID`` (or ``--run-name``), the engines' folders and the report
are copied there, and ``DIR/latest`` points at it: no run overwrites another.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from kalab import handoff, impairment
from kalab.exitcodes import Exit
from kalab.scenario import Engine, Scenario, upstream_port
from kalab.target import TargetEngine
from observer.capture import Capture

LINGER = 0.5  # seconds to keep listening after the client ends: its FINs, the last ACKs


def capture_engine(scenario: Scenario, engine: Engine, run_dir: Path, interface: str,
                   stop: handoff.StopSignal, applied: list[impairment.Applied],
                   engines: list[Engine]) -> str | None:
    """Capture one engine's turn; the phase the run was in if a signal cut it short."""
    folder = handoff.engine_dir(run_dir, engine)
    # A server the lab did not start: only its addresses, not all traffic to its port here.
    capture = Capture(interface, scenario.port, folder / handoff.CAPTURE_PCAP,
                      hosts=(engine.server.addresses or [engine.server.address])
                      if isinstance(engine, TargetEngine) else ())
    complete = False
    interrupted = None
    try:
        (folder / handoff.OBSERVER_READY).touch()
        done = folder / handoff.CLIENT_DONE
        deadline = time.monotonic() + handoff.session_time_limit(scenario) \
            + 2 * handoff.ROLE_START_TIMEOUT
        stop_at = None
        while True:
            if stop():
                # Read off the files now: closing the capture writes capture.json.
                interrupted = handoff.phase_reached(run_dir, engines)
                break
            capture.poll(0.05)
            now = time.monotonic()
            if stop_at is None and done.exists():
                stop_at = now + LINGER
            if stop_at is not None and now >= stop_at:
                complete = True
                break
            if handoff.failures(folder):
                raise handoff.Aborted("; ".join(handoff.failures(folder)))
            if now > deadline:
                raise handoff.Aborted("the client did not finish in time")
    finally:
        stats = capture.close()
        stats.complete = complete
        stats.impairments = [a.describe() for a in applied]
        handoff.write_json(folder / handoff.CAPTURE_STATS, stats.to_dict())
    return interrupted


def main(argv: list[str] | None = None) -> int:
    parser = handoff.role_arguments("Capture the lab's TCP port for each engine, keep the pcap.")
    parser.add_argument("--interface", default="lo", help="interface to capture on")
    parser.add_argument("--report", action="store_true",
                        help="analyse the captures, write report.json, exit with the verdict")
    parser.add_argument("--runtime", default="local", help="runtime name for the report")
    parser.add_argument("--results", type=Path, default=None,
                        help="make the run's own folder under this one, copy each engine's "
                        "folder and the report there, and point DIR/latest at it (default: "
                        "the report goes in the run folder itself)")
    parser.add_argument("--run-name", default="",
                        help="with --results: the run's folder name (default: "
                        "SCENARIO-NAME-TIME-ID, made new)")
    parser.add_argument("--scenario-label", default=None,
                        help="the scenario's name as the user gave it (for the report)")
    args, scenario = handoff.parse_role(parser, argv, "observer")
    # The run's own results folder, taken before anything is captured: a bad name ends
    # the role now, not after the capture.
    args.results = None if args.results is None else \
        _results_folder(args.results, args.run_name, scenario)
    handoff.engines_to_run(scenario, args.engine)  # an unknown engine ends the role now
    stop = handoff.StopSignal()
    args.run_dir.mkdir(parents=True, exist_ok=True)
    args.applied = []
    try:
        try:
            args.applied = impairment.apply_in_server_namespace(
                scenario.link, args.interface, upstream_port(scenario.port))
        except impairment.ImpairmentError as exc:
            print(f"kalab observer: {exc}", file=sys.stderr)
            return Exit.LAB_ERROR
        code = observe(scenario, args, stop)
    finally:
        for applied in args.applied:
            applied.close()
        done = handoff.observer_done(args.run_dir, args.engine)
        if args.engine is not None:
            handoff.shared_engine_dir(args.run_dir, scenario.engine(args.engine))
        done.touch()
    if not stop():
        handoff.stay_until_stopped(args.stay)
    return code


def observe(scenario: Scenario, args: argparse.Namespace, stop: handoff.StopSignal) -> int:
    """Capture every engine in turn; with --report, write the report; the exit code."""
    started = time.time()
    engines = handoff.engines_to_run(scenario, args.engine)
    captured: list[Engine] = []
    failed = False
    interrupted: str | None = None
    previous: Path | None = None
    for engine in engines:
        if stop():  # asked to stop before this engine's capture could start
            interrupted = handoff.phase_reached(args.run_dir, engines)
            break
        folder = handoff.shared_engine_dir(args.run_dir, engine)
        try:
            if previous is not None:
                handoff.wait_for(previous / handoff.SERVER_STOPPED, 30,
                                 what="the previous engine's stop", stop=stop)
            captured.append(engine)
            interrupted = capture_engine(scenario, engine, args.run_dir, args.interface, stop,
                                         args.applied, engines)
        except (OSError, RuntimeError, handoff.Aborted) as exc:
            if stop():
                interrupted = interrupted or handoff.phase_reached(args.run_dir, engines)
            else:
                handoff.fail(folder, "observer", str(exc))
                print(f"kalab observer: {engine.name}: {exc}", file=sys.stderr)
                failed = True
            break
        if interrupted:
            break
        previous = folder
    if interrupted is None and stop():
        interrupted = "report writing"
    if not args.report:
        return Exit.LAB_ERROR if failed else 0
    results = args.run_dir
    if args.results is not None:
        results = args.results
        for engine in captured:
            try:
                shutil.copytree(handoff.engine_dir(args.run_dir, engine),
                                handoff.engine_dir(results, engine), dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".scratch-*"))
            except shutil.Error as exc:  # an unreadable file must not cost the report
                print(f"kalab observer: not copied: {exc}", file=sys.stderr)
    # Imported only here: an observer of one engine among many (`kalab run` on netns)
    # writes no report, and starts sooner without the analysis' modules.
    from kalab import evidence, render

    record = evidence.build_report(results, scenario, engines, args.runtime, started,
                                   label=args.scenario_label, interrupted=interrupted)
    render.publish(record, results)
    if args.results is not None:
        handoff.link_latest(results)
    return Exit.LAB_ERROR if failed and not interrupted else record.exit_code


def _results_folder(parent: Path, name: str, scenario: Scenario) -> Path:
    """The run's own folder under ``parent``: the one named (made by `kalab run`, or new
    and empty), else a new one named after the scenario."""
    if not name:
        return handoff.new_results_folder(parent, scenario.name)
    folder = parent / name
    if folder.resolve().parent != parent.resolve():
        raise SystemExit(f"kalab observer: --run-name {name!r} is not a folder name")
    try:
        # `kalab run` made it for this run, empty but for the compose log it is writing
        handoff.claim_results_folder(folder, frozenset({handoff.COMPOSE_LOG}))
    except FileExistsError as exc:
        raise SystemExit(f"kalab observer: {exc}") from None
    return folder


if __name__ == "__main__":
    handoff.exit_role(main())
