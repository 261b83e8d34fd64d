"""The local topology: every role on the host's loopback, nothing else touched."""

from __future__ import annotations

from kalab.runtime.node import Node
from kalab.runtime.state import RunState


class LocalLab:
    name = "local"

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.server = self.client = self.observer = Node("host", state)
        self.server_host = "127.0.0.1"
        self.capture_interface = "lo"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
