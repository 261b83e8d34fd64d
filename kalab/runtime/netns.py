"""The netns topology: a server namespace (the observer shares it, as the
compose sidecar shares the server's), a client namespace, one veth between.

    [client ns] veth kl<id>c 10.213.0.2 <---> 10.213.0.1 kl<id>s [server ns]
                                              server role + observer role

The addresses are the lab's own: they exist only inside these namespaces.
"""

from __future__ import annotations

import subprocess

from kalab.runtime.link import VethLink, ip
from kalab.runtime.node import Node
from kalab.runtime.state import PREFIX, RunState

SERVER_ADDR = "10.213.0.1"
CLIENT_ADDR = "10.213.0.2"


class NetnsLab:
    name = "netns"

    def __init__(self, state: RunState) -> None:
        rid = state.run_id
        self.state = state
        self.server_ns, self.client_ns = f"{PREFIX}{rid}-srv", f"{PREFIX}{rid}-cli"
        self.server_if = f"kl{rid}s"
        self.link = VethLink(self.server_if, self.server_ns, SERVER_ADDR,
                             f"kl{rid}c", self.client_ns, CLIENT_ADDR)
        self.server = Node("server", state, self.server_ns)
        self.client = Node("client", state, self.client_ns)
        self.observer = self.server  # the sidecar: the server's network, its interface
        self.server_host = SERVER_ADDR
        self.capture_interface = self.server_if

    def start(self) -> None:
        for ns in (self.server_ns, self.client_ns):
            self.state.add_namespace(ns)  # written down before it exists
            ip("netns", "add", ns)
        self.link.create()

    def stop(self) -> None:
        for ns in (self.server_ns, self.client_ns):
            remove_namespace(ns)


def remove_namespace(ns: str) -> None:
    """Kill whatever still runs in ``ns``, then delete it (its veth end goes with it)."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in pids.split():
        subprocess.run(["kill", "-9", pid], capture_output=True)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
