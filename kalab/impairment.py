"""Link impairments: a rate with `tc tbf`, delay, jitter and loss with the delay line.

Each is applied where it is true to a link between the two hosts, as seen
by the observer at the server's interface:

- a rate shapes what leaves the sender: `tc tbf` on the server's interface
  (the observer) or the client's (the client role);
- delay, jitter and loss sit on the far side of that capture point for the
  server's packets and on the near side for the client's: both are applied
  in the client's namespace by the client role, server to client as the
  packets come in, client to server as they go out. The server's packets
  thus leave at once, as on a real link; holding them on the server's own
  way out would also hold back its next segments (TCP small queues count a
  queued packet against its socket, and only netem lets go of it). The
  client's own sends do wait so, one held segment per socket at a time;
  its requests are one segment each (http.client sends a small body with
  the headers), so only a body larger than a segment shows it.
- nginx's upstream (``upstream_to_proxy``) lives on the server's loopback:
  the observer delays what gunicorn sends there.

Delay, jitter and loss come from `kalab.delayline` (NFQUEUE) on every
kernel: the same mechanism everywhere, tested here, where the kernel has no
`sch_netem`. The report says what was applied and, per engine, how many
packets the delay line held or dropped.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable

from kalab.delayline import OVERFLOW, DelayLine, DelayLineError, iptables, queue_rule
from kalab.scenario import LinkImpairment

# NFQUEUE numbers, one per direction (each namespace has its own queues anyway).
QUEUES = {"server_to_client": 1, "client_to_server": 2, "upstream_to_proxy": 3}


class ImpairmentError(Exception):
    pass


def route_interface(host: str) -> str:
    """The interface this host's packets to ``host`` (a name or an address) leave by."""
    try:
        address = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        raise ImpairmentError(f"cannot resolve {host}: {exc}") from None
    out = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True)
    if out.returncode:
        raise ImpairmentError(f"no route to {host}: {out.stderr.strip()}")
    return json.loads(out.stdout)[0]["dev"]


class Applied:
    """One direction's impairment, in force until `close`."""

    def __init__(self, direction: str, how: str) -> None:
        self.direction = direction
        self.how = how
        self.delay_line: DelayLine | None = None
        self._undo: list[Callable[[], object]] = []
        self._counted = (0, 0, 0)

    def describe(self) -> str:
        """What was applied; for the delay line, what it did since the last call."""
        if self.delay_line is None:
            return f"{self.direction}: {self.how}"
        stats = self.delay_line.counts()
        held, lost, overflowed = (n - c for n, c in zip(stats, self._counted, strict=True))
        self._counted = stats
        text = f"{self.direction}: {self.how}: {held} packets delayed, {lost} dropped as loss"
        return text + (f", {overflowed} {OVERFLOW}" if overflowed else "")

    def close(self) -> None:
        for undo in reversed(self._undo):
            try:
                undo()
            except (OSError, DelayLineError, ImpairmentError):
                pass  # the namespace or container going away removes it anyway
        self._undo.clear()


def shape_rate(direction: str, rate: str, interface: str) -> Applied:
    """Limit what leaves ``interface`` to ``rate`` (tc tbf)."""
    tbf = ["tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"]
    done = subprocess.run(["tc", "qdisc", "replace", "dev", interface, "root", *tbf],
                          capture_output=True, text=True)
    if done.returncode:
        why = done.stderr.strip() or f"exit {done.returncode}"
        if "not permitted" in why.lower():
            why += " (needs NET_ADMIN)"
        raise ImpairmentError(f"{direction}: tc tbf on {interface}: {why}")
    applied = Applied(direction, f"tc {' '.join(tbf)} on {interface}")
    applied._undo.append(lambda: subprocess.run(["tc", "qdisc", "del", "dev", interface, "root"],
                                                capture_output=True))
    return applied


def delay(direction: str, impairment: LinkImpairment, interface: str, inbound: bool = False,
          from_port: int | None = None) -> Applied:
    """Delay, jitter and drop what leaves ``interface`` (or, ``inbound``, comes in by it).

    ``from_port`` narrows it to TCP from that port; ``only: fin`` to FINs.
    """
    match = ["-p", "tcp"] if from_port is not None or impairment.only else []
    which = []
    if from_port is not None:
        match += ["--sport", str(from_port)]
        which.append(f"from port {from_port}")
    if impairment.only == "fin":
        match += ["--tcp-flags", "FIN", "FIN"]
        which.insert(0, "FIN packets")
    queue = QUEUES[direction]
    applied = Applied(direction, "")
    try:
        line = DelayLine(queue, impairment.delay_ms, impairment.jitter_ms,
                         impairment.loss_percent)
        applied._undo.append(line.close)
        rule = queue_rule(interface, queue, tuple(match), inbound)
        iptables("-A", rule)
    except DelayLineError as exc:
        applied.close()
        raise ImpairmentError(f"{direction}: {exc}") from exc
    applied._undo.append(lambda: iptables("-D", rule))
    applied.delay_line = line.start()
    only = f", only {' '.join(which)}" if which else ""
    way = "coming in by" if inbound else "leaving by"
    applied.how = (f"{' '.join(impairment.words(rate=False))} by the user-space delay "
                   f"line (NFQUEUE {queue}{only}), {way} {interface}")
    return applied


def _shaped(impairment: LinkImpairment) -> bool:
    return bool(impairment.delay_ms or impairment.jitter_ms or impairment.loss_percent)


def _apply_all(steps: list[Callable[[], Applied]]) -> list[Applied]:
    applied: list[Applied] = []
    try:
        for step in steps:
            applied.append(step())
    except ImpairmentError:
        for done in applied:
            done.close()
        raise
    return applied


def apply_in_server_namespace(link: dict[str, LinkImpairment], interface: str,
                              upstream_port: int) -> list[Applied]:
    """The observer's share: the server's rate, and nginx's upstream on loopback."""
    steps: list[Callable[[], Applied]] = []
    if (to_client := link.get("server_to_client")) and to_client.rate:
        steps.append(lambda: shape_rate("server_to_client", to_client.rate, interface))
    if (upstream := link.get("upstream_to_proxy")) and _shaped(upstream):
        steps.append(lambda: delay("upstream_to_proxy", upstream, "lo",
                                   from_port=upstream_port))
    return _apply_all(steps)


def apply_in_client_namespace(link: dict[str, LinkImpairment], interface: str) -> list[Applied]:
    """The client role's share: its own rate, and delay, jitter and loss both ways."""
    steps: list[Callable[[], Applied]] = []
    if (to_server := link.get("client_to_server")) and to_server.rate:
        steps.append(lambda: shape_rate("client_to_server", to_server.rate, interface))
    if to_server and _shaped(to_server):
        steps.append(lambda: delay("client_to_server", to_server, interface))
    if (to_client := link.get("server_to_client")) and _shaped(to_client):
        steps.append(lambda: delay("server_to_client", to_client, interface, inbound=True))
    return _apply_all(steps)
