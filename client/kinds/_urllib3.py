"""What the clients built on urllib3 (requests, urllib3 itself) share: its pools as a
scenario asks (HTTP/1.0, no stale check, SO_KEEPALIVE), and its own log lines, which
are its reuse decisions."""

from __future__ import annotations

import logging
import threading
from typing import Any

import urllib3
import urllib3.connection
import urllib3.connectionpool

from client.kinds._shared import keepalive_options
from kalab.scenario import Session


class _PoolLog(logging.Handler):
    """Collects urllib3's connection-pool messages per thread (= per session)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: dict[int, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.setdefault(threading.get_ident(), []).append(record.getMessage())

    def take(self) -> list[str]:
        """This thread's lines since it last took them."""
        return self.lines.pop(threading.get_ident(), [])


POOL_LOG = _PoolLog()
_logger = logging.getLogger("urllib3.connectionpool")
_logger.addHandler(POOL_LOG)
_logger.setLevel(logging.DEBUG)
_logger.propagate = False  # the role's log stays the role's: these are records, not news


def beliefs(lines: list[str]) -> tuple[bool, bool]:
    """(opened a connection, replaced a dropped one), in urllib3's words: it says
    "Starting new HTTP connection" for a new one, and "Resetting dropped connection"
    when a pooled one turned out closed by the server and it opened another."""
    words = " ".join(lines)
    replaced = "Resetting dropped connection" in words
    return "Starting new" in words or replaced, replaced


def socket_options(session: Session) -> list[tuple[int, int, int]] | None:
    """urllib3's own socket options (TCP_NODELAY) and SO_KEEPALIVE with the session's
    timers; None without tcp_keepalive (urllib3's defaults)."""
    if session.tcp_keepalive is None:
        return None
    return [*urllib3.connection.HTTPConnection.default_socket_options,
            *keepalive_options(session.tcp_keepalive)]


def pool_classes(session: Session) -> dict[str, type]:
    """The connection pools a session's settings need, by scheme (empty: urllib3's own)."""
    http10 = session.options.get("http_version", "1.1") == "1.0"
    unchecked = not session.options.get("stale_check", True)
    if not (http10 or unchecked):
        return {}
    return {"http": _POOLS[(http10, unchecked)], "https": _TLS_POOLS[(http10, unchecked)]}


def local_port(conn: Any) -> int | None:
    sock = getattr(conn, "sock", None)
    try:
        return sock.getsockname()[1] if sock is not None else None
    except OSError:
        return None


def _pool(base: type, connection: type, http10: bool, unchecked: bool) -> type:
    """``base`` (a urllib3 pool) whose connections (``connection``'s) speak HTTP/1.0
    and or skip the stale check."""
    attributes: dict[str, object] = {"kalab_unchecked": unchecked}
    if http10:
        attributes.update(_http_vsn=10, _http_vsn_str="HTTP/1.0")
    conn = type(f"Kalab{connection.__name__}", (connection,), attributes)
    return type(f"Kalab{base.__name__}", (base,), {"ConnectionCls": conn})


_SETTINGS = ((True, False), (False, True), (True, True))  # (http10, unchecked)
_POOLS = {s: _pool(urllib3.connectionpool.HTTPConnectionPool,
                   urllib3.connection.HTTPConnection, *s) for s in _SETTINGS}
_TLS_POOLS = {s: _pool(urllib3.connectionpool.HTTPSConnectionPool,
                       urllib3.connection.HTTPSConnection, *s) for s in _SETTINGS}


_urllib3_is_connection_dropped = urllib3.connectionpool.is_connection_dropped


def _is_connection_dropped(conn: Any) -> bool:
    # urllib3 (1.26 and 2.x) looks this name up in connectionpool for every reuse.
    if getattr(conn, "kalab_unchecked", False) and getattr(conn, "sock", None) is not None:
        return False
    return _urllib3_is_connection_dropped(conn)


urllib3.connectionpool.is_connection_dropped = _is_connection_dropped
