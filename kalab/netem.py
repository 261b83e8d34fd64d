"""Link impairments with `tc netem`, each applied by the role that owns that direction.

A qdisc shapes what leaves an interface, so the observer (in the server's
network namespace, with NET_ADMIN under compose too) shapes server to
client, and the client role shapes client to server. The same code runs in
namespaces and containers; the namespace or container going away removes it.
"""

from __future__ import annotations

import json
import subprocess

from kalab.scenario import LinkImpairment


class ImpairmentError(Exception):
    pass


def route_interface(host: str) -> str:
    """The interface this host's packets to ``host`` leave by."""
    out = subprocess.run(["ip", "-j", "route", "get", host], capture_output=True, text=True)
    if out.returncode:
        raise ImpairmentError(f"no route to {host}: {out.stderr.strip()}")
    return json.loads(out.stdout)[0]["dev"]


def qdisc_args(impairment: LinkImpairment) -> list[str]:
    """The qdisc for an impairment: netem, or tbf for a rate alone (some kernels lack netem)."""
    if impairment.rate and not (impairment.delay_ms or impairment.jitter_ms
                                or impairment.loss_percent):
        return ["tbf", "rate", impairment.rate, "burst", "32kbit", "latency", "400ms"]
    return ["netem", *impairment.netem_args()]


def apply(interface: str, impairment: LinkImpairment, direction: str) -> str:
    """Put the impairment on ``interface``'s egress; what was applied, in words."""
    qdisc = qdisc_args(impairment)
    if qdisc == ["netem"]:
        return f"{direction}: nothing to apply"
    done = subprocess.run(["tc", "qdisc", "replace", "dev", interface, "root", *qdisc],
                          capture_output=True, text=True)
    if done.returncode:
        why = done.stderr.strip() or f"exit {done.returncode}"
        if "unknown" in why.lower() and qdisc[0] == "netem":
            why += " (this kernel has no sch_netem: CONFIG_NET_SCH_NETEM is not set)"
        elif "not permitted" in why.lower():
            why += " (needs NET_ADMIN)"
        raise ImpairmentError(f"tc {qdisc[0]} on {interface}: {why}")
    return f"{direction}: {' '.join(qdisc)} on {interface}"


def netem_available() -> bool:
    """Whether this kernel can run netem (tried in a throwaway namespace)."""
    ns = "kalab-netem-probe"
    subprocess.run(["ip", "netns", "add", ns], capture_output=True)
    try:
        return subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo",
                               "root", "netem", "delay", "1ms"],
                              capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
