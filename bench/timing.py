"""How faithfully the client keeps the scenario's timing: planned vs wire send time.

Runs a 200-request scenario (one session, 10 ms apart, gunicorn gthread) on
the netns runtime and reports the send lag (wire time of the request's
first byte minus the time the scenario planned) from kalab's report, beside
the same lag computed from tshark's frame.time_epoch on the same pcap.
Goal (issue 6): median <= 1 ms, p99 <= 5 ms on an unloaded link. With
--engines N the scenario has N such engines, run at once as netns runs
them (issue 16: the goal must hold under concurrency), or in turn with
--serial; the lags of every engine are pooled.

    sudo .venv/bin/python bench/timing.py [--requests 200] [--gap 0.01] [--engines 1] [--serial]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def scenario_text(requests: int, gap: float, engines: int = 1) -> str:
    steps = []
    for _ in range(requests):
        steps += ["      - get: /keep-alive", f"      - sleep: {gap:g}"]
    names = ["gthread"] if engines == 1 else [f"gthread-{n}" for n in range(1, engines + 1)]
    return ("name: timing\nsessions:\n  - steps:\n" + "\n".join(steps) + "\n      - close\n"
            "engines:\n" + "".join(f"  - name: {name}\n    engine: gunicorn\n"
                                   "    worker: gthread\n    keep_alive: 30\n"
                                   for name in names))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def tshark_request_times(pcap: Path, port: int) -> list[float]:
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},http", "-Y",
                          "http.request", "-T", "fields", "-e", "frame.time_epoch"],
                         capture_output=True, text=True, check=True).stdout
    return [float(line) for line in out.split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.01, help="seconds between requests")
    parser.add_argument("--engines", type=int, default=1, help="engines, run at once")
    parser.add_argument("--serial", action="store_true", help="the engines in turn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "timing.yaml"
        scenario.write_text(scenario_text(args.requests, args.gap, args.engines))
        results = Path(tmp) / "results"
        done = subprocess.run([sys.executable, "-m", "kalab.cli", "run", str(scenario),
                               "--results", str(results), *(["--serial"] if args.serial
                                                             else [])],
                              cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr, file=sys.stderr)
            return 1
        report = json.loads((results / "report.json").read_text())
        kalab_lag, tshark_lag = [], []
        places: list[tuple[float, int]] = []  # (lag, the request's place in its session)
        for run in report["runs"]:
            requests = sorted(run["requests"], key=lambda r: r["sent_at"])
            kalab_lag += [r["send_lag"] * 1000 for r in requests]
            places += [(r["send_lag"] * 1000, n) for n, r in enumerate(requests, 1)]
            wire = tshark_request_times(results / run["capture"]["pcap"], 5000)
            tshark_lag += [(t - r["planned_at"]) * 1000
                           for t, r in zip(wire, requests, strict=True)]
    rows = [("kalab (report send_lag)", kalab_lag), ("tshark (frame.time_epoch)", tshark_lag)]
    print(f"machine: {platform.node()}, {platform.machine()}, "
          f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, "
          f"kernel {platform.release()}, Python {platform.python_version()}")
    print(f"{args.requests} requests, {args.gap * 1000:g} ms apart, gunicorn gthread, "
          f"netns runtime, {args.engines} engine(s) {'in turn' if args.serial else 'at once'}, "
          "load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    print("| source | median lag (ms) | p99 lag (ms) | max (ms) |")
    print("| --- | ---: | ---: | ---: |")
    for name, lags in rows:
        print(f"| {name} | {statistics.median(lags):.3f} | {percentile(lags, 0.99):.3f} | "
              f"{max(lags):.3f} |")
    slowest = sorted(places, reverse=True)[:max(1, len(places) // 100)]
    print("the slowest 1% (lag ms, the request's place in its engine's session): "
          + ", ".join(f"{lag:.1f} #{n}" for lag, n in slowest))
    median, p99 = statistics.median(kalab_lag), percentile(kalab_lag, 0.99)
    verdict = "meets" if median <= 1 and p99 <= 5 else "misses"
    print(f"goal median <= 1 ms and p99 <= 5 ms: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
