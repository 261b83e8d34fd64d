"""What tshark says about a pcap: the referee for every fact the lab states.

`compare` checks a report's engine run against tshark's own reading of the
pcap: the connections (`tcp.stream`), each request's connection and depth
(`http.request`, in order on its stream), who sent the first FIN
(`tcp.flags.fin`), the close times, first FIN and first RST, to the
millisecond (`frame.time_epoch`), the TCP keep-alive probes on each
connection (`tcp.analysis.keep_alive`), each response's status, `Connection`
header and Keep-Alive `max=` (`http.connection`, `http.response.line`), and
each connection's completeness
(`tcp.completeness`, read in two passes, as Wireshark shows it once it has
read the whole file: the OR of what its frames show).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

FIELDS = ["frame.number", "tcp.segment", "tcp.stream", "ip.src", "ipv6.src", "tcp.srcport",
          "ip.dst", "ipv6.dst", "tcp.dstport", "tcp.flags.syn", "tcp.flags.ack",
          "tcp.flags.fin", "tcp.flags.reset", "tcp.analysis.keep_alive",
          "frame.time_epoch", "http.request.method", "http.request.uri", "http.response.code",
          "http.connection", "http.response.line"]
_AGGREGATOR = "\x1f"  # between the values of one field in one frame (pipelined requests)
TOLERANCE = 0.001  # seconds: times must agree to the millisecond


def available() -> bool:
    return shutil.which("tshark") is not None


@dataclass
class Stream:
    number: int
    client: str | None = None  # address:port, as kalab writes it
    server: str | None = None
    client_port: int | None = None
    server_port: int | None = None
    first_fin_port: int | None = None  # the source port of the first FIN
    first_fin_at: float | None = None
    first_rst_port: int | None = None
    first_rst_at: float | None = None
    requests: list[tuple[float, str, str]] = field(default_factory=list)  # (time, method, uri)
    keepalive_probes: int = 0  # frames tshark flags tcp.analysis.keep_alive
    completeness: int = 0  # tcp.completeness, ORed over the stream's frames (tshark -2)
    # (status, Connection header, Keep-Alive max=) of each final response in order; only the
    # status where one frame completes several (pipelining: their headers cannot be told apart)
    responses: list[tuple[int, str | None, int | None] | tuple[int]] = \
        field(default_factory=list)


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def streams(pcap: Path, port: int | Iterable[int], keylog: Path | None = None
            ) -> dict[int, Stream]:
    """tcp.stream number -> what tshark saw on it (HTTP decoded on the server ``port``s;
    with ``keylog``, TLS there, decrypted with that key log, and the HTTP inside it)."""
    ports = {port} if isinstance(port, int) else set(port)
    decode = sum((["-d", f"tcp.port=={p},{'http' if keylog is None else 'tls'}"]
                  for p in sorted(ports)), [])
    if keylog is not None:
        decode += ["-o", f"tls.keylog_file:{keylog}"]
    out = subprocess.run(
        ["tshark", "-r", str(pcap), *decode, "-T", "fields", "-E", "separator=\t",
         "-E", "occurrence=a", "-E", f"aggregator={_AGGREGATOR}",
         *sum((["-e", f] for f in FIELDS), [])],
        capture_output=True, text=True, check=True).stdout
    found: dict[int, Stream] = {}
    times: dict[int, float] = {}  # frame number -> capture time
    for line in out.splitlines():
        cols = line.split("\t")
        row = dict(zip(FIELDS, cols + [""] * (len(FIELDS) - len(cols)), strict=True))
        if not row["tcp.stream"]:
            continue
        number = int(row["tcp.stream"])
        stream = found.setdefault(number, Stream(number))
        sport, dport = int(row["tcp.srcport"]), int(row["tcp.dstport"])
        src = row["ip.src"] or row["ipv6.src"]
        dst = row["ip.dst"] or row["ipv6.dst"]
        at = times[int(row["frame.number"])] = float(row["frame.time_epoch"])
        is_set = {k: row[k] in ("1", "True") for k in
                  ("tcp.flags.syn", "tcp.flags.ack", "tcp.flags.fin", "tcp.flags.reset")}
        if stream.client is None:
            to_server = dport in ports if (dport in ports) != (sport in ports) else \
                not (is_set["tcp.flags.syn"] and is_set["tcp.flags.ack"])
            if to_server:
                stream.client, stream.server = _endpoint(src, sport), _endpoint(dst, dport)
                stream.client_port, stream.server_port = sport, dport
            else:
                stream.client, stream.server = _endpoint(dst, dport), _endpoint(src, sport)
                stream.client_port, stream.server_port = dport, sport
        if is_set["tcp.flags.fin"] and stream.first_fin_port is None:
            stream.first_fin_port, stream.first_fin_at = sport, at
        if is_set["tcp.flags.reset"] and stream.first_rst_port is None:
            stream.first_rst_port, stream.first_rst_at = sport, at
        if row["tcp.analysis.keep_alive"]:
            stream.keepalive_probes += 1
        if row["http.request.method"]:
            # tshark shows a message in the frame that completes it; kalab dates it by its
            # first byte: the first segment tshark reassembled it from.
            segments = [int(n) for n in row["tcp.segment"].split(_AGGREGATOR) if n]
            if segments:
                at = times.get(min(segments), at)
            methods = row["http.request.method"].split(_AGGREGATOR)
            uris = row["http.request.uri"].split(_AGGREGATOR)
            stream.requests += [(at, m, u) for m, u in zip(methods, uris, strict=False)]
        if row["http.response.code"]:
            # An interim 1xx answers no request; 101 Switching Protocols does (RFC 9110
            # section 15.2.2), and is the connection's last HTTP/1.x response.
            codes = [int(c) for c in row["http.response.code"].split(_AGGREGATOR)
                     if c and (int(c) == 101 or not 100 <= int(c) < 200)]
            if len(codes) == 1:
                headers = [h for h in row["http.connection"].split(_AGGREGATOR) if h]
                stream.responses.append((codes[0], ", ".join(headers) or None,
                                         _keep_alive_max(row["http.response.line"])))
            else:
                stream.responses += [(code,) for code in codes]
    for number, completeness in _completeness(pcap).items():
        if number in found:
            found[number].completeness = completeness
    return found


UNKNOWN = "(unknown: cut by the capture)"


def _said(request: dict) -> tuple:
    """(status, Connection, Keep-Alive max=) of a kalab response, `UNKNOWN` where it says
    the capture cut it."""
    unknown = request.get("unknown") or ()
    return (request["status"],
            UNKNOWN if "response_connection" in unknown else request["response_connection"],
            UNKNOWN if "keep_alive_max" in unknown else request.get("keep_alive_max"))


def _keep_alive_max(lines: str) -> int | None:
    """``max=`` of the Keep-Alive header among a response's header lines."""
    for line in lines.split(_AGGREGATOR):
        name, _, value = line.partition(":")
        if name.strip().lower() == "keep-alive":
            found = re.search(r"(?:^|[\s,;])max\s*=\s*([0-9]+)", value, re.I)
            return int(found.group(1)) if found else None
    return None


