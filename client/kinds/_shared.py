"""Settings several client kinds take, each described once (a kind lists those it takes)."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

from kalab.kinds import MAX_SECONDS
from kalab.spec import Record, Scalar

if TYPE_CHECKING:
    from kalab.scenario import TcpKeepalive

HTTP_VERSIONS = ("1.1", "1.0")
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read
# Linux takes TCP_KEEPIDLE and TCP_KEEPINTVL in whole seconds (1 to 32767) and
# TCP_KEEPCNT up to 127; a lab needs far less. Absent: the system's own value
# (net.ipv4.tcp_keepalive_time 7200, _intvl 75, _probes 9 by default).
MAX_KEEPALIVE_PROBES = 20

RETRIES = Scalar("integer", "urllib3 retries (idempotent methods only)", 0, 0, 10)
HTTP_VERSION = Scalar("string", "the HTTP version the client speaks (quote it: \"1.0\")",
                      "1.1", choices=HTTP_VERSIONS)
STALE_CHECK = Scalar("boolean", "false: reuse a pooled connection without urllib3's check "
                     "that the server closed it", True)
TCP_KEEPALIVE = Record("TCP keep-alive on the client's sockets (SO_KEEPALIVE): when the "
                       "connection has been silent for idle seconds, the kernel sends a probe "
                       "every interval seconds, and gives up after count unanswered ones. Not "
                       "HTTP keep-alive: probes carry no data and do not reset a server's idle "
                       "timeout", {
    "idle": Scalar("integer", "TCP_KEEPIDLE: seconds of silence before the first probe "
                   "(absent: the system's, net.ipv4.tcp_keepalive_time)", None, 1, MAX_SECONDS),
    "interval": Scalar("integer", "TCP_KEEPINTVL: seconds between probes (absent: the "
                       "system's, net.ipv4.tcp_keepalive_intvl)", None, 1, MAX_SECONDS),
    "count": Scalar("integer", "TCP_KEEPCNT: unanswered probes before the kernel drops the "
                    "connection (absent: the system's, net.ipv4.tcp_keepalive_probes)", None, 1,
                    MAX_KEEPALIVE_PROBES),
})


def keepalive_options(keepalive: TcpKeepalive) -> list[tuple[int, int, int]]:
    """SO_KEEPALIVE with the timers the scenario sets, as setsockopt triples; a timer it
    leaves out stays the system's (Linux names)."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for option, value in ((socket.TCP_KEEPIDLE, keepalive.idle),
                          (socket.TCP_KEEPINTVL, keepalive.interval),
                          (socket.TCP_KEEPCNT, keepalive.count)):
        if value is not None:
            options.append((socket.IPPROTO_TCP, option, value))
    return options


def root_cause(exc: BaseException) -> str:
    """The network error under a client's wrappers, e.g. RemoteDisconnected.

    Follows explicit causes only: an implicit context can be an unrelated
    exception handled on the way (urllib3 1.26 leaves a TypeError there).
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    last = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        last = cause
        nested = [a for a in getattr(cause, "args", ()) if isinstance(a, BaseException)]
        reason = getattr(cause, "reason", None)
        cause = nested[0] if nested else reason if isinstance(reason, BaseException) \
            else cause.__cause__
    return f"{type(last).__name__}: {last}"


# A sleep ends 0.1-0.3 ms after it was asked to here (the timer's slack, the wake-up):
# sleep until this much before the target, then yield until it.
WAKE_EARLY = 0.0003


def sleep_until(target: float) -> None:
    """Sleep until the monotonic clock reaches ``target``."""
    while True:
        left = target - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left - WAKE_EARLY, 0.5) if left > 2 * WAKE_EARLY else 0)
