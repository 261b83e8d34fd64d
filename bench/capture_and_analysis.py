"""The observer at scale, in one run: capture beside tcpdump, analysis beside tshark.

Run as root from the checkout (a few minutes at most, all on loopback):

    .venv/bin/python bench/capture_and_analysis.py [--output bench/RESULTS.md]

1. Capture: a small server on a free loopback port (18000-18999) answers a
   burst of 8,000 short connections opened at 4,000 a second (every tenth
   ends with a RST). The observer's `Capture` (in its own process, as the
   observer role runs it) and tcpdump capture the port side by side; their
   SYN, SYN-ACK, FIN and RST counts (counted by tshark), kernel drops and
   peak memory are compared.
2. Analysis: pcaps of keep-alive connections (bench/synth.py, about 40
   open at once): 240,000 packets (20,000 connections), the same with the
   response bodies cut into 64-byte segments (520,000 packets), 2.4 million
   (200,000 connections) and, with ``--huge``, 24 million (2,000,000
   connections, about 2.3 GiB). Each is written for its run, at most
   ``--max-pcap-gib`` and three quarters of the free disk, and removed
   after it, even on failure or SIGTERM. Each is analysed by ``tshark -q -z
   conv,tcp``, by ``tshark -Y http`` printing the fields kalab reports, by
   ``kalab analyze --json``, and by bench/floor.py (the floor under any
   analysis in Python that reads as kalab does: the reading, and each
   segment looked up once, nothing more), each as its own process, taking
   turns; wall seconds, the ratios and each one's peak RSS are printed. kalab is
   byte-compiled first, as an installed package is. The report ends with
   the targets: kalab in at most half tshark's time on the 240,000-packet
   pcap, and issue 17's (peak RSS at most 256 MB and at most 0.4 of
   tshark's time on 2.4 and 24 million packets, linear time between them).

Everything it makes goes in a temporary folder, removed at the end
(``--keep`` keeps the capture part's pcaps). It prints a Markdown report:
bench/RESULTS.md is one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import burst
import synth

ROOT = Path(__file__).resolve().parent.parent
KALAB = [sys.executable, "-m", "kalab.cli"]


def free_port() -> int:
    for port in range(18000, 19000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port in 18000-18999")


def machine() -> list[str]:
    meminfo = Path("/proc/meminfo").read_text()
    total = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1)) // 1024
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    tshark = subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout
    tcpdump = subprocess.run(["tcpdump", "--version"], capture_output=True, text=True).stdout
    return [f"- CPU: {os.cpu_count()} x {cpu.group(1) if cpu else platform.processor()}",
            f"- memory: {total} MiB",
            f"- kernel: {platform.system()} {platform.release()}",
            f"- Python {platform.python_version()}; {tshark.splitlines()[0]}; "
            f"{tcpdump.splitlines()[0]}"]


def timed(argv: list[str], output: Path | None = None, runs: int = 3
          ) -> tuple[float, int, int]:
    """Run a command ``runs`` times; the fastest wall seconds, its peak RSS in MiB and its
    exit code (the machine may be shared: the fastest run is the least disturbed)."""
    (best,) = timed_side_by_side([(argv, output)], runs)
    return best


def tree_rss(pid: int) -> int:
    """Bytes resident now in process ``pid`` and every process under it, a page two of
    them share counted once (their proportional set sizes, from /proc)."""
    total, todo = 0, [pid]
    while todo:
        process = todo.pop()
        try:
            with open(f"/proc/{process}/smaps_rollup") as rollup:
                total += next(int(line.split()[1]) << 10 for line in rollup
                              if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{process}/task"):
                with open(f"/proc/{process}/task/{task}/children") as children:
                    todo += map(int, children.read().split())
        except (OSError, ValueError, StopIteration):  # it ended meanwhile
            continue
    return total


class PeakRss(threading.Thread):
    """The peak of `tree_rss` of a process, sampled every 20 ms until `stop`: `wait4`
    gives one process's peak (the larger of it and its children), not their sum, and
    kalab analyze reads in a child process while it analyses."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, tree_rss(self.pid))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def timed_side_by_side(commands: list[tuple[list[str], Path | None]], runs: int = 3
                       ) -> list[tuple[float, int, int]]:
    """`timed` for several commands, taking turns (the first, the second, ..., then again):
    a machine whose load drifts during the runs weighs on each command alike. The peak
    RSS is that of the command and the processes it started, together (`PeakRss`), and
    never below `wait4`'s."""
    best: list[tuple[float, int, int] | None] = [None] * len(commands)
    for _ in range(runs):
        for number, (argv, output) in enumerate(commands):
            with open(output or os.devnull, "wb") as out:
                started = time.perf_counter()
                child = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT)
                sampler = PeakRss(child.pid)
                sampler.start()
                _, status, usage = os.wait4(child.pid, 0)
                elapsed = time.perf_counter() - started
                together = sampler.stop()
            result = (elapsed, max(usage.ru_maxrss // 1024, together >> 20),
                      os.waitstatus_to_exitcode(status))
            if best[number] is None or result < best[number]:
                best[number] = result
    return best


def flag_counts(pcap: Path) -> dict[str, int]:
    """SYN, SYN-ACK, FIN, RST and packets, as tshark counts them."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "tcp.flags.syn",
                          "-e", "tcp.flags.ack", "-e", "tcp.flags.fin", "-e", "tcp.flags.reset"],
                         capture_output=True, text=True, check=True).stdout
    counts = {"SYN": 0, "SYN-ACK": 0, "FIN": 0, "RST": 0, "packets": 0}
    for line in out.splitlines():
        syn, ack, fin, rst = (v in ("1", "True") for v in line.split("\t"))
        counts["packets"] += 1
        counts["SYN-ACK" if syn and ack else "SYN"] += syn
        counts["FIN"] += fin
        counts["RST"] += rst
    return counts


def _observe(port: int, pcap: Path, ready, stop, results) -> None:
    from observer.capture import Capture

    capture = Capture("lo", port, pcap)
    ready.set()
    while not stop.is_set():
        capture.poll(0.05)
    stats = capture.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put({**stats.to_dict(), "cpu": usage.ru_utime + usage.ru_stime,
                 "rss": usage.ru_maxrss // 1024})


def capture_part(work: Path, connections: int, rate: float) -> list[str]:
    port = free_port()
    ctx = multiprocessing.get_context("fork")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    ours, theirs = work / "observer.pcap", work / "tcpdump.pcap"
    observer = ctx.Process(target=_observe, args=(port, ours, ready, stop, results))
    observer.start()
    tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-w", str(theirs),
                                f"tcp port {port}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    served = ctx.Event()
    server = ctx.Process(target=burst.serve, args=(port, served, 3.0))
    try:
        if not ready.wait(30):
            raise SystemExit("the observer did not start")
        if "listening on" not in tcpdump.stderr.readline():
            raise SystemExit("tcpdump did not start")
        server.start()
        served.wait(10)
        opened, errors, seconds = burst.burst(port, connections, rate)
        time.sleep(1.5)  # the last FINs and ACKs; tcpdump hands over a part-full block after 1 s
    finally:
        stop.set()
        stats = results.get(timeout=60)
        observer.join()
        tcpdump.send_signal(signal.SIGINT)
        _, status, usage = os.wait4(tcpdump.pid, 0)
        tcpdump.returncode = os.waitstatus_to_exitcode(status)
        report = tcpdump.stderr.read()
        server.join(30)
    dropped = re.search(r"(\d+) packets? dropped by kernel", report)
    counts = {"observer": flag_counts(ours), "tcpdump": flag_counts(theirs)}
    rss = {"observer": stats["rss"], "tcpdump": usage.ru_maxrss // 1024}
    drops = {"observer": stats["kernel_drops"], "tcpdump": int(dropped.group(1)) if dropped
             else "?"}
    analysed = subprocess.run([*KALAB, "analyze", str(ours), "--port", str(port), "--json"],
                              capture_output=True, text=True, cwd=ROOT)
    run = json.loads(analysed.stdout)["runs"][0] if analysed.stdout else {}
    lines = [f"## Capture: {opened:,} connections in {seconds:.2f} s "
             f"({opened / seconds:,.0f}/s) on lo, port {port}, every 10th reset",
             "", f"Client errors: {errors}. Observer CPU: {stats['cpu']:.2f} s.", "",
             "| | SYN | SYN-ACK | FIN | RST | packets | kernel drops | peak RSS |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("observer", "tcpdump"):
        c = counts[name]
        lines.append(f"| {name} | {c['SYN']:,} | {c['SYN-ACK']:,} | {c['FIN']:,} | "
                     f"{c['RST']:,} | {c['packets']:,} | {drops[name]} | {rss[name]} MiB |")
    same = "the same" if counts["observer"] == counts["tcpdump"] else "DIFFERENT"
    lines += ["", f"Both pcaps hold {same} SYN/FIN/RST counts. `kalab analyze` of the "
              f"observer's pcap: exit {analysed.returncode}, "
              f"{len(run.get('connections', [])):,} connections, "
              f"{len(run.get('requests', [])):,} requests.", ""]
    return lines


# One analysis in a fresh process, as `kalab analyze` makes it: its two parts' seconds.
_PROBE = """
import gc, os, sys, time
from pathlib import Path
from kalab import evidence, report
gc.disable()  # as `kalab analyze` does
t0 = time.perf_counter()
a = evidence.analyze_capture(Path(sys.argv[1]), background=True, spool=True)
t1 = time.perf_counter()
run = report.EngineRun(engine="capture", kind="unknown", description="", version=None,
                       listen=None, options={}, capture=report.Capture(),
                       connections=a.connections, requests=a.requests)
with open(os.devnull, "wb") as out:
    report.write_json(report.Report(schema=report.SCHEMA, scenario=None, name="", runtime="",
                                    started_at=0, finished_at=0, runs=[run],
                                    verdict="observed", exit_code=0), out)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1, len(a.connections), len(a.requests), a.records, a.skipped)
