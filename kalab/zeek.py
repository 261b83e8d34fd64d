"""A run's records as Zeek's JSON logs: ``conn.log`` and ``http.log``.

`kalab analyze FILE --zeek DIR` writes them so that tools which read Zeek's
logs read kalab's. Each line is one JSON object, as Zeek writes with
``LogAscii::use_json = T``: its field names (a ``conn_id`` flattened to
``id.orig_h``, ``id.orig_p``, ``id.resp_h``, ``id.resp_p``), in the order of
Zeek's own ``Conn::Info`` (scripts/base/protocols/conn/main.zeek) and
``HTTP::Info`` (scripts/base/protocols/http/main.zeek), times as seconds
since the epoch. Like Zeek, a field with no value is left out; unlike Zeek, so
is one kalab does not know (packet counts, ``Host``, the reason phrase), one
the capture cut (an `HttpRequest.unknown`), and ``missed_bytes`` on a
connection with a gap (kalab counts gaps, not their bytes): an absent field
is never a guess.

conn.log fields written:

- ``ts``: `Connection.first_seen_at`, the first packet's time (Zeek's
  ``start_time``).
- ``uid``: ``C`` and 17 base62 characters, as Zeek's, but made from the
  connection's addresses and first time, so the same capture always gets the
  same uids; http.log's ``uid`` names its connection's.
- ``proto``: ``tcp``; ``ip_proto``: 6.
- ``service``: ``http`` when it carried a request.
- ``duration``: from ``ts`` to the packet that closed its second side (a FIN
  or a RST from each); while a side stays open, to its last packet with a
  SYN, FIN, RST or payload (Zeek also counts trailing pure ACKs there, which
  a reader may leave out). Zeek's note: the final ACK of a normal close is
  not in it. Written, with ``orig_bytes`` and ``resp_bytes``, only when
  above zero, as Zeek does.
- ``orig_bytes``, ``resp_bytes``: `Connection.client_bytes`,
  `Connection.server_bytes` (from sequence numbers, as Zeek's).
- ``conn_state``, ``history``: `Connection.conn_state`, `Connection.history`.
- ``missed_bytes``: 0 on a connection without gaps.

http.log fields written, one line per request read (not for one inferred from TLS
records: Zeek writes no http.log line for HTTP it cannot read):

- ``ts``: `HttpRequest.sent_at`; ``uid``, ``id.*``: its connection's.
- ``trans_depth``: `HttpRequest.depth`.
- ``method``, ``uri``: the request line's (``uri`` as sent, not unescaped).
- ``version``: the response's, without ``HTTP/`` (Zeek's ``version`` is the
  reply's).
- ``request_body_len``, ``response_body_len``: bytes of each body.
- ``status_code``: the final status; ``tags``: ``[]``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kalab.report import Connection, EngineRun, HttpRequest

CONN_LOG, HTTP_LOG = "conn.log", "http.log"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def uid(conn: Connection) -> str:
    """A Zeek-shaped uid for the connection: ``C`` and 96 bits in base62."""
    seed = f"{conn.client} {conn.server} {conn.first_seen_at!r} {conn.id}".encode()
    number = int.from_bytes(hashlib.sha256(seed).digest()[:12], "big")
    digits = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "C" + "".join(reversed(digits)).rjust(17, "0")


def _endpoint(text: str) -> tuple[str, int]:
    """``("::1", 80)`` from ``[::1]:80``, ``("10.0.0.1", 80)`` from ``10.0.0.1:80``."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _id(conn: Connection) -> dict[str, Any]:
    orig_h, orig_p = _endpoint(conn.client)
    resp_h, resp_p = _endpoint(conn.server)
    return {"id.orig_h": orig_h, "id.orig_p": orig_p, "id.resp_h": resp_h, "id.resp_p": resp_p}


def _closed_at(conn: Connection, side: str) -> float | None:
    """When ``side`` first sent a FIN or a RST."""
    times = []
    if conn.first_fin_by == side:
        times.append(conn.first_fin_at)
    elif conn.first_fin_by is not None and conn.second_fin_at is not None:
        times.append(conn.second_fin_at)
    if conn.rst_by == side:
        times.append(conn.rst_at)
    return min(times, default=None)