def _completeness(pcap: Path) -> dict[int, int]:
    """tcp.stream -> its tcp.completeness. One pass shows each frame the value before it;
    two passes count every frame, the first too (its bits come on the second pass)."""
    out = subprocess.run(["tshark", "-2", "-r", str(pcap), "-T", "fields", "-e", "tcp.stream",
                          "-e", "tcp.completeness"], capture_output=True, text=True,
                         check=True).stdout
    found: dict[int, int] = {}
    for line in out.splitlines():
        stream, _, value = line.partition("\t")
        if stream and value:
            found[int(stream)] = found.get(int(stream), 0) | int(value)
    return found


def _side(stream: Stream, port: int | None) -> str | None:
    if port is None:
        return None
    return "client" if port == stream.client_port else "server"


def compare(report_run: dict, pcap: Path, port: int | Iterable[int],
            keylog: Path | None = None) -> list[str]:
    """Every disagreement between a report's engine run and tshark on its pcap (with
    ``keylog``: its HTTPS, as tshark decrypts it with that key log). A request kalab
    inferred from TLS records (``inferred``, no keys) is compared by its connection,
    depth and time only: its method, target and status are not known."""
    problems: list[str] = []
    seen = streams(pcap, port, keylog)
    connections = report_run["connections"]
    if len(seen) != len(connections):
        problems.append(f"connections: kalab {len(connections)}, tshark {len(seen)}")
    # Pair connections with streams by their endpoints, in order (a port can be reused).
    waiting: dict[tuple[str | None, str | None], list[Stream]] = {}
    for stream in sorted(seen.values(), key=lambda s: s.number):
        waiting.setdefault((stream.client, stream.server), []).append(stream)
    paired: dict[int, Stream] = {}
    for conn in connections:
        queue = waiting.get((conn["client"], conn["server"]))
        if not queue:
            problems.append(f"connection #{conn['id']} ({conn['client']} -> {conn['server']}): "
                            "tshark has no such stream")
            continue
        stream = paired[conn["id"]] = queue.pop(0)
        # The same two checks for the first FIN and the first RST: its sender, then its time.
        for flag, port, at, by_key, at_key in (
                ("FIN", stream.first_fin_port, stream.first_fin_at, "first_fin_by",
                 "first_fin_at"),
                ("RST", stream.first_rst_port, stream.first_rst_at, "rst_by", "rst_at")):
            tshark_by = _side(stream, port)
            if tshark_by != conn[by_key]:
                problems.append(f"#{conn['id']}: first {flag} by {conn[by_key]}, "
                                f"tshark says {tshark_by}")
            elif at is not None and abs(at - conn[at_key]) > TOLERANCE:
                problems.append(f"#{conn['id']}: first {flag} at {conn[at_key]}, "
                                f"tshark says {at}")
        if conn.get("completeness") != stream.completeness:
            problems.append(f"#{conn['id']}: completeness {conn.get('completeness')}, tshark "
                            f"says {stream.completeness}")
        if conn["keepalive_probes"] != stream.keepalive_probes:
            problems.append(f"#{conn['id']}: {conn['keepalive_probes']} keep-alive probe(s), "
                            f"tshark says {stream.keepalive_probes}")
    # Requests: each on the connection tshark has it on, at the depth of its order there.
    total = sum(len(s.requests) for s in seen.values())
    if total != len(report_run["requests"]):
        problems.append(f"requests: kalab {len(report_run['requests'])}, tshark {total}")
    by_connection: dict[int, list[dict]] = {}
    for request in report_run["requests"]:
        by_connection.setdefault(request["connection"], []).append(request)
    for conn_id, stream in paired.items():
        ours = sorted(by_connection.get(conn_id, []), key=lambda r: r["depth"])
        inferred = any(r.get("inferred") for r in ours)
        answered = [_said(r) for r in ours if r["status"] is not None]
        theirs = [said + answered[n][len(said):] if n < len(answered) else said
                  for n, said in enumerate(stream.responses)]  # a bare status: its own only
        # What kalab marks unknown (the capture cut it) is not compared: tshark shows the
        # fragment of a header line the cut left, kalab only whole lines.
        theirs = [tuple(UNKNOWN if n < len(answered) and answered[n][k] is UNKNOWN else value
                        for k, value in enumerate(said)) for n, said in enumerate(theirs)]
        if answered != theirs and not inferred:
            problems.append(f"#{conn_id}: responses (status, Connection, Keep-Alive max) "
                            f"{answered}, tshark {theirs}")
        if len(ours) != len(stream.requests):
            problems.append(f"#{conn_id}: kalab has {len(ours)} request(s) on it, tshark "
                            f"{len(stream.requests)}")
        for depth, (request, (at, method, uri)) in enumerate(
                zip(ours, stream.requests, strict=False), 1):
            if request.get("inferred"):
                method, uri = request["method"], request["target"]  # null: not known
            if (request["depth"], request["method"], request["target"]) != (depth, method, uri):
                problems.append(f"#{conn_id}: request {request['id']} is {request['method']} "
                                f"{request['target']} at depth {request['depth']}; tshark has "
                                f"{method} {uri} at depth {depth}")
            elif abs(request["sent_at"] - at) > TOLERANCE:
                problems.append(f"#{conn_id}: request {request['id']} sent at "
                                f"{request['sent_at']}, tshark says {at}")
    return problems
