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
  out, and how late each request left is in a run's report (`send_lag`);
- **where to capture**: the addresses the host resolves to and the interface
  this host's packets to them leave by (`locate`), captured there as the
  client's side of the wire, those addresses and that port only.

A run takes more: the URL of the server's root (`for_run`: the scenario's
paths are sent as they are; over ``https://`` the clients verify the server
against this host's CAs or the one ``--target-ca`` gives, `check_ca`, and
write their TLS secrets to the run's key log, which the analysis reads the
requests off the wire with), a scenario whose requests and planned time fit the bounds
(`check_bounded`), and one engine whose expectations apply
(`whose_expectations`); its engines are then replaced by the pseudo-engine
``target`` (`targeted`).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kalab.report import TargetServer

if TYPE_CHECKING:  # `kalab probe` loads without the scenario
    from kalab.scenario import Expectation, Scenario


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
        port = parts.port
    except ValueError:
        port = 0  # not a number, or past 65535
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    elif not 1 <= port <= 65535:  # ":0" too: no server listens there, and it is no default
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(url, parts.scheme, parts.hostname, port, path)


def out_of_bounds(bounds: dict[str, tuple[float, float, float]]) -> str | None:
    """The first ``option: (value, lowest, highest)`` whose value is outside its range (NaN
    is), as the one-line error to print; None when every one is within."""
    for option, (value, low, high) in bounds.items():
        if not (low <= value <= high):  # NaN fails this too
            return f"{option}: from {low:g} to {high:g}, got {value}"
    return None


