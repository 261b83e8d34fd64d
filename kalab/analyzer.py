"""The analyzer: TCP segments in, connection and request records out.

Theory of operation
-------------------
This module is sans-IO, in the manner of h11: it is fed `Segment` values (one
decoded TCP segment each, with its capture time) through `Analyzer.feed` and
answers with `Connection` and `HttpRequest` records from `Analyzer.finish`.
It knows nothing of sockets, capture, pcap files, namespaces or Docker; the
pcap reader and the observer decode frames into segments and feed them here.

A connection is keyed by its four-tuple. Its life is a small state machine,
written as data in `TRANSITIONS`: a SYN opens it, the SYN-ACK establishes
it, the first FIN half-closes it (and says who closed first), the second FIN
closes it, a RST ends it from any state; a RST answering a bare SYN means
the port was closed (refused). A SYN on a four-tuple whose connection has
ended, or with another initial sequence number, starts a new connection;
the same SYN again is a retransmission.

Each direction's bytes are put back in sequence order (retransmissions and
overlaps trimmed, out-of-order segments held until the hole fills) and
handed to a small HTTP/1.x message parser. Requests go client to server,
responses come back in the same order (HTTP/1.1 has no other pairing, and
tshark 4.0 gets pipelined pairs wrong), so responses are matched to the
oldest unanswered request; a 1xx response answers nothing. Message bodies
are framed by Content-Length, chunked coding, or the close of the
connection, as RFC 9112 section 6 says.

Nothing is guessed: a connection whose SYN was not seen, or whose bytes
have a hole that never filled, is marked incomplete, and a run with an
incomplete connection cannot conclude.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kalab.report import Connection, HttpRequest

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
SEQ_MOD = 1 << 32


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment as seen on the wire."""

    ts: float  # capture time, Unix epoch seconds
    src: str
    sport: int
    dst: str
    dport: int
    flags: int  # the TCP flags byte
    seq: int
    ack: int = 0
    payload: bytes = b""


# Connection states and the events that move them: (state, event) -> state.
# Events name the sender: "syn", "synack", "fin_client", "fin_server",
# "rst_client", "rst_server". A pair not listed leaves the state unchanged.
TRANSITIONS: dict[tuple[str, str], str] = {
    ("syn_sent", "synack"): "established",
    ("syn_sent", "rst_server"): "refused",
    ("syn_sent", "rst_client"): "reset",
    ("established", "fin_client"): "closing_client_first",
    ("established", "fin_server"): "closing_server_first",
    ("closing_client_first", "fin_server"): "closed",
    ("closing_server_first", "fin_client"): "closed",
    ("established", "rst_client"): "reset",
    ("established", "rst_server"): "reset",
    ("closing_client_first", "rst_client"): "reset",
    ("closing_client_first", "rst_server"): "reset",
    ("closing_server_first", "rst_client"): "reset",
    ("closing_server_first", "rst_server"): "reset",
    # A connection seen mid-stream (no SYN) behaves as established.
    ("midstream", "fin_client"): "closing_client_first",
    ("midstream", "fin_server"): "closing_server_first",
    ("midstream", "rst_client"): "reset",
    ("midstream", "rst_server"): "reset",
}

_TIMEOUT = re.compile(rb"timeout\s*=\s*([0-9]+(?:\.[0-9]+)?)", re.I)
_MAX_HEAD = 64 * 1024


def _seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, as a signed number."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


@dataclass(slots=True)
class _Head:
    """A parsed request or response head."""

    first: list[str]
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None