def end_at(conn: Connection) -> float | None:
    """Zeek's last time for the connection, as far as its record tells (see the module)."""
    client, server = _closed_at(conn, "client"), _closed_at(conn, "server")
    if client is not None and server is not None:
        return max(client, server)
    seen = [t for t in (conn.first_seen_at, conn.syn_at, conn.established_at,
                        conn.last_data_at, conn.first_fin_at, conn.second_fin_at, conn.rst_at)
            if t is not None]
    return max(seen, default=None)


def conn_record(conn: Connection) -> dict[str, Any]:
    """The connection's conn.log line."""
    ts = conn.first_seen_at if conn.first_seen_at is not None else conn.syn_at
    line: dict[str, Any] = {"ts": ts, "uid": uid(conn), **_id(conn), "proto": "tcp"}
    if conn.requests:
        line["service"] = "http"
    end = end_at(conn)
    if ts is not None and end is not None and end > ts:
        line["duration"] = round(end - ts, 6)
        if conn.client_bytes is not None:
            line["orig_bytes"] = conn.client_bytes
        if conn.server_bytes is not None:
            line["resp_bytes"] = conn.server_bytes
    if conn.conn_state is not None:
        line["conn_state"] = str(conn.conn_state)
    if conn.gaps == 0:
        line["missed_bytes"] = 0
    if conn.history:
        line["history"] = conn.history
    line["ip_proto"] = 6
    return line


def http_record(request: HttpRequest, conn: Connection) -> dict[str, Any]:
    """The request's http.log line."""
    unknown = set(request.unknown or ())
    line: dict[str, Any] = {"ts": request.sent_at, "uid": uid(conn), **_id(conn),
                            "trans_depth": request.depth, "method": request.method}
    if "target" not in unknown:
        line["uri"] = request.target
    version = request.response_version
    if version is not None and "response_version" not in unknown:
        line["version"] = version.removeprefix("HTTP/")
    for name in ("request_body_len", "response_body_len"):
        value = getattr(request, name)
        if value is not None and name not in unknown:
            line[name] = value
    if request.status is not None and "status" not in unknown:
        line["status_code"] = request.status
    line["tags"] = []
    return line


def lines(run: EngineRun) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each log line of an engine run, as (`CONN_LOG` or `HTTP_LOG`, line): conn.log's in
    the order connections were seen, http.log's in the order requests were sent.

    One walk of each, side by side: a request's connection is seen before it is sent,
    so the connections are read up to it, and each is let go once its last request is
    written. Held at a time: the connections whose requests are not all written yet,
    not the capture's (a big capture's records are read from disk, `kalab.spool`).
    """
    connections = iter(run.connections)
    waiting: dict[int, list] = {}  # by id: [the connection, its requests not written]
    for request in run.requests:
        while request.connection not in waiting:
            conn = next(connections, None)
            if conn is None:  # no such connection: nothing to name its request after
                break
            yield CONN_LOG, conn_record(conn)
            if conn.requests:
                waiting[conn.id] = [conn, len(conn.requests)]
        held = waiting.get(request.connection)
        if held is None:
            continue
        if not request.inferred:
            yield HTTP_LOG, http_record(request, held[0])
        held[1] -= 1
        if not held[1]:
            del waiting[request.connection]
    for conn in connections:
        yield CONN_LOG, conn_record(conn)


def records(run: EngineRun) -> tuple[list[dict], list[dict]]:
    """(conn.log lines, http.log lines) of an engine run."""
    logs: dict[str, list[dict]] = {CONN_LOG: [], HTTP_LOG: []}
    for log, line in lines(run):
        logs[log].append(line)
    return logs[CONN_LOG], logs[HTTP_LOG]


def refuse(folder: Path) -> str | None:
    """Why ``folder`` cannot take the logs (it is the user's: nothing in it is replaced),
    or None when it is new or empty."""
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            return f"{folder}: not a folder"
        if any(folder.iterdir()):
            return f"{folder}: not empty (--zeek writes into a new or empty folder)"
    return None


def write(folder: Path, run: EngineRun) -> None:
    """conn.log and http.log of ``run`` into ``folder`` (new or empty: see `refuse`)."""
    folder.mkdir(parents=True, exist_ok=True)
    # "x": never over a file
    with open(folder / CONN_LOG, "x", encoding="utf-8") as conn_log, \
            open(folder / HTTP_LOG, "x", encoding="utf-8") as http_log:
        out = {CONN_LOG: conn_log, HTTP_LOG: http_log}
        for log, line in lines(run):
            out[log].write(json.dumps(line, separators=(",", ":")) + "\n")