def locate(where: Target) -> tuple[list[str], str]:
    """(the addresses ``where``'s host resolves to that this host has a route to, in the
    order a client tries them; the interface packets to them leave by).

    A client tries each address in turn until one answers (``localhost``: ``::1``, then
    ``127.0.0.1``, where a server may listen on only one): the capture must see them
    all, so they must all leave by one interface. An address with no route is left out:
    no packet leaves for it. ValueError naming the host when it cannot be resolved,
    none of its addresses can be routed to, or they leave by different interfaces.
    """
    from kalab.impairment import ImpairmentError, route_interface

    try:
        found = socket.getaddrinfo(where.host, where.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValueError(f"{where.host}: cannot resolve: {exc.strerror or exc}") from None
    routes, unroutable = {}, None
    for address in dict.fromkeys(info[4][0] for info in found):
        try:
            routes[address] = route_interface(address)
        except ImpairmentError as exc:
            unroutable = unroutable or exc
    if not routes:
        raise ValueError(str(unroutable))
    if len(set(routes.values())) > 1:
        raise ValueError(f"{where.host}: its addresses leave this host by different interfaces "
                         f"({', '.join(f'{a} by {i}' for a, i in routes.items())}) and one "
                         "capture cannot see them all: give one of them in the URL")
    addresses = list(routes)
    return addresses, routes[addresses[0]]


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


# ------------------------------------------------- `kalab run --target URL SCENARIO`
#
# The roles run as in any run, on this host: the observer captures on the interface that
# leads to the target, the client runs the scenario's sessions against it, and the server
# role stands in for an engine it does not start (`server.__main__.stand_in`). The
# scenario they all load is `targeted`: its engines replaced by one pseudo-engine named
# `target`, whose turn the analyzer, the report and its views take for any engine's.

TARGET_ENGINE = "target"  # the pseudo-engine's name: its folder in the results


@dataclass(frozen=True)
class TargetEngine:
    """What stands for the scenario's engines in a run against a server the lab did not
    start: the roles, `kalab.evidence` and the views read it as they read an `Engine`."""

    server: TargetServer
    expect: tuple[Expectation, ...] = ()
    name: str = TARGET_ENGINE
    kind: str = "target"
    app: None = None

    def describe(self) -> str:
        ignored = ", ".join(self.server.engines_ignored) or "none"
        return (f"{self.server.url}: a server the lab did not start (the scenario's engines "
                f"were not started: {ignored})")

    @property
    def options(self) -> dict[str, Any]:
        """For the report's `EngineRun.options`: the target and the bounds in force."""
        return {key: value for key, value in asdict(self.server).items()
                if key != "engines_ignored"}


def for_run(url: str) -> Target:
    """`parse`, and what a run against the target needs besides: ValueError otherwise."""
    where = parse(url)
    if where.path != "/":
        raise ValueError(f"{url!r}: the scenario's paths are sent as they are: give the "
                         f"server's root, {where.origin}/")
    return where


def whose_expectations(scenario: Scenario, asked: str | None) -> str | None:
    """The engine whose expectations a run against a target checks: the one ``asked``
    for, else the only engine with any (None: no engine has any); ValueError when it is
    not for the lab to choose."""
    if asked is not None:
        try:
            return scenario.engine(asked).name
        except KeyError:
            raise ValueError(f"--expectations-of: no engine named {asked!r} in "
                             f"{scenario.file} (its engines: "
                             f"{', '.join(e.name for e in scenario.engines)})") from None
    with_some = [e.name for e in scenario.engines if e.expect]
    if len(with_some) > 1:
        raise ValueError(f"{scenario.file}: engines {', '.join(with_some)} each expect "
                         "their own: say whose apply to the target with --expectations-of "
                         "ENGINE")
    return with_some[0] if with_some else None


def check_bounded(scenario: Scenario, max_requests: int, max_seconds: float) -> None:
    """ValueError unless the scenario, run once, stays within the bounds: its requests
    (each retry a client may make counted) and its sessions' planned time."""
    requests = sum(len(s.requests) * (1 + s.retries) for s in scenario.sessions)
    if requests > max_requests:
        raise ValueError(f"{scenario.file}: sessions: up to {requests} requests (retries "
                         f"counted), more than --max-requests {max_requests} allows against "
                         "a server the lab did not start")
    longest = max((s.planned_time for s in scenario.sessions), default=0.0)
    if longest > max_seconds:
        raise ValueError(f"{scenario.file}: sessions: a session's planned time is "
                         f"{longest:g} s, more than --max-seconds {max_seconds:g} allows")


def targeted(scenario: Scenario, server: TargetServer) -> Scenario:
    """``scenario`` as it runs against ``server``: one `TargetEngine` for its engines (with
    the expectations of the engine ``server`` names), the target's port, no link, and TLS
    as the URL says (the scenario's TLS version kept, if it names one)."""
    from kalab.scenario import Tls

    expect = scenario.engine(server.expectations_of).expect \
        if server.expectations_of is not None else ()
    tls = None
    if urlsplit(server.url).scheme == "https":
        tls = Tls(scenario.tls.version if scenario.tls is not None else None)
    return replace(scenario, port=server.port, link={}, tls=tls,
                   engines=(TargetEngine(server, expect),))  # type: ignore[arg-type]


CA_LIMIT = 1 << 20  # a CA file of more is refused: certificates are a few KB


def check_ca(path: Path, url: str) -> None:
    """``--target-ca``: a readable file of PEM certificates, for an https:// URL only;
    ValueError otherwise."""
    import ssl

    if urlsplit(url).scheme != "https":
        raise ValueError(f"--target-ca: only with an https:// URL, not {url!r}")
    try:
        if not path.is_file():
            raise ValueError(f"--target-ca {path}: "
                             + ("not a regular file" if path.exists() else "no such file"))
        if path.stat().st_size > CA_LIMIT:
            raise ValueError(f"--target-ca {path}: more than {CA_LIMIT} bytes")
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
        raise ValueError(f"--target-ca {path}: not a file of PEM certificates "
                         f"({type(exc).__name__})") from None


def server_of(scenario: Scenario) -> TargetServer | None:
    """The target a `targeted` scenario runs against; None for any other scenario."""
    engines = scenario.engines
    if len(engines) == 1 and isinstance(engines[0], TargetEngine):
        return engines[0].server
    return None