"""

# What Python costs before kalab does anything: start and imports.
_START = "import kalab.cli, kalab.evidence"


# tshark as a user would ask it for what kalab reports of each request: its connection
# (tcp.stream), the request line, the status line, the Connection header and the
# header lines (Keep-Alive), each HTTP frame's time.
TSHARK_HTTP = ["-Y", "http", "-T", "fields", "-E", "occurrence=a",
               *(arg for name in ("frame.time_epoch", "tcp.stream", "http.request.method",
                                  "http.request.uri", "http.request.version",
                                  "http.response.code", "http.response.version",
                                  "http.connection", "http.response.line")
                 for arg in ("-e", name))]
# The pcaps: name, connections, segments per response body. The last, 24 million packets
# (about 2.3 GiB), only with --huge.
PCAPS = [("big-1.pcap", 20_000, 1), ("big-8.pcap", 20_000, 8), ("big-200k.pcap", 200_000, 1)]
HUGE = ("huge-2m.pcap", 2_000_000, 1)
BYTES_PER_PACKET = 101  # synth.py's frames and record headers, on average (240,000: 24 MiB)


def room_for(work: Path, packets: int, limit: int) -> str | None:
    """Why a pcap of about ``packets`` cannot be written in ``work``, or None: at most
    ``limit`` bytes, and a quarter of the disk's free space left beside it."""
    size = packets * BYTES_PER_PACKET
    if size > limit:
        return f"about {size / 2**30:.1f} GiB, above --max-pcap-gib"
    free = shutil.disk_usage(work).free
    if size > free * 0.75:
        return f"about {size / 2**30:.1f} GiB, and {free / 2**30:.1f} GiB free"
    return None


