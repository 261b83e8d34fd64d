"""The client role: ``python -m client SCENARIO --host ADDR``.

Runs the scenario's sessions against the server and writes ``client.json``
(what the client believed) into the run folder, then ``client.done``.
"""

from __future__ import annotations

import sys

from client.sessions import run_sessions
from kalab import handoff
from kalab.scenario import ScenarioError, load


def main(argv: list[str] | None = None) -> int:
    parser = handoff.role_arguments("Run the scenario's client sessions.")
    parser.add_argument("--host", default="127.0.0.1", help="the server's address")
    args = parser.parse_args(argv)
    try:
        scenario = load(args.scenario)
    except ScenarioError as exc:
        print(f"kalab client: {exc}", file=sys.stderr)
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    args.run_dir.mkdir(parents=True, exist_ok=True)
    records = run_sessions(scenario, f"http://{host}:{scenario.port}")
    handoff.write_json(args.run_dir / handoff.CLIENT_RECORDS, records)
    (args.run_dir / handoff.CLIENT_DONE).touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
