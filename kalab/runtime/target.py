"""The target topology: the roles on this host, the server one the lab did not start.

    [this host] client role --- (the host's route) ---> the target's address:port
                observer role, capturing on the interface that route leaves by
                server role: a stand-in, starting nothing and listening nowhere

Nothing is made (no namespace, no link) and nothing listens: the client's
connections go where the host's routing sends them, and the capture sees
them leave and come back on the client's side of the wire.
"""

from __future__ import annotations

from kalab.report import TargetServer
from kalab.runtime.node import Node
from kalab.runtime.state import RunState


class TargetLab:
    name = "target"

    def __init__(self, state: RunState, server: TargetServer) -> None:
        self.state = state
        self.server = self.client = self.observer = Node("host", state)
        self.server_host = server.address
        self.capture_interface = server.interface

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