class _MessageStream:
    """HTTP/1.x messages from one direction's in-order bytes.

    Calls ``on_head(head, started_at)`` when a head is complete; it answers
    how the body is framed; then ``on_end(ended_at)`` when the body is done.
    """

    def __init__(self, on_head, on_end) -> None:
        self.on_head, self.on_end = on_head, on_end
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        self.marks: list[tuple[int, float]] = []  # (stream offset, time) per delivered chunk
        self.mode = "head"  # head | fixed | chunk_size | chunk_data | trailer | until_close | dead
        self.remaining = 0
        self.last_ts = 0.0

    def time_at(self, offset: int) -> float:
        ts = self.marks[0][1]
        for mark_offset, mark_ts in self.marks:
            if mark_offset > offset:
                break
            ts = mark_ts
        return ts

    def feed(self, data: bytes, ts: float) -> None:
        if self.mode == "dead" or not data:
            return
        self.marks.append((self.base + len(self.buf), ts))
        self.buf += data
        self.last_ts = ts
        self._run()
        # Forget the times of chunks wholly consumed.
        while len(self.marks) > 1 and self.marks[1][0] <= self.base:
            self.marks.pop(0)

    def _consume(self, n: int) -> None:
        del self.buf[:n]
        self.base += n

    def _end(self, last_byte_offset: int) -> None:
        self.mode = "head"
        self.on_end(self.time_at(last_byte_offset))

    def _run(self) -> None:
        while self.buf:
            if self.mode == "head":
                # Tolerate the empty lines RFC 9112 section 2.2 lets a peer send between messages.
                while self.buf[:2] == b"\r\n":
                    self._consume(2)
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > _MAX_HEAD:
                        self.mode = "dead"
                    return
                started = self.time_at(self.base)
                head = _parse_head(bytes(self.buf[:end]))
                self._consume(end + 4)
                if head is None:
                    self.mode = "dead"
                    return
                framing, length = self.on_head(head, started)
                if framing == "none" or (framing == "fixed" and length == 0):
                    self.on_end(self.time_at(self.base - 1))
                elif framing == "fixed":
                    self.mode, self.remaining = "fixed", length
                elif framing == "chunked":
                    self.mode = "chunk_size"
                else:
                    self.mode = "until_close"
            elif self.mode == "fixed":
                n = min(self.remaining, len(self.buf))
                self._consume(n)
                self.remaining -= n
                if self.remaining == 0:
                    self._end(self.base - 1)
            elif self.mode == "chunk_size":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                size_text = bytes(self.buf[:end]).split(b";")[0].strip()
                self._consume(end + 2)
                try:
                    size = int(size_text, 16)
                except ValueError:
                    self.mode = "dead"
                    return
                if size == 0:
                    self.mode = "trailer"
                else:
                    self.mode, self.remaining = "chunk_data", size + 2  # data and its CRLF
            elif self.mode == "chunk_data":
                n = min(self.remaining, len(self.buf))
                self._consume(n)
                self.remaining -= n
                if self.remaining == 0:
                    self.mode = "chunk_size"
            elif self.mode == "trailer":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                self._consume(end + 2)
                if end == 0:
                    self._end(self.base - 1)
            elif self.mode == "until_close":
                self._consume(len(self.buf))
            else:
                return

    def close(self) -> None:
        """The sender's FIN: a body framed by the close ends here."""
        if self.mode == "until_close":
            self.mode = "head"
            self.on_end(self.last_ts)


def _parse_head(raw: bytes) -> _Head | None:
    lines = raw.split(b"\r\n")
    try:
        first = lines[0].decode("latin-1").split(" ", 2)
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    if len(first) < 2:
        return None
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        headers.append((name.strip().decode("latin-1").lower(),
                        value.strip().decode("latin-1")))
    return _Head(first, headers)


def _is_request_line(first: list[str]) -> bool:
    return len(first) == 3 and first[2].startswith("HTTP/") and first[0].isalpha()


def _is_status_line(first: list[str]) -> bool:
    return first[0].startswith("HTTP/") and len(first) >= 2 and first[1].isdigit()


@dataclass(slots=True)
class _Half:
    """One direction of a connection: sequence tracking for reassembly."""

    next_seq: int | None = None
    pending: dict[int, tuple[bytes, float]] = field(default_factory=dict)
    fin_at: float | None = None
    fin_seq: int | None = None  # sequence number of the FIN: every byte before it is data

    def short_of_fin(self) -> bool:
        """True while bytes before the FIN have not been seen (a hole before it)."""
        return (self.fin_seq is not None and self.next_seq is not None
                and _seq_diff(self.fin_seq, self.next_seq) > 0)