def analysis_part(work: Path, pcaps: list[tuple[str, int, int]], runs: int,
                  limit: int) -> list[str]:
    lines = ["## Analysis: tshark -q -z conv,tcp, tshark -Y http (the fields kalab reports) "
             "and kalab analyze --json", "",
             f"Fastest of {runs} runs each, as separate processes, taking turns (conv, http, "
             "kalab, conv, ...); peak RSS is the command's with every process it started (kalab "
             "reads in a second process), each page counted once (the sum of their PSS), "
             "sampled every 20 ms, and never below `wait4`'s peak. "
             "Each pcap is written "
             "for the run and removed after it; every output goes to /dev/null.", "",
             "| pcap | packets | connections | size | tshark conv s | tshark http s | kalab s "
             "| kalab / conv | kalab / http | floor s | floor / conv | conv RSS | http RSS "
             "| kalab RSS | kalab exit |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: | ---: | ---: | ---: |"]
    # Byte-compile kalab first, as installing a package does: this checkout may never
    # have been (PYTHONDONTWRITEBYTECODE), and compiling its modules on every run is not
    # what a user's `kalab` pays.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "kalab")], check=True)
    results: dict[str, tuple[int, tuple, tuple, tuple]] = {}
    probe: list[str] = []
    for name, connections, segments in pcaps:
        pcap = work / name
        expected = connections * (10 + 2 * segments)
        refused = room_for(work, expected, limit)
        if refused:
            lines.append(f"| {name} | {expected:,} | {connections:,} | not written: "
                         f"{refused} | | | | | | | | | | | |")
            continue
        try:
            packets = synth.write(pcap, connections, segments_per_body=segments)
            size = pcap.stat().st_size
            conv, http, kalab, floor = timed_side_by_side([
                (["tshark", "-q", "-z", "conv,tcp", "-r", str(pcap)], None),
                (["tshark", "-r", str(pcap), *TSHARK_HTTP], None),
                ([*KALAB, "analyze", str(pcap), "--json"], None),
                ([sys.executable, str(ROOT / "bench" / "floor.py"), str(pcap)], None)], runs)
            if name == PCAPS[0][0]:
                probe = where_the_time_goes(pcap)
        finally:
            pcap.unlink(missing_ok=True)
        results[name] = (packets, conv, http, kalab)
        lines.append(f"| {name} | {packets:,} | {connections:,} | {size / 2**20:,.0f} MiB | "
                     f"{conv[0]:.2f} | {http[0]:.2f} | {kalab[0]:.2f} | "
                     f"{kalab[0] / conv[0]:.2f} | {kalab[0] / http[0]:.2f} | {floor[0]:.2f} | "
                     f"{floor[0] / conv[0]:.2f} | {conv[1]:,} MiB | "
                     f"{http[1]:,} MiB | {kalab[1]:,} MiB | {kalab[2]} |")
    lines += ["", *probe]
    return [*lines, *verdicts(results), ""]


