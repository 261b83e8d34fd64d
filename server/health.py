"""The server container's healthcheck: does the scenario's port accept a connection?

Run inside the server's network namespace, so it connects over loopback and
never shows up in the observer's capture on the container's interface.
"""

from __future__ import annotations

import socket
import sys

from kalab.scenario import ScenarioError, load


def main(argv: list[str]) -> int:
    try:
        port = load(argv[0]).port
    except (IndexError, ScenarioError) as exc:
        print(f"usage: python -m server.health SCENARIO ({exc})", file=sys.stderr)
        return 2
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return 0
    except OSError as exc:
        print(f"port {port}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
