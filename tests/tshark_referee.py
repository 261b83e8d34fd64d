"""What tshark says about a pcap: the referee for every fact the lab states."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

FIELDS = ["tcp.stream", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "tcp.flags.syn",
          "tcp.flags.ack", "tcp.flags.fin", "tcp.flags.reset", "frame.time_epoch",
          "http.request.method", "http.request.uri", "http.response.code"]


def available() -> bool:
    return shutil.which("tshark") is not None


@dataclass
class Stream:
    number: int
    client_port: int | None = None
    server_port: int | None = None
    first_fin_port: int | None = None  # the source port of the first FIN
    first_fin_at: float | None = None
    requests: list[tuple[float, str, str]] = field(default_factory=list)  # (time, method, uri)


def streams(pcap: Path, port: int) -> dict[int, Stream]:
    """tcp.stream number -> what tshark saw on it (HTTP decoded on ``port``)."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},http", "-T", "fields",
         "-E", "separator=\t", "-E", "occurrence=f", *sum((["-e", f] for f in FIELDS), [])],
        capture_output=True, text=True, check=True).stdout
    found: dict[int, Stream] = {}
    for line in out.splitlines():
        cols = line.split("\t")
        row = dict(zip(FIELDS, cols + [""] * (len(FIELDS) - len(cols)), strict=True))
        if not row["tcp.stream"]:
            continue
        stream = found.setdefault(int(row["tcp.stream"]), Stream(int(row["tcp.stream"])))
        sport, dport = int(row["tcp.srcport"]), int(row["tcp.dstport"])
        is_set = {k: row[k] in ("1", "True") for k in
                  ("tcp.flags.syn", "tcp.flags.ack", "tcp.flags.fin", "tcp.flags.reset")}
        if stream.client_port is None:
            stream.client_port, stream.server_port = (sport, dport) if dport == port \
                else (dport, sport)
        if is_set["tcp.flags.fin"] and stream.first_fin_port is None:
            stream.first_fin_port, stream.first_fin_at = sport, float(row["frame.time_epoch"])
        if row["http.request.method"]:
            stream.requests.append((float(row["frame.time_epoch"]), row["http.request.method"],
                                    row["http.request.uri"]))
    return found


def compare(report_run: dict, pcap: Path, port: int) -> list[str]:
    """Every disagreement between a report's engine run and tshark on its pcap."""
    problems: list[str] = []
    seen = streams(pcap, port)
    connections = report_run["connections"]
    if len(seen) != len(connections):
        problems.append(f"connections: kalab {len(connections)}, tshark {len(seen)}")
    by_port = {s.client_port: s for s in seen.values()}
    for conn in connections:
        cport = int(conn["client"].rsplit(":", 1)[1])
        stream = by_port.get(cport)
        if stream is None:
            problems.append(f"connection #{conn['id']}: tshark has no stream from port {cport}")
            continue
        if conn["first_fin_by"] is None:
            if stream.first_fin_port is not None:
                problems.append(f"#{conn['id']}: kalab saw no FIN, tshark did")
            continue
        tshark_by = "client" if stream.first_fin_port == cport else "server"
        if tshark_by != conn["first_fin_by"]:
            problems.append(f"#{conn['id']}: first FIN by {conn['first_fin_by']}, "
                            f"tshark says {tshark_by}")
        if abs(stream.first_fin_at - conn["first_fin_at"]) > 0.001:
            problems.append(f"#{conn['id']}: first FIN at {conn['first_fin_at']}, "
                            f"tshark says {stream.first_fin_at}")
    conn_port = {c["id"]: int(c["client"].rsplit(":", 1)[1]) for c in connections}
    tshark_requests = sorted((t, s.client_port, m, u) for s in seen.values()
                             for t, m, u in s.requests)
    kalab_requests = sorted((r["sent_at"], conn_port[r["connection"]], r["method"], r["target"])
                            for r in report_run["requests"])
    if len(tshark_requests) != len(kalab_requests):
        problems.append(f"requests: kalab {len(kalab_requests)}, tshark {len(tshark_requests)}")
    for ours, theirs in zip(kalab_requests, tshark_requests, strict=False):
        if ours[1:] != theirs[1:] or abs(ours[0] - theirs[0]) > 0.001:
            problems.append(f"request at {ours[0]}: kalab {ours[1:]}, tshark {theirs}")
    return problems