def where_the_time_goes(pcap: Path) -> list[str]:
    """The probe's split of kalab's time on ``pcap``, in three fresh processes."""
    probes = [subprocess.run([sys.executable, "-c", _PROBE, str(pcap)], capture_output=True,
                             text=True, cwd=ROOT, check=True).stdout.split()
              for _ in range(3)]
    out = [f"{min(float(p[0]) for p in probes):.2f}", f"{min(float(p[1]) for p in probes):.2f}",
           *probes[0][2:]]
    start_s, _, _ = timed([sys.executable, "-c", _START])
    return [f"Where kalab's time goes on {pcap.name} (three fresh processes, the fastest "
            "time of each part): reading (in a second process, alongside) and analysing to "
            f"the records on disk {out[0]} s; reading them back and writing them as JSON "
            f"{out[1]} s; Python's start and "
            f"imports {start_s:.2f} s. {int(out[2]):,} connections, {int(out[3]):,} "
            f"requests, {int(out[4]):,} records of which {int(out[5]):,} pure ACKs left "
            "out.", ""]


def verdicts(results: dict[str, tuple[int, tuple, tuple, tuple]]) -> list[str]:
    """The targets: kalab in at most half tshark conv's time on the 240,000-packet pcap
    (met before issue 17), and issue 17's: peak RSS at most 256 MB and at most 0.4 of
    tshark conv's time on the 2.4- and 24-million-packet pcaps, the 24-million one at
    most 10.5 times the 2.4-million one."""
    lines = []

    def said(target: str, met: bool, how: str) -> None:
        lines.append(f"- {target}: {'met' if met else 'NOT met'} ({how}).")

    if PCAPS[0][0] in results:
        _, conv, _, kalab = results[PCAPS[0][0]]
        said("kalab in at most half tshark conv's time on the 240,000-packet pcap",
             kalab[0] <= conv[0] / 2, f"ratio {kalab[0] / conv[0]:.2f}")
    for name in (PCAPS[2][0], HUGE[0]):
        if name in results:
            packets, conv, _, kalab = results[name]
            said(f"peak RSS at most 256 MB on {packets:,} packets (issue 17)",
                 kalab[1] * 2**20 <= 256e6, f"{kalab[1]:,} MiB")
            said(f"at most 0.4 of tshark conv's time on {packets:,} packets (issue 17)",
                 kalab[0] <= 0.4 * conv[0], f"ratio {kalab[0] / conv[0]:.2f}")
    if PCAPS[2][0] in results and HUGE[0] in results:
        growth = results[HUGE[0]][3][0] / results[PCAPS[2][0]][3][0]
        said("24 million packets in at most 10.5 times the time of 2.4 million (issue 17)",
             growth <= 10.5, f"{growth:.1f} times")
    return ["Targets:", "", *lines] if lines else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=8000, help="burst size")
    parser.add_argument("--rate", type=float, default=4000, help="burst connections a second")
    parser.add_argument("--huge", action="store_true",
                        help="also the 24-million-packet pcap (2,000,000 connections, about "
                        "2.3 GiB on disk for its run; minutes of both cores)")
    parser.add_argument("--only", action="append", metavar="PCAP",
                        help="analyse only this pcap (by name: " + ", ".join(
                            n for n, _, _ in (*PCAPS, HUGE)) + "); repeatable")
    parser.add_argument("--runs", type=int, default=3, help="runs of each analysis")
    parser.add_argument("--max-pcap-gib", type=float, default=4.0,
                        help="the largest pcap written (default 4)")
    parser.add_argument("--no-capture", action="store_true", help="skip the capture part")
    parser.add_argument("--output", type=Path, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the capture part's pcaps")
    args = parser.parse_args()
    for tool in ("tcpdump", "tshark"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    pcaps = [p for p in (*PCAPS, *([HUGE] if args.huge else [])) if not args.only
             or p[0] in args.only]
    work = Path(tempfile.mkdtemp(prefix="kalab-bench-"))
    # A signal to stop still removes the pcaps (a huge one is gigabytes): through `finally`.
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, lambda signum, _: sys.exit(128 + signum))
    try:
        lines = ["# Benchmark: capture beside tcpdump, analysis beside tshark", "",
                 f"`bench/capture_and_analysis.py`, {time.strftime('%Y-%m-%d %H:%M %Z')}.", "",
                 *machine(), ""]
        if args.no_capture:
            pass
        elif os.geteuid() == 0:
            lines += capture_part(work, args.connections, args.rate)
        else:
            lines += ["## Capture: skipped (needs root)", ""]
        lines += analysis_part(work, pcaps, args.runs, int(args.max_pcap_gib * 2**30))
    finally:
        if args.keep:
            print(f"pcaps kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