class _Conn:
    def __init__(self, number: int, client: tuple[str, int], server: tuple[str, int],
                 ts: float, syn_seq: int | None) -> None:
        self.number = number
        self.client, self.server = client, server
        self.first_ts = ts
        self.syn_at = ts if syn_seq is not None else None
        self.syn_isn = syn_seq
        self.syn_retransmits = 0
        self.state = "syn_sent" if syn_seq is not None else "midstream"
        self.established_at: float | None = None
        self.up, self.down = _Half(), _Half()  # client->server, server->client
        if syn_seq is not None:
            self.up.next_seq = (syn_seq + 1) % SEQ_MOD
        self.first_fin: tuple[str, float] | None = None
        self.second_fin_at: float | None = None
        self.rst: tuple[str, float] | None = None
        self.last_data_at: float | None = None
        self.last_data_before_end: float | None = None  # last payload before the first FIN/RST
        self.gaps = 0
        self.requests: list[HttpRequest] = []
        self.unanswered: list[HttpRequest] = []
        self.request_stream = _MessageStream(self._on_request_head, self._on_request_end)
        self.response_stream = _MessageStream(self._on_response_head, self._on_response_end)
        self.advertised: float | None = None

    # --- HTTP callbacks

    def _on_request_head(self, head: _Head, started: float) -> tuple[str, int]:
        if not _is_request_line(head.first):
            self.request_stream.mode = "dead"
            return "none", 0
        method, target, version = head.first
        request = HttpRequest(
            id="", connection=self.number, depth=len(self.requests) + 1,
            reused=bool(self.requests), method=method, target=target[:200],
            version=version, sent_at=started,
            request_connection=head.get("connection"))
        self.requests.append(request)
        self.unanswered.append(request)
        return _body_framing(head, is_response=False, method=method, status=0)

    def _on_request_end(self, ts: float) -> None:
        pass

    def _on_response_head(self, head: _Head, started: float) -> tuple[str, int]:
        if not _is_status_line(head.first):
            self.response_stream.mode = "dead"
            return "none", 0
        status = int(head.first[1])
        if 100 <= status < 200:
            return "none", 0  # an interim response answers no request
        request = self.unanswered[0] if self.unanswered else None
        if request is None:
            return _body_framing(head, True, "GET", status)
        request.response_at = started
        request.status = status
        request.response_version = head.first[0]
        request.response_connection = head.get("connection")
        keep_alive = head.get("keep-alive")
        request.response_keep_alive = keep_alive
        if keep_alive:
            match = _TIMEOUT.search(keep_alive.encode("latin-1"))
            if match:
                request.advertised_timeout = float(match.group(1))
                self.advertised = request.advertised_timeout
        return _body_framing(head, True, request.method, status)

    def _on_response_end(self, ts: float) -> None:
        if self.unanswered and self.unanswered[0].response_at is not None:
            self.unanswered.pop(0).response_end_at = ts

    # --- TCP

    def side(self, src: tuple[str, int]) -> str:
        return "client" if src == self.client else "server"

    def event(self, name: str) -> None:
        self.state = TRANSITIONS.get((self.state, name), self.state)

    def take(self, seg: Segment, side: str) -> None:
        half = self.up if side == "client" else self.down
        stream = self.request_stream if side == "client" else self.response_stream
        flags = seg.flags
        if flags & SYN:
            if side == "server" and flags & ACK:
                if self.established_at is None:
                    self.established_at = seg.ts
                half.next_seq = (seg.seq + 1) % SEQ_MOD
                self.event("synack")
            return
        if flags & RST:
            if self.rst is None:
                self.rst = (side, seg.ts)
            self.event(f"rst_{side}")
            return
        if seg.payload:
            if half.next_seq is None:
                half.next_seq = seg.seq  # joined mid-stream
            self._deliver(half, stream, seg.seq, seg.payload, seg.ts)
        if flags & FIN:
            if half.fin_at is None:
                half.fin_at = seg.ts
                half.fin_seq = (seg.seq + len(seg.payload)) % SEQ_MOD
                if self.first_fin is None:
                    self.first_fin = (side, seg.ts)
                elif self.second_fin_at is None:
                    self.second_fin_at = seg.ts
                self.event(f"fin_{side}")
                if not half.short_of_fin():
                    stream.close()  # else when the hole before the FIN fills (_accept)

    def _deliver(self, half: _Half, stream: _MessageStream, seq: int, data: bytes,
                 ts: float) -> None:
        offset = _seq_diff(seq, half.next_seq)
        if offset > 0:
            half.pending.setdefault(seq, (data, ts))  # a hole before it: hold until filled
            return
        if offset < 0:
            if len(data) <= -offset:
                return  # a retransmission of bytes already taken
            data = data[-offset:]
        self._accept(half, stream, data, ts)
        while half.pending:
            progressed = False
            for pseq in list(half.pending):
                poff = _seq_diff(pseq, half.next_seq)
                if poff > 0:
                    continue
                pdata, pts = half.pending.pop(pseq)
                if len(pdata) > -poff:
                    self._accept(half, stream, pdata[-poff:], pts)
                progressed = True
            if not progressed:
                break

    def _accept(self, half: _Half, stream: _MessageStream, data: bytes, ts: float) -> None:
        half.next_seq = (half.next_seq + len(data)) % SEQ_MOD
        self.last_data_at = ts if self.last_data_at is None else max(self.last_data_at, ts)
        ends = [end[1] for end in (self.first_fin, self.rst) if end]
        if not ends or ts <= min(ends):
            self.last_data_before_end = max(self.last_data_before_end or ts, ts)
        stream.feed(data, ts)
        if half.fin_at is not None and half.fin_seq == half.next_seq:
            stream.close()  # the data a FIN had overtaken has come: the sender's close

    # --- the record

    def record(self) -> Connection:
        self.gaps = sum(1 for h in (self.up, self.down) if h.pending or h.short_of_fin())
        ended_at = None
        first_fin_by = first_fin_at = None
        if self.first_fin:
            first_fin_by, first_fin_at = self.first_fin
        rst_by, rst_at = self.rst if self.rst else (None, None)
        if self.state == "refused":
            closed_by = "refused"
        elif self.first_fin and (not self.rst or self.first_fin[1] <= self.rst[1]):
            closed_by, ended_at = first_fin_by, first_fin_at
        elif self.rst:
            closed_by, ended_at = f"{rst_by}-reset", rst_at
        else:
            closed_by = "open"
        ends = [r.response_end_at or r.response_at for r in self.requests
                if r.response_at is not None]
        last_response_at = max(ends) if ends else None
        quiet_since = self.last_data_before_end or self.established_at
        idle = None
        if ended_at is not None and quiet_since is not None and closed_by != "refused":
            idle = round(ended_at - quiet_since, 6)
        return Connection(
            id=self.number,
            client=f"{_fmt(self.client)}",
            server=f"{_fmt(self.server)}",
            syn_at=self.syn_at,
            syn_retransmits=self.syn_retransmits,
            established_at=self.established_at,
            refused=self.state == "refused",
            requests=[r.id for r in self.requests],
            last_response_at=last_response_at,
            last_data_at=self.last_data_at,
            first_fin_by=first_fin_by,
            first_fin_at=first_fin_at,
            second_fin_at=self.second_fin_at,
            rst_by=rst_by,
            rst_at=rst_at,
            closed_by=closed_by,
            idle_before_close=idle,
            advertised_timeout=self.advertised,
            probe=not self.requests,
            enforced_minus_advertised=(round(idle - self.advertised, 6)
                                       if closed_by == "server" and idle is not None
                                       and self.advertised is not None else None),
            complete=self.syn_at is not None and self.gaps == 0,
            gaps=self.gaps,
        )


