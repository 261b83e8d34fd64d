"""A veth pair between two namespaces, each end with an address of the lab's own."""

from __future__ import annotations

import subprocess


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class VethLink:
    """``end_a`` in namespace ``ns_a`` with ``addr_a``, likewise b; /30 between them."""

    def __init__(self, end_a: str, ns_a: str, addr_a: str,
                 end_b: str, ns_b: str, addr_b: str) -> None:
        self.ends = ((end_a, ns_a, addr_a), (end_b, ns_b, addr_b))

    def create(self) -> None:
        (a, ns_a, _), (b, ns_b, _) = self.ends
        ip("link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        for end, ns, addr in self.ends:
            ip("-n", ns, "addr", "add", f"{addr}/30", "dev", end)
            ip("-n", ns, "link", "set", end, "up")
            ip("-n", ns, "link", "set", "lo", "up")
