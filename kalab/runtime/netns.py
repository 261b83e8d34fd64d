"""The netns topology: a server namespace (the observer shares it, as the
compose sidecar shares the server's), a client namespace, one veth between.

    [client ns] veth kl<id>c 10.213.0.2 <---> 10.213.0.1 kl<id>s [server ns]
                                              server role + observer role

A run whose engines go at once (`kalab.lab`) makes one such pair per engine,
numbered: ``kalab-<id>-<n>-srv`` and ``-cli``, veth ``kl<id>n<n>s``/``c``, and
the n-th /30 of 10.213.0.0/16 (engine 0: .0.1 and .0.2, engine 1: .0.5 and
.0.6, ...). The addresses are the lab's own: they exist only inside these
namespaces.
"""

from __future__ import annotations

import subprocess

from kalab.runtime.link import VethLink, ip
from kalab.runtime.node import Node
from kalab.runtime.state import PREFIX, RunState

SERVER_ADDR = "10.213.0.1"
CLIENT_ADDR = "10.213.0.2"
PAIRS = 16384  # the /30s in 10.213.0.0/16: how many pairs one run can number


def pair_addresses(number: int) -> tuple[str, str]:
    """The server's and the client's address of pair ``number`` (0 to PAIRS - 1)."""
    if not 0 <= number < PAIRS:
        raise ValueError(f"pair {number}: 0 to {PAIRS - 1}")
    base = 4 * number
    third, fourth = divmod(base, 256)
    return f"10.213.{third}.{fourth + 1}", f"10.213.{third}.{fourth + 2}"


class NetnsLab:
    name = "netns"

    def __init__(self, state: RunState, number: int | None = None) -> None:
        """The run's one pair of namespaces, or (``number``) its numbered pair."""
        rid = state.run_id
        self.state = state
        tag = rid if number is None else f"{rid}-{number}"
        self.server_ns, self.client_ns = f"{PREFIX}{tag}-srv", f"{PREFIX}{tag}-cli"
        end = f"kl{rid}" if number is None else f"kl{rid}n{number}"  # at most 15 characters
        server_addr, client_addr = (SERVER_ADDR, CLIENT_ADDR) if number is None \
            else pair_addresses(number)
        self.server_if = f"{end}s"
        self.link = VethLink(self.server_if, self.server_ns, server_addr,
                             f"{end}c", self.client_ns, client_addr)
        self.server = Node("server", state, self.server_ns)
        self.client = Node("client", state, self.client_ns)
        self.observer = self.server  # the sidecar: the server's network, its interface
        self.server_host = server_addr
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
