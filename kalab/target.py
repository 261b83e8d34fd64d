"""A server the lab did not start: its URL, its bounds, and the pace of the lab's requests.

Both ways of looking at such a server go through here: `kalab probe URL`
(`kalab.probe`) and `kalab run --target URL SCENARIO` (`kalab.lab`). What
they share, and what they must never do differently:

- **the URL**: only an explicit ``http://`` or ``https://`` URL, with a host
  and no credentials, one line of at most 2048 visible characters
  (`parse`); anything else is bad input before anything starts;
- **the bounds**: every bound a command takes is itself bounded
  (`out_of_bounds`): no option lets the lab send without end;
- **the pace**: requests leave at most ``rate`` a second, with at most
  ``burst`` at once (`Pace`, a token bucket shared by every thread that
  sends): a scenario's short bursts keep their timing, a flood is spread
  out, and how late each request left is in the report (`send_lag`);
- **where to capture**: the address the host resolves to and the interface
  this host's packets to it leave by (`locate`), captured there as the
  client's side of the wire.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        """``scheme://authority``: what a client's request paths are appended to."""
        return f"{self.scheme}://{self.authority}"


def parse(url: str) -> Target:
    """The URL as a target; ValueError unless it is an explicit http(s) URL."""
    if not isinstance(url, str) or len(url) > 2048 or not url.isprintable() or " " in url:
        raise ValueError("a URL is one line of at most 2048 visible characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: only an explicit http:// or https:// URL is taken")
    if not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{url!r}: a URL with a host and no credentials, please")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(url, parts.scheme, parts.hostname, port, path)


def out_of_bounds(bounds: dict[str, tuple[float, float, float]]) -> str | None:
    """The first ``option: (value, lowest, highest)`` whose value is outside its range (NaN
    is), as the one-line error to print; None when every one is within."""
    for option, (value, low, high) in bounds.items():
        if not (low <= value <= high):  # NaN fails this too
            return f"{option}: from {low:g} to {high:g}, got {value}"
    return None


def locate(where: Target) -> tuple[str, str]:
    """(the address ``where``'s host resolves to, the interface packets to it leave by);
    ValueError naming the host when it cannot be resolved or routed to."""
    from kalab.impairment import ImpairmentError, route_interface

    try:
        address = socket.getaddrinfo(where.host, where.port, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        raise ValueError(f"{where.host}: cannot resolve: {exc.strerror or exc}") from None
    try:
        return address, route_interface(address)
    except ImpairmentError as exc:
        raise ValueError(str(exc)) from None


class Pace:
    """A token bucket: ``take(n)`` returns when n requests may leave, at most ``rate`` a
    second and ``burst`` at once (``burst`` 1: one every 1/rate seconds). Safe across
    threads: the sessions of a scenario share one."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def take(self, count: int = 1) -> float:
        """Wait until ``count`` requests may leave (a batch larger than the burst waits
        for a full bucket and leaves it owing); the seconds waited."""
        waited = 0.0
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                needed = min(count, self.burst)
                if self.tokens >= needed:
                    self.tokens -= count
                    return waited
                wait = (needed - self.tokens) / self.rate
            time.sleep(wait)
            waited += wait
