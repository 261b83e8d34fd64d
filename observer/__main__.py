"""The observer role: ``python -m observer SCENARIO --interface IFACE``.

Listens before anything else starts, then writes ``observer.ready``. Stops
on SIGTERM or SIGINT, or (``--until-client-done``) a moment after the
client role finished, and always closes the pcap and writes its
accounting (``capture.json``): nothing captured is lost on the way out.
"""

from __future__ import annotations

import signal
import sys
import time

from kalab import handoff
from kalab.scenario import ScenarioError, load
from observer.capture import Capture

LINGER = 1.0  # seconds to keep listening after the client ends: its FINs, the last ACKs


def main(argv: list[str] | None = None) -> int:
    parser = handoff.role_arguments("Capture the lab's TCP port and keep the pcap.")
    parser.add_argument("--interface", default="lo", help="interface to capture on")
    parser.add_argument("--until-client-done", action="store_true",
                        help=f"stop {LINGER:g} s after the client role writes client.done")
    args = parser.parse_args(argv)
    try:
        scenario = load(args.scenario)
    except ScenarioError as exc:
        print(f"kalab observer: {exc}", file=sys.stderr)
        return 2
    args.run_dir.mkdir(parents=True, exist_ok=True)
    stop_requested = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        capture = Capture(args.interface, scenario.port, args.run_dir / handoff.CAPTURE_PCAP)
    except (OSError, RuntimeError) as exc:
        print(f"kalab observer: cannot capture on {args.interface}: {exc}", file=sys.stderr)
        return 1
    try:
        (args.run_dir / handoff.OBSERVER_READY).touch()
        done_file = args.run_dir / handoff.CLIENT_DONE
        stop_at = None
        while not stop_requested:
            capture.poll(0.1)
            if args.until_client_done and stop_at is None and done_file.exists():
                stop_at = time.monotonic() + LINGER
            if stop_at is not None and time.monotonic() >= stop_at:
                break
    finally:
        stats = capture.close()
        handoff.write_json(args.run_dir / handoff.CAPTURE_STATS, stats.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