def _fmt(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _body_framing(head: _Head, is_response: bool, method: str, status: int) -> tuple[str, int]:
    """How the body that follows this head is delimited (RFC 9112 section 6.3)."""
    if is_response and (method == "HEAD" or status in (204, 304) or 100 <= status < 200):
        return "none", 0
    transfer = (head.get("transfer-encoding") or "").lower()
    if "chunked" in transfer:
        return "chunked", 0
    length = head.get("content-length")
    if length is not None:
        try:
            return "fixed", int(length.split(",")[0].strip())
        except ValueError:
            return ("until_close", 0) if is_response else ("none", 0)
    return ("until_close", 0) if is_response else ("none", 0)


class Analyzer:
    """Feed segments in capture order; `finish` returns the records.

    ``ports``: the server ports to follow; with none, every connection is
    followed and the SYN's receiver is taken as the server.
    """

    def __init__(self, ports: set[int] | frozenset[int] | None = None) -> None:
        self.ports = frozenset(ports or ())
        self._live: dict[tuple[str, int, str, int], _Conn] = {}
        self._all: list[_Conn] = []

    def feed(self, seg: Segment) -> None:
        if self.ports and seg.sport not in self.ports and seg.dport not in self.ports:
            return
        src, dst = (seg.src, seg.sport), (seg.dst, seg.dport)
        is_syn = seg.flags & SYN and not seg.flags & ACK
        conn = self._live.get((*src, *dst)) or self._live.get((*dst, *src))
        if is_syn:
            if conn is not None and conn.client == src and conn.syn_isn == seg.seq:
                conn.syn_retransmits += 1
            else:
                self._open(src, dst, seg.ts, seg.seq)  # a new connection, or its port reused
            return
        if conn is None:
            client, server = (dst, src) if self._is_server(src, dst) else (src, dst)
            conn = self._open(client, server, seg.ts, None)
        conn.take(seg, conn.side(src))

    def _is_server(self, a: tuple[str, int], b: tuple[str, int]) -> bool:
        if self.ports:
            return a[1] in self.ports
        return a[1] < b[1]

    def _open(self, client: tuple[str, int], server: tuple[str, int], ts: float,
              syn_seq: int | None) -> _Conn:
        conn = _Conn(len(self._all) + 1, client, server, ts, syn_seq)
        self._live[(*client, *server)] = conn
        self._all.append(conn)
        return conn

    def finish(self) -> tuple[list[Connection], list[HttpRequest]]:
        """The records: connections in order seen, requests in order sent (named w1, w2...)."""
        requests = sorted((r for c in self._all for r in c.requests),
                          key=lambda r: (r.sent_at, r.connection, r.depth))
        for number, request in enumerate(requests, 1):
            request.id = f"w{number}"
        return [c.record() for c in self._all], requests

    def server_ports(self) -> set[int]:
        """Ports that answered a SYN (with SYN-ACK or RST): the servers seen."""
        return {c.server[1] for c in self._all if c.established_at or c.state == "refused"}


def analyze(segments, ports: set[int] | None = None) -> tuple[list[Connection], list[HttpRequest]]:
    """Run segments through a fresh Analyzer."""
    analyzer = Analyzer(ports)
    for seg in segments:
        analyzer.feed(seg)
    return analyzer.finish()
