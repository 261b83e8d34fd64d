"""The `kalab` command: run a scenario, analyse a pcap, redo a run's reports, clean up.

Every command exits with a code of `kalab.exitcodes` (the same for every command).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kalab import report as report_mod
from kalab.exitcodes import BY_VERDICT, Exit, described

if TYPE_CHECKING:
    from kalab.evidence import RunKeys

# `kalab run --target`'s bounds: (option, type, default, what it bounds), and the range
# each may be set in (`kalab.target.out_of_bounds`).
TARGET_BOUNDS = (
    ("--max-requests", int, 200, "requests the scenario may send at most, every session "
     "and retry counted"),
    ("--max-seconds", float, 600.0, "seconds the run may take at most: the sessions' "
     "planned time must fit"),
    ("--rate", float, 10.0, "requests a second at most, all sessions together"),
    ("--burst", int, 10, "requests that may leave at once before --rate holds them back"),
)
TARGET_RANGES = {"--max-requests": (1, 1000), "--max-seconds": (1, 3600),
                 "--rate": (0.1, 50), "--burst": (1, 100)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kalab", description="See how HTTP keep-alive really behaves, from the wire.",
        epilog="Exit codes (the same for every command):\n" + described(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a scenario: server, client and observer (or "
                         "its sessions against --target URL)",
                         description="Run every engine of a scenario, capture the wire, "
                         "and check the scenario's expectations against it; with --target "
                         "URL, run its sessions against a server the lab did not start "
                         "instead. On the netns runtime the engines go at once, each in its "
                         "own pair of namespaces with its own addresses and its own capture, "
                         "their sessions starting together once every engine is up; "
                         "on local and compose (one loopback, one compose project) they go in "
                         "turn. A scenario with a sweep: (netns only) runs its trials, a few "
                         "at once, and reports the share of each outcome per point, with "
                         "charts.")
    run.add_argument("scenario", type=Path, help="scenario file, e.g. lab.yaml")
    run.add_argument("--runtime", choices=("netns", "local", "compose"), default=None,
                     help="netns: server and client in network namespaces joined by a veth "
                     "(default); local: everything on this host's loopback; compose: one "
                     "container per role with docker compose (KALAB_BASE_IMAGE picks the "
                     "base image)")
    run.add_argument("--serial", action="store_true",
                     help="run the engines in turn, in the scenario's order, in one pair "
                     "of namespaces (netns runs them at once otherwise; local and compose "
                     "always run them in turn)")
    run.add_argument("--results", type=Path, default=None,
                     help="folder for the report and pcaps: new, or empty (default: a new "
                     "results/NAME-TIME-ID, with results/latest pointing at it)")
    run.add_argument("--json", action="store_true", help="print the JSON report, not the summary")
    run.add_argument("--student", metavar="ID", default=None,
                     help="run a lab for this student ID: its params are drawn from the ID "
                     "and the lab, the same ID always getting the same lab; the report "
                     "records both")
    target = run.add_argument_group(
        "against a server the lab did not start",
        "--target URL runs the scenario's sessions once against that server instead of "
        "the scenario's engines, which are not started (the report says so, in its "
        "`target` field): the roles run on this host, nothing listens, and the observer "
        "captures the client's side of the wire on the interface that leads to the "
        "server. Only an explicit http:// or https://HOST[:PORT]/ URL of the server's root "
        "(the scenario's paths are sent as they are; over HTTPS the server's certificate "
        "is always verified); a scenario with a link: is refused, and so is one that could send "
        "more requests, or plan more time, than the bounds below allow. The engine whose "
        "expectations are checked is the scenario's only one with any, or the one "
        "--expectations-of names.")
    target.add_argument("--target", metavar="URL", default=None,
                        help="the server's root, e.g. http://10.0.0.5:8000/ or "
                        "https://api.example.test/ (over HTTPS the clients write their "
                        "TLS secrets to the run's key log, and the report reads the "
                        "requests with it)")
    target.add_argument("--target-ca", metavar="FILE", type=Path, default=None,
                        help="with an https:// target: trust these PEM certificates "
                        "instead of this host's CAs (the server's own CA)")
    target.add_argument("--expectations-of", metavar="ENGINE", default=None,
                        help="check this engine's expectations against the target")
    for option, kind, default, words in TARGET_BOUNDS:
        low, high = TARGET_RANGES[option]
        target.add_argument(option, type=kind, default=None,
                            metavar="N" if kind is int else "X",
                            help=f"{words} (default {default:g}; {low:g} to {high:g})")

    analyze = sub.add_parser("analyze", help="report on any pcap: connections, requests, closes",
                             description="Analyse a capture file as the lab does its own: "
                             "pcap or pcapng (tcpdump, dumpcap, Wireshark), Ethernet, Linux "
                             "cooked (SLL, SLL2), loopback or raw IP, IPv4 and IPv6, plain or "
                             "compressed with gzip or bzip2 (whatever its name; its byte "
                             "offsets then count decompressed bytes). A file cut "
                             "short or corrupt is reported up to the bad byte, then exits 2. "
                             "It is read as a stream: a connection's record is final once it "
                             "is over and 5 s of capture time have passed (or after 3600 s "
                             "without a segment), and goes to a temporary file in TMPDIR, about "
                             "as big as the JSON report; memory follows the connections open "
                             "at once and their requests. On a terminal, stderr shows how far "
                             "a capture of 16 MiB or more (compressed, 2 MiB) is read.")
    analyze.add_argument("pcap", type=Path)
    analyze.add_argument("--port", type=int, action="append",
                         help="server port to follow (repeatable; default: every port that "
                         "answered a SYN)")
    analyze.add_argument("--json", action="store_true", help="print the JSON report")
    analyze.add_argument("--keylog", type=Path, metavar="KEYLOG", default=None,
                         help="TLS secrets in the NSS key log format (SSLKEYLOGFILE) to "
                         "decrypt HTTPS with (default: its requests are inferred from its "
                         "TLS records)")
    analyze.add_argument("--zeek", type=Path, metavar="DIR", default=None,
                         help="also write conn.log and http.log there as Zeek's JSON logs "
                         "(DIR new or empty)")

    check = sub.add_parser("check", help="validate a scenario file and say what it will run")
    check.add_argument("scenario", type=Path)
    check.add_argument("--student", metavar="ID", default=None,
                       help="a lab's params as drawn for this student ID (default: the "
                       "params' defaults), shown after the summary")

    report = sub.add_parser("report", help="write report.html, report.md and junit.xml "
                            "again from a run's report.json",
                            description="Regenerate the views of a run (report.html, "
                            "report.md, junit.xml, summary.txt) from its report.json alone; "
                            "exits with the run's verdict code.")
    report.add_argument("results", type=Path, help="a results folder (or its report.json)")

    worksheet = sub.add_parser(
        "worksheet", help="a lab's worksheet for students, or its key from a run",
        description="Write a lab's worksheet (what it teaches, how to run it, its questions "
        "and where to look, the answers file to fill in) as Markdown or self-contained "
        "HTML; with --answers RUN_DIR, the key instead: every question answered from that "
        "run's report, in the format of a student's answers file, the wire's evidence "
        "beside each answer. A key is never typed by hand.")
    worksheet.add_argument("lab", help="a lab: its file, its folder, or its name in course/ "
                           "(e.g. 05-idle-gap)")
    worksheet.add_argument("--student", metavar="ID", default=None,
                           help="the worksheet (or key) for this student's params")
    worksheet.add_argument("--answers", metavar="RUN_DIR", type=Path, default=None,
                           help="write the key from this run folder (the lab's reference run "
                           "with `reference`)")
    worksheet.add_argument("-o", "--output", type=Path, default=None,
                           help="write to this file (a new one) instead of standard output; "
                           "its suffix picks the format: .md, .html, .yaml, .json")
    worksheet.add_argument("--format", choices=("md", "html", "yaml", "json"), default=None,
                           help="the format (default: from -o's suffix, else md, or yaml "
                           "for a key)")

    grade = sub.add_parser(
        "grade", help="grade a student's answers against their run, or a whole class",
        description="Grade an answers file against the wire of the run it is about, "
        "re-analysed from the run's pcaps (a report.json that does not match its pcaps is "
        "flagged), and write junit.xml and Gradescope's results.json. With --class, grade "
        "every student folder in SUBMISSIONS (answers plus a run folder) and write a class "
        "summary (class.csv, class.html). Exit 0: all right; 1: some wrong; 3: flagged, a "
        "grader must look (the report does not match its pcaps, the run was not a pass, or "
        "it does not answer a question), whatever the score; 2: bad input.")
    grade.add_argument("answers", type=Path, nargs="?",
                       help="the answers file (YAML or JSON); its `lab:` names the lab")
    grade.add_argument("run", type=Path, nargs="?",
                       help="the run folder (default: the lab's reference run, when the "
                       "answers say `run: reference`)")
    grade.add_argument("--class", dest="submissions", metavar="SUBMISSIONS", type=Path,
                       default=None, help="grade every student folder in this folder")
    grade.add_argument("--lab", default=None,
                       help="the lab file (default: the lab the answers name, in course/)")
    grade.add_argument("--out", type=Path, default=None,
                       help="where to write the grade (default: grading/ in the run folder; "
                       "for --class, SUBMISSIONS-grading beside it; ./grading for the "
                       "reference run)")

    autograder = sub.add_parser(
        "autograder", help="a Gradescope autograder folder for a lab",
        description="Write a Gradescope autograder folder (setup.sh, run_autograder, the "
        "lab and a copy of this project) into OUT, a new or empty folder: it grades the "
        "answers and run folder a student uploads (Gradescope's containers cannot run "
        "the lab itself). Zip OUT's contents, not the folder, for Gradescope.")
    autograder.add_argument("lab", help="a lab: its file, its folder, or its name in course/")
    autograder.add_argument("out", type=Path, help="the folder to write (new or empty)")

    probe = sub.add_parser(
        "probe", help="measure a live server's keep-alive from the client: what it "
        "advertises, when it really closes",
        description="Measure a server the lab did not start: what it advertises "
        "(Connection, Keep-Alive), the idle time after which it really closes a connection "
        "(watched as it happens, or found by bisection when no close reaches the client), "
        "with a FIN or a RST, and how many requests one connection carries. Only an "
        "explicit http:// or https:// URL; bounded in requests and time, rate-limited. "
        "With root the probe's packets are captured and analysed as a run's are: the same "
        "report, views and exit codes (0 measured, 3 the capture cannot be trusted, "
        "4 the server could not be probed).")
    probe.add_argument("url", help="http://HOST[:PORT]/PATH or https://...")
    probe.add_argument("--max-requests", type=int, default=60, metavar="N",
                       help="requests at most (default 60)")
    probe.add_argument("--max-seconds", type=float, default=180.0, metavar="S",
                       help="seconds of probing at most (default 180)")
    probe.add_argument("--max-idle", type=float, default=30.0, metavar="S",
                       help="the longest idle time looked at (default 30)")
    probe.add_argument("--rate", type=float, default=5.0, metavar="R",
                       help="requests a second at most (default 5)")
    probe.add_argument("--results", type=Path, default=None,
                       help="the run folder (default: a new results/probe-HOST-PORT-TIME-ID)")
    probe.add_argument("--no-capture", action="store_true",
                       help="measure without capturing (no root needed; no wire report)")
    probe.add_argument("--json", action="store_true", help="print the JSON report")

    clean = sub.add_parser("clean", help="remove namespaces and processes crashed runs left")
    clean.add_argument("--all", action="store_true",
                       help="also those of runs still going (stops them)")
    return parser


def console() -> None:
    """The `kalab` command: `main`, its exit code, and a quiet end for a closed pipe."""
    try:
        code = main()
    except BrokenPipeError:  # the reader left (`kalab analyze x.pcap --json | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:  # outside a run (which says more itself): nothing was left
        print("kalab: interrupted", file=sys.stderr)
        sys.exit(Exit.INTERRUPTED)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"run": cmd_run, "analyze": cmd_analyze, "check": cmd_check,
               "clean": cmd_clean, "report": cmd_report, "worksheet": cmd_worksheet,
               "grade": cmd_grade, "autograder": cmd_autograder,
               "probe": cmd_probe}[args.command]
    return handler(args)


def _error(message: str, code: int) -> int:
    """One line on stderr, whatever a path or a value in it holds (a file's name may have
    a line break, or a terminal's escape sequence: shown, not obeyed)."""
    from kalab.render.text import visible

    print(f"kalab: {visible(message)}", file=sys.stderr)
    return code


def _load(path: Path, student: str | None):  # noqa: ANN202 - a Scenario
    """The scenario; a sweep's is checked at every point (each is a scenario of its own:
    a value may break a bound that the first keeps). ScenarioError names the point."""
    from kalab.course.lab import written
    from kalab.scenario import ScenarioError, load

    scenario = load(path, student)
    if scenario.sweep is not None:
        for point, value in enumerate(scenario.sweep.param.values[1:], 1):
            try:
                load(path, student, point)
            except ScenarioError as exc:
                raise ScenarioError(exc.file, exc.line, exc.where, f"{exc.message} (at the "
                                    f"sweep's point {scenario.sweep.param.name} = "
                                    f"{written(value)})") from None
    return scenario


def cmd_check(args: argparse.Namespace) -> int:
    from kalab.course.lab import written
    from kalab.scenario import ScenarioError

    try:
        scenario = _load(args.scenario, args.student)
    except ScenarioError as exc:
        return _error(str(exc), Exit.BAD_INPUT)
    summary = (f"{args.scenario}: ok: {len(scenario.engines)} engine(s) "
               f"({', '.join(e.name for e in scenario.engines)}), {len(scenario.requests)} "
               f"request(s) in {len(scenario.sessions)} session(s), "
               f"{sum(len(e.expect) for e in scenario.engines)} expectation(s)")
    if scenario.sweep is not None:
        plan = scenario.sweep
        summary += (f", a sweep of {plan.param.name} over {len(plan.values)} point(s) x "
                    f"{plan.trials} trial(s), {len(plan.expect)} claim(s) on it")
    course = scenario.course
    if course is not None:
        summary += f", {len(course.questions)} question(s)"
        if course.params:
            summary += ", params " + ", ".join(f"{name} ({param.describe()})"
                                               for name, param in course.params.items())
    print(summary)
    if args.student is not None:
        print(f"student {args.student}: " + (", ".join(
            f"{name} = {written(value)}" for name, value in scenario.params.items())
            or "no params to draw"))
    return 0


def _missing_tools(runtime: str) -> list[str]:
    needed = ["ip"] if runtime in ("netns", "target") else []
    return [tool for tool in needed if shutil.which(tool) is None]


def _dest(option: str) -> str:
    """The attribute argparse keeps an option's value in: ``--max-requests``,
    ``max_requests``."""
    return option[2:].replace("-", "_")


def _targeted(args: argparse.Namespace):  # noqa: ANN202 - a Scenario
    """The scenario of a `kalab run --target`, its engines replaced by the target
    (`kalab.target.targeted`); ValueError or ScenarioError before anything starts."""
    from kalab import target
    from kalab.report import TargetServer
    from kalab.scenario import load

    if args.runtime is not None:
        raise ValueError("--runtime: a run against --target has its own: the roles on this "
                         "host, the capture on the way to the target")
    where = target.for_run(args.target)
    if args.target_ca is not None:
        target.check_ca(args.target_ca, where.url)
    bounds = {}
    for option, _, default, _ in TARGET_BOUNDS:
        value = getattr(args, _dest(option))
        bounds[option] = default if value is None else value
    wrong = target.out_of_bounds({option: (value, *TARGET_RANGES[option])
                                  for option, value in bounds.items()})
    if wrong:
        raise ValueError(wrong)
    scenario = load(args.scenario, args.student)
    if scenario.link:
        raise ValueError(f"{args.scenario}: link: impairments need the lab's own network, "
                         "not a server it did not start")
    expectations_of = target.whose_expectations(scenario, args.expectations_of)
    target.check_bounded(scenario, int(bounds["--max-requests"]), bounds["--max-seconds"])
    addresses, interface = target.locate(where)
    return target.targeted(scenario, TargetServer(
        url=where.url, address=addresses[0], addresses=addresses, port=where.port,
        interface=interface,
        engines_ignored=[e.name for e in scenario.engines], expectations_of=expectations_of,
        max_requests=int(bounds["--max-requests"]), max_seconds=bounds["--max-seconds"],
        rate=bounds["--rate"], burst=int(bounds["--burst"]),
        ca=str(args.target_ca.resolve()) if args.target_ca is not None else None))


def cmd_run(args: argparse.Namespace) -> int:
    from kalab.scenario import ScenarioError

    given = [option for option, *_ in TARGET_BOUNDS if getattr(args, _dest(option)) is not None]
    given += [option for option, value in (("--expectations-of", args.expectations_of),
                                           ("--target-ca", args.target_ca)) if value is not None]
    if args.target is None and given:
        return _error(f"{given[0]}: only with --target", Exit.BAD_INPUT)
    try:
        from kalab.runtime import forkserver

        forkserver.wanted()  # a wrong KALAB_ROLES is refused before anything starts
        if args.target is not None:
            scenario = _targeted(args)
            args.runtime = "target"
        else:
            scenario = _load(args.scenario, args.student)
            args.runtime = args.runtime or "netns"
    except (ScenarioError, ValueError) as exc:
        return _error(str(exc), Exit.BAD_INPUT)
    if args.runtime == "compose" and any(not isinstance(engine.app or scenario.app, str)
                                         for engine in scenario.engines):
        # The containers see the scenario file alone, not the folder beside it.
        return _error(f"{args.scenario}: app: your own app file needs --runtime netns or "
                      "local (the containers have only the project's apps)", Exit.BAD_INPUT)
    if scenario.sweep is not None and (args.runtime != "netns" or args.serial):
        return _error(f"{args.scenario}: sweep: a sweep runs on --runtime netns, its engines "
                      "at once (not --serial, not --target)", Exit.BAD_INPUT)
    if scenario.link and args.runtime == "local":
        return _error(f"{args.scenario}: link: impairments need --runtime netns or compose "
                      "(impairing the host's loopback would slow everything on it)",
                      Exit.BAD_INPUT)
    if os.geteuid() != 0 and args.runtime != "compose":
        return _error("the lab needs root: namespaces and packet capture (try sudo)",
                      Exit.LAB_ERROR)
    missing = _missing_tools(args.runtime)
    if missing:
        return _error(f"missing tools: {', '.join(missing)} (apt-get install iproute2)",
                      Exit.LAB_ERROR)
    from kalab import handoff, lab, progress, summary
    from kalab.runtime.clean import clean_dead_runs
    from kalab.runtime.state import RunState

    if os.geteuid() == 0:
        removed = clean_dead_runs()  # what runs killed outright left: never more than that
        if removed:
            print(f"kalab: removed what an earlier run left: {', '.join(removed)}",
                  file=sys.stderr)
    state = RunState()
    try:
        if args.results is None:
            results = handoff.new_results_folder(Path("results"), scenario.name, state.run_id)
        else:
            results = args.results
            handoff.claim_results_folder(results)
    except OSError as exc:
        return _error(f"--results: {exc}", Exit.BAD_INPUT)
    console = summary.make_console(stderr=args.json)
    try:  # the live line (a terminal only) reads the roles' files: none under compose
        with progress.shown(console, scenario,  # a sweep says how many trials are done
                            None if args.runtime == "compose" or scenario.sweep else results,
                            lab.goes_at_once(args.runtime, args.serial)) as say:
            report = lab.run(scenario, args.runtime, results, state, say, args.serial)
    except lab.LabError as exc:
        return _error(str(exc), Exit.LAB_ERROR)
    except lab.Interrupted as stopped:
        report = stopped.report
        if args.results is None:
            handoff.link_latest(results)
        left = (f"could not remove {', '.join(stopped.left)}: run `kalab clean`"
                if stopped.left else "everything the run started has been stopped")
        cut = f"{stopped.why}: stopped" if stopped.why else "interrupted"
        print(f"kalab: {cut} during {report.phase}; {left}; the report of what was "
              f"captured: {results / 'report.json'} (exit {report.exit_code})",
              file=sys.stderr)
        return report.exit_code
    if args.results is None:  # results/latest; beside a folder the user named: nothing
        handoff.link_latest(results)
    if args.json:
        print(report_mod.to_json(report))
    else:
        summary.render(report, console)
        captures = f"pcaps: {', '.join(str(results / r.capture.pcap) for r in report.runs)}" \
            if report.sweep is None else f"each trial's report and pcaps: {results / 'trials'}"
        console.print(f"report: {results / 'report.json'} (to read: "
                      f"{results / 'report.html'}); {captures}")
    return report.exit_code


def cmd_analyze(args: argparse.Namespace) -> int:
    from kalab import target, zeek

    if not args.pcap.is_file():
        what = "not a regular file" if args.pcap.exists() else "no such file"
        return _error(f"{args.pcap}: {what}", Exit.BAD_INPUT)
    refused = None if args.zeek is None else zeek.refuse(args.zeek)
    if refused:
        return _error(f"--zeek: {refused}", Exit.BAD_INPUT)
    for port in args.port or ():
        wrong = target.out_of_bounds({"--port": (port, 1, 65535)})
        if wrong:  # no segment could match: the report would say "observed" of nothing
            return _error(wrong, Exit.BAD_INPUT)
    keys = None
    if args.keylog is not None:
        from kalab import evidence

        keys = evidence.read_keys(args.keylog, f"--keylog {args.keylog}")
        if keys.problem is not None:
            return _error(keys.problem, Exit.BAD_INPUT)
    # Records built once and written out: the collector would only walk them again and
    # again and free nothing (a tenth of the time on a big capture).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _analyze(args, keys)
    finally:
        if collecting:
            gc.enable()


def _analyze(args: argparse.Namespace, keys: RunKeys | None) -> int:
    from rich.console import Console

    from kalab import evidence, progress
    from kalab.spool import SpoolError

    started = time.time()
    # This process has no other thread: the reading may go to a forked child, on a
    # second core.
    try:
        with progress.reading(Console(stderr=True), args.pcap) as shown:
            analysis = evidence.analyze_capture(
                args.pcap, set(args.port) if args.port else None, background=True,
                spool=True, keylog=None if keys is None else keys.keylog, progress=shown,
                wire_stories=True)
    except SpoolError as exc:
        return _error(f"{exc} (TMPDIR names another folder; it needs about as much room as "
                      "the JSON report)", Exit.LAB_ERROR)
    if analysis.error is not None and not analysis.records:
        return _error(str(analysis.error), Exit.BAD_INPUT)  # not a capture at all
    ports = analysis.ports
    capture = _capture_beside(args.pcap)
    capture.problems += evidence.wire_problems(analysis.connections)
    capture.problems += evidence.capture_problems(analysis)
    if keys is not None:
        capture.problems += evidence.tls_problems(analysis.connections, analysis.requests,
                                                   keys)
    capture.snaplen, capture.truncated_frames = analysis.snaplen, analysis.truncated
    capture.close_linger, capture.idle_bound = analysis.close_linger, analysis.idle_bound
    verdict = evidence.verdict_of([], capture.problems)
    run = report_mod.EngineRun(
        engine="capture", kind="unknown", description=f"{args.pcap.name}, server port(s) "
        f"{', '.join(map(str, sorted(ports))) or 'none seen'}", version=None, listen=None,
        options={"ports": sorted(ports)}, capture=capture, connections=analysis.connections,
        requests=analysis.requests, verdict=verdict)
    # A file cut short is bad input (exit 2), but what was read before the bad byte is
    # still reported, marked as such among the capture's problems.
    exit_code = int(Exit.BAD_INPUT) if analysis.error else BY_VERDICT[verdict]
    report = report_mod.Report(
        schema=report_mod.SCHEMA, scenario=None, name=args.pcap.stem, runtime="analyze",
        started_at=started, finished_at=time.time(), runs=[run], verdict=verdict,
        exit_code=exit_code)
    if args.zeek is not None:
        from kalab import zeek

        try:
            zeek.write(args.zeek, run)
        except OSError as exc:
            return _error(f"--zeek: {exc}", Exit.BAD_INPUT)
    if args.json:
        sys.stdout.flush()
        report_mod.write_json(report, sys.stdout.buffer)
        sys.stdout.buffer.write(b"\n")
    else:
        from kalab import summary

        summary.render(report)
    if analysis.error:
        return _error(str(analysis.error), Exit.BAD_INPUT)
    return report.exit_code


def _capture_beside(pcap: Path) -> report_mod.Capture:
    """The capture's own accounting when the lab's observer wrote ``pcap`` (its
    capture.json lies beside it): kernel drops then count; else none is known."""
    from kalab import handoff
    from observer.capture import CaptureStats

    capture = report_mod.Capture(pcap=str(pcap))
    stats_path = pcap.parent / handoff.CAPTURE_STATS
    try:  # anyone's file: one that is not the observer's is no accounting of this capture
        stats = CaptureStats.from_dict(handoff.read_json(stats_path)) \
            if stats_path.is_file() else None
    except (OSError, ValueError):
        stats = None
    if stats is None or stats.pcap != pcap.name:
        return capture
    for name in ("interface", "filter", "started_at", "stopped_at", "packets",
                 "duplicates_dropped", "kernel_drops"):
        setattr(capture, name, getattr(stats, name))
    capture.problems = list(stats.problems)
    if not stats.complete:
        capture.complete = False
        capture.problems.append("the capture was cut short: its run was interrupted")
    return capture


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from kalab import render, summary

    path = args.results / "report.json" if args.results.is_dir() else args.results
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("schema") not in report_mod.SCHEMAS_READ:
            return _error(f"{path}: not a kalab report (one of "
                          f"{', '.join(report_mod.SCHEMAS_READ)})", Exit.BAD_INPUT)
        record = report_mod.from_dict(data)
    except OSError as exc:
        return _error(f"{path}: {exc.strerror or exc}", Exit.BAD_INPUT)
    except (ValueError, TypeError, KeyError) as exc:
        return _error(f"{path}: not a valid report: {exc}", Exit.BAD_INPUT)
    written = render.write_all(record, path.parent)
    summary_txt = path.parent / "summary.txt"
    summary_txt.write_text(summary.as_text(record), encoding="utf-8")
    for item in [*written, summary_txt]:
        print(f"wrote {item}")
    print(f"verdict: {record.verdict} (exit {record.exit_code})")
    return record.exit_code


def _lab(name: str | Path, student: str | None = None):  # noqa: ANN202 - a Scenario
    """A lab loaded for ``student``; FileNotFoundError or ScenarioError for the caller."""
    from kalab.course.lab import locate
    from kalab.scenario import ScenarioError, load

    scenario = load(locate(name), student)
    if scenario.course is None:
        raise ScenarioError(scenario.file, None, "course", "not a lab: it has no course: block")
    return scenario


def _write_out(text: str, output: Path | None) -> None:
    """To standard output, or to a new file (never over one that exists)."""
    if output is None:
        sys.stdout.write(text)
        return
    with open(output, "x", encoding="utf-8") as out:
        out.write(text)
    print(f"wrote {output}", file=sys.stderr)


def cmd_worksheet(args: argparse.Namespace) -> int:
    from kalab.course import worksheet
    from kalab.course.lab import reference_run
    from kalab.course.query import QueryError
    from kalab.scenario import ScenarioError

    form = args.format or (args.output.suffix.lstrip(".") if args.output else None)
    try:
        scenario = _lab(args.lab, args.student)
        if args.answers is None:
            form = form or "md"
            if form not in ("md", "html"):
                return _error(f"a worksheet is md or html, not {form}", Exit.BAD_INPUT)
            text = worksheet.worksheet_html(scenario, args.student) if form == "html" else \
                worksheet.worksheet_markdown(scenario, args.student)
        else:
            form = form or "yaml"
            if form not in ("yaml", "yml", "json"):
                return _error(f"a key is yaml or json, not {form}", Exit.BAD_INPUT)
            run = reference_run(Path(scenario.file)) if str(args.answers) == "reference" \
                else args.answers
            from kalab.course.grade import rebuild

            _, report = rebuild(run, scenario)
            text = worksheet.key_text(worksheet.make_key(scenario, report, str(run)),
                                      "json" if form == "json" else "yaml")
        _write_out(text, args.output)
    except (ScenarioError, QueryError) as exc:
        return _error(str(exc), Exit.BAD_INPUT)
    except (OSError, ValueError) as exc:
        return _error(str(exc), Exit.BAD_INPUT)
    return 0


def _grade_one(answers_file: Path, run: Path | None, lab: str | None):  # noqa: ANN202
    """Grade one answers file; (grade, the run folder graded)."""
    from kalab.course import answers as answers_mod
    from kalab.course.grade import grade_run
    from kalab.course.lab import reference_run

    name = lab or answers_mod.lab_file(answers_file)
    student = None
    probe = _lab(name)  # the answers are checked against the lab's questions first
    answers = answers_mod.load(answers_file, probe)
    if run is None and not answers.on_reference:
        raise ValueError(f"{answers_file}: give the run folder (or `run: reference` in "
                         "the answers to grade against the lab's reference run)")
    if run is None:
        run = reference_run(Path(probe.file))
    else:
        student = answers.student
    scenario = _lab(name, student)
    return grade_run(scenario, answers, run), run


def cmd_grade(args: argparse.Namespace) -> int:
    import json

    from kalab.course import classroom, gradescope
    from kalab.course.grade import junit
    from kalab.scenario import ScenarioError

    if args.submissions is not None:
        if args.answers is not None:
            return _error("--class grades a folder of submissions: give no answers file",
                          Exit.BAD_INPUT)
        if not args.submissions.is_dir():
            return _error(f"{args.submissions}: not a folder", Exit.BAD_INPUT)
        out = args.out or args.submissions.parent / f"{args.submissions.name}-grading"

        def grade_one(answers_file: Path, run: Path | None):  # noqa: ANN202
            try:
                return _grade_one(answers_file, run, args.lab)[0]
            except ScenarioError as exc:
                raise ValueError(str(exc)) from None

        submissions = classroom.grade_class(args.submissions, grade_one, out)
        for s in submissions:
            print(f"{s.label}: " + (f"{s.score:g} / {s.grade.max_score:g}"
                                    + "".join(f"; FLAGGED: {f}" for f in s.grade.flags)
                                    if s.grade else f"not graded: {s.error}"))
        print(f"wrote {out / 'class.csv'} and {out / 'class.html'}")
        if any(s.grade and s.grade.flags for s in submissions):
            return Exit.INCONCLUSIVE
        return 0 if all(s.grade and s.grade.all_right for s in submissions) else 1
    if args.answers is None:
        return _error("give an answers file (and its run folder), or --class SUBMISSIONS",
                      Exit.BAD_INPUT)
    started = time.monotonic()
    try:
        grade, run = _grade_one(args.answers, args.run, args.lab)
    except (ScenarioError, OSError, ValueError) as exc:
        return _error(str(exc), Exit.BAD_INPUT)
    out = args.out or (Path("grading") if args.run is None else run / "grading")
    out.mkdir(parents=True, exist_ok=True)
    for item in grade.items:
        mark = "RIGHT" if item.passed else "WRONG"
        print(f"{mark}  {item.name} ({item.score:g}/{item.max_score:g})")
        print(f"       {item.output}")
    for flag in grade.flags:
        print(f"FLAGGED: {flag}")
    (out / "junit.xml").write_text(junit(grade), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(
        gradescope.results(grade, time.monotonic() - started), indent=2, allow_nan=False)
        + "\n", encoding="utf-8")
    print(f"score: {grade.score:g} of {grade.max_score:g}; wrote {out / 'junit.xml'} and "
          f"{out / 'results.json'}")
    if grade.flags:  # a score a grader must look at is no verdict for a script
        return Exit.INCONCLUSIVE
    return 0 if grade.all_right else 1


def cmd_autograder(args: argparse.Namespace) -> int:
    from kalab.course import gradescope
    from kalab.course.lab import locate
    from kalab.lab import PROJECT_ROOT

    try:
        lab_file = locate(args.lab)
        _lab(lab_file)
        written = gradescope.write_autograder(lab_file, PROJECT_ROOT, args.out)
    except (OSError, ValueError) as exc:
        return _error(str(exc), Exit.BAD_INPUT)
    print("\n".join(f"wrote {path}" for path in written))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from kalab import handoff, probe, summary, target
    from kalab.scenario import slug

    try:
        where = target.parse(args.url)
    except ValueError as exc:
        return _error(str(exc), Exit.BAD_INPUT)
    wrong = target.out_of_bounds({
        "--max-requests": (args.max_requests, 1, 1000),
        "--max-seconds": (args.max_seconds, 1, 3600), "--max-idle": (args.max_idle, 0.1, 900),
        "--rate": (args.rate, 0.1, 50)})
    if wrong:
        return _error(wrong, Exit.BAD_INPUT)
    if not args.no_capture and os.geteuid() != 0:
        return _error("capturing the probe's packets needs root (or --no-capture)",
                      Exit.LAB_ERROR)
    limits = probe.Limits(max_requests=args.max_requests, max_seconds=args.max_seconds,
                          max_idle=args.max_idle, rate=args.rate)
    located = None
    if not args.no_capture:  # where to capture, before anything is made: as `run --target`
        try:
            located = target.locate(where)
        except ValueError as exc:
            return _error(str(exc), Exit.BAD_INPUT)
    try:
        if args.results is None:
            results = handoff.new_results_folder(
                Path("results"), slug(f"probe-{where.host}-{where.port}")[:40])
        else:
            results = args.results
            handoff.claim_results_folder(results)
    except OSError as exc:
        return _error(f"--results: {exc}", Exit.BAD_INPUT)
    try:
        report = probe.run(where, limits, results, capture=located)
    except probe.ProbeError as exc:
        return _error(f"{args.url}: {exc}", Exit.LAB_ERROR)
    if args.results is None:
        handoff.link_latest(results)
    if args.json:
        print(report_mod.to_json(report))
    else:
        console = summary.make_console()
        summary.render(report, console)
        console.print(f"report: {results / 'report.json'} (to read: "
                      f"{results / 'report.html'})")
    return report.exit_code


def cmd_clean(args: argparse.Namespace) -> int:
    from kalab.runtime.clean import clean

    removed = clean(everything=args.all)
    print("\n".join(f"removed {item}" for item in removed) or "nothing to clean")
    return 0


if __name__ == "__main__":
    console()

