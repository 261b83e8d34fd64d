"""The analyzer: TCP segments in, connection and request records out.

Theory of operation
-------------------
This module is sans-IO, in the manner of h11: it is fed `Segment` values (one
decoded TCP segment each, with its capture time) through `Analyzer.feed`, or a
batch at a time through `Analyzer.feed_all`, and answers with `Connection` and
`HttpRequest` records: `Analyzer.finished` hands out those of the connections
that have become final (over, or quiet past a stated bound) and forgets them,
`Analyzer.finish` the rest at the end, and `assemble` numbers them all as the
report has them. Where the records go meanwhile is the caller's business
(`kalab.spool` writes them to disk).
It knows nothing of sockets, capture, pcap files, namespaces or Docker; the
pcap reader and the observer decode frames into segments and feed them here.

A connection is keyed by its four-tuple. Each of its two sides has a TCP
state (`Tcp`, in the words of Zeek's analyzer: inactive, SYN sent,
partial, established, closed by a FIN, reset), and every segment moves
them through one table, `TRANSITIONS` ((sender, sender's state, peer's
state, what it sent) -> both new states). The move that first takes a side
to CLOSED or RESET ends the connection: that side closed it, with a FIN or
a RST (`closed_by`, `closed_with`); a server's RST that ends it while the
client's SYN is unanswered refused it. A SYN on a four-tuple whose
connection has ended, or with another initial sequence number, starts a new
connection; the same SYN again is a retransmission.

TCP keep-alive probes (SO_KEEPALIVE) are counted and set aside before any
byte is delivered: a segment with no SYN, FIN or RST, no data or one byte,
whose sequence number is one behind what its sender sends next (the next
byte in order, or after the sender's FIN the FIN's own number), as tshark's
``tcp.analysis.keep_alive`` has it. A probe is not data: it moves no
``last_data_at`` and no idle time. Where the sender's sequence numbers are
not known yet (no SYN or data seen from it), nothing is a probe.

Each direction's bytes are put back in sequence order (retransmissions and
overlaps trimmed, out-of-order segments held until the hole fills) and
handed to a small HTTP/1.x message parser. Requests go client to server,
responses come back in the same order (HTTP/1.1 has no other pairing, and
tshark 4.0 gets pipelined pairs wrong), so responses are matched to the
oldest unanswered request; a 1xx response answers nothing. Message bodies
are framed by Content-Length, chunked coding, or the close of the
connection, as RFC 9112 section 6 says.

TLS. A connection whose client opens with a TLS handshake (`kalab.tls.looks_like_tls`
on its first bytes, the server having sent none) is HTTPS: each direction's in-order
bytes go through the connection's `kalab.tls.TlsConnection` (`_TlsSide`), given the
Analyzer's key log. Whatever application data it decrypts goes on to the same HTTP/1.x
parsers, with the capture times of the segments that carried it, so a decrypted
connection's requests are read exactly as plain HTTP's. Without its keys, its requests
are the exchanges inferred from its records (a burst of client records, then the
server's: `HttpRequest.inferred`), made when the records are finished. Either way its
idle time runs from its last application data (TLS's own records are data to TCP, not
to HTTP), and `Connection.tls` says what the records showed. A connection that does not
open with a ClientHello pays nothing for this: its first bytes are looked at once
(`_FirstBytes`), then go straight to the parsers.

Numbers from the wire are taken only within bounds, and their digits are
checked before int() or float() sees them (both accept signs, underscores,
"inf"; int() refuses more than 4,300 digits). Leading zeros aside:
a status code is exactly three digits (RFC 9112's 3DIGIT), else the line
is not a status line and the stream is not HTTP/1.x (no later response on
the connection is read); a Content-Length is at most 18 digits, else it
is unusable (a response then runs to the close, a request has no body);
a chunk-size is at most 16 hex digits, else the rest of the stream is
lost; a Keep-Alive ``timeout=`` is at most 10 digits before the point,
else the advertised timeout is null while the raw header is kept. Each is
checked where it is parsed: once per message, header block or chunk, not
per segment.

Nothing is guessed: a connection whose SYN was not seen, or whose bytes
have a hole that never filled, is marked incomplete, and a run with an
incomplete connection cannot conclude.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterable
from enum import StrEnum
from heapq import heapify, heappop, heappush
from operator import attrgetter
from typing import NamedTuple

from kalab.report import Closing, Connection, ConnState, HttpRequest, Side, Tls
from kalab.tls import (
    DECRYPT_FAILED,
    DECRYPT_ON,
    Alert,
    KeyLog,
    TlsConnection,
    looks_like_tls,
)

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
SEQ_MOD = 1 << 32
# Wireshark's tcp.completeness bits (epan/dissectors/packet-tcp.c): a conversation's SYN (its
# first segment a SYN without ACK), a SYN-ACK, an ACK without data or SYN, data with an ACK
# and no SYN, a FIN with an ACK, a RST.
COMPLETENESS_SYN, COMPLETENESS_SYN_ACK, COMPLETENESS_ACK = 0x01, 0x02, 0x04
COMPLETENESS_DATA, COMPLETENESS_FIN, COMPLETENESS_RST = 0x08, 0x10, 0x20


class Segment(NamedTuple):
    """One TCP segment as seen on the wire.

    A named tuple, not a frozen dataclass: the pcap reader makes one per packet,
    and a frozen dataclass takes four times as long to build.
    """

    ts: float  # capture time, Unix epoch seconds
    src: str
    sport: int
    dst: str
    dport: int
    flags: int  # the TCP flags byte
    seq: int
    ack: int = 0
    payload: bytes = b""
    # Bytes of payload that came after ``payload`` on the wire but not in the capture: the
    # frame was cut at the capture's snap length. Their place in the sequence is known,
    # their content is not.
    cut: int = 0


class Tcp(StrEnum):
    """One side's TCP state as the capture shows it, in the words of Zeek's TCP analyzer
    (its ``TCP_ENDPOINT_*`` states), from which Zeek's ``conn_state`` is read."""

    INACTIVE = "inactive"  # nothing seen from it yet
    SYN_SENT = "syn_sent"  # it sent a SYN
    SYN_ACK_SENT = "syn_ack_sent"  # the client sent a SYN-ACK (a SYN seen the wrong way)
    PARTIAL = "partial"  # seen mid-stream: its SYN was not seen
    ESTABLISHED = "established"  # its SYN was answered, or it answered one
    CLOSED = "closed"  # it sent a FIN
    RESET = "reset"  # it sent a RST


class Sent(StrEnum):
    """What a segment did, as the state machine sees it."""

    SYN = "syn"  # SYN without ACK
    SYN_ACK = "syn_ack"
    ACK = "ack"  # nothing but an ACK: no payload, no SYN, FIN or RST
    DATA = "data"  # payload, no SYN, FIN or RST (taken as ACKed, as it always is)
    FIN = "fin"
    RST = "rst"


_ANY = None  # in a rule: any state; as a new state: unchanged
_OPEN = (Tcp.INACTIVE, Tcp.SYN_SENT, Tcp.SYN_ACK_SENT, Tcp.PARTIAL, Tcp.ESTABLISHED)

# How one segment moves the two sides' states: (its sender, the sender's state, the peer's
# state, what it did) -> (the sender's new state, the peer's new state), first match, None
# as a state matching any and, as a new state, leaving it as it was. Zeek's analyzer,
# src/packet_analysis/protocol/tcp/TCPSessionAdapter.cc, as far as a capture shows it
# (but a peer's FIN-then-RST stays RESET where Zeek, on this side's FIN, calls it CLOSED).
# A segment with several of SYN, FIN and RST is each of them in that order, as in Zeek.
_RULES: tuple[tuple[Side | None, Tcp | tuple[Tcp, ...] | None, Tcp | None, Sent,
                    Tcp | None, Tcp | None], ...] = (
    (Side.CLIENT, Tcp.INACTIVE, _ANY, Sent.SYN, Tcp.SYN_SENT, _ANY),
    (Side.CLIENT, Tcp.INACTIVE, _ANY, Sent.SYN_ACK, Tcp.SYN_ACK_SENT, _ANY),
    (Side.SERVER, Tcp.INACTIVE, Tcp.SYN_SENT, Sent.SYN_ACK, Tcp.ESTABLISHED, Tcp.ESTABLISHED),
    (Side.SERVER, Tcp.INACTIVE, Tcp.SYN_SENT, Sent.SYN, Tcp.ESTABLISHED, Tcp.ESTABLISHED),
    (Side.SERVER, Tcp.INACTIVE, _ANY, Sent.SYN_ACK, Tcp.ESTABLISHED, _ANY),
    (Side.SERVER, Tcp.INACTIVE, _ANY, Sent.SYN, Tcp.ESTABLISHED, _ANY),
    # Some stacks ACK a SYN before they answer it: not yet a mid-stream side.
    (Side.SERVER, Tcp.INACTIVE, Tcp.SYN_SENT, Sent.ACK, _ANY, _ANY),
    # The peer's handshake was seen, this side's SYN was missed.
    (_ANY, Tcp.INACTIVE, Tcp.ESTABLISHED, Sent.ACK, Tcp.ESTABLISHED, _ANY),
    (_ANY, Tcp.INACTIVE, Tcp.ESTABLISHED, Sent.DATA, Tcp.ESTABLISHED, _ANY),
    (_ANY, Tcp.INACTIVE, _ANY, Sent.ACK, Tcp.PARTIAL, _ANY),
    (_ANY, Tcp.INACTIVE, _ANY, Sent.DATA, Tcp.PARTIAL, _ANY),
    (_ANY, Tcp.PARTIAL, Tcp.INACTIVE, Sent.SYN, Tcp.SYN_SENT, _ANY),
    (_ANY, _OPEN, _ANY, Sent.FIN, Tcp.CLOSED, _ANY),
    (_ANY, _OPEN, _ANY, Sent.RST, Tcp.RESET, _ANY),
    # A RST after both FINs ends nothing: the connection had already ended well.
    (_ANY, Tcp.CLOSED, Tcp.CLOSED, Sent.RST, _ANY, _ANY),
    (_ANY, Tcp.CLOSED, _ANY, Sent.RST, Tcp.RESET, _ANY),
)


def _transitions() -> dict[tuple[Side, Tcp, Tcp, Sent], tuple[Tcp, Tcp]]:
    """`_RULES` as a table with a row for every case that changes a state."""
    table = {}
    for side in Side:
        for mine in Tcp:
            for peer in Tcp:
                for sent in Sent:
                    for who, their, other, what, new_mine, new_peer in _RULES:
                        if who not in (_ANY, side) or what != sent or other not in (_ANY, peer) \
                                or not (their is _ANY or mine == their
                                        or (isinstance(their, tuple) and mine in their)):
                            continue
                        moved = (new_mine or mine, new_peer or peer)
                        if moved != (mine, peer):
                            table[(side, mine, peer, sent)] = moved
                        break
    return table


# (sender, sender's state, peer's state, what it sent) -> (sender's, peer's new states);
# a case not in it changes nothing. `_Conn.move` is the one place states change.
TRANSITIONS = _transitions()

_TIMEOUT = re.compile(rb"timeout\s*=\s*([^\s,;]*)", re.I)  # the parameter's value, whatever it is
_SECONDS = re.compile(rb"([0-9]+)(?:\.[0-9]+)?")
_MAX = re.compile(rb"(?:^|[\s,;])max\s*=\s*([^\s,;]*)", re.I)
# Numbers from the wire, leading zeros aside (see "Numbers from the wire" above).
_MAX_TIMEOUT_DIGITS = 10  # before the point: up to 317 years; 400 digits would make inf
_MAX_LENGTH_DIGITS = 18  # a Content-Length below 10^18 bytes: int() is cheap, no body is longer
_MAX_CHUNK_DIGITS = 16  # a chunk-size of 64 bits
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,%d}" % _MAX_CHUNK_DIGITS)
_MAX_HEAD = 64 * 1024
_HEAD_CUT, _LINE_CUT = 1, 2  # a head cut after its first line, or inside it
_MAX_HISTORY = 100  # letters of Zeek's history kept: RSTs at ever new numbers must not grow it
_MAX_PENDING = 16 * 1024 * 1024  # bytes held behind a hole, per direction
# Segments held behind a hole, per direction: the bytes' bound alone would let segments
# the capture cut to nothing, or of one byte, pile up by the million.
_MAX_PENDING_SEGMENTS = 1 << 16
# Where a stream cut by the capture finds its feet again: a segment that starts with a
# whole request line, or a status line (RFC 9112 sections 3 and 4). A request line's
# method must be a known one (RFC 9110's, PATCH and WebDAV's, as Zeek's http_methods):
# the tail of a line cut elsewhere ("T /x HTTP/1.1") is a syntactically good one.
_REQUEST_LINE = re.compile(rb"(?:GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH|PROPFIND"
                           rb"|PROPPATCH|MKCOL|COPY|MOVE|LOCK|UNLOCK|SEARCH|REPORT) "
                           rb"[^ \r\n]+ HTTP/[0-9]\.[0-9]\r\n")
_STATUS_LINE = re.compile(rb"HTTP/[0-9]\.[0-9] [0-9]{3}[ \r]")
_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE",
            b"PATCH", b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK",
            b"SEARCH", b"REPORT")
# The first bytes of a request line or a status line cut before `_REQUEST_LINE` or
# `_STATUS_LINE` can tell: a method and a space, or the start of one; "HTTP/", or its start.
_STARTS = {pattern: tuple(m + b" " for m in _METHODS) if pattern is _REQUEST_LINE
           else (b"HTTP/",) for pattern in (_REQUEST_LINE, _STATUS_LINE)}


def _could_start(data: bytes, pattern: re.Pattern) -> bool:
    """Whether ``data``, the kept bytes of a segment, could begin a message that
    ``pattern`` would know had the capture kept more of it."""
    return any(data.startswith(start) or start.startswith(data) for start in _STARTS[pattern])


# A request's fields from its header block, unknown when the capture cut the block.
_REQUEST_HEAD = ("request_connection", "request_body_len")
# A response's fields from its header block, unknown when the capture cut the block.
_RESPONSE_HEADERS = ("response_connection", "response_keep_alive", "advertised_timeout",
                     "keep_alive_max")
# A response's fields, unknown when it cannot be told which response answered the request.
_RESPONSE_FIELDS = ("response_at", "response_end_at", "status", "response_version",
                    *_RESPONSE_HEADERS, "response_body_len")


def _seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, as a signed number."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


class _Headers:
    """A header block parsed once, with what the analyzer asks of it worked out once:
    a client or server repeats its block from message to message (only the request
    line, a Date or a length changes), so most messages find theirs already here."""

    __slots__ = ("connection", "keep_alive", "said_timeout", "timeout", "max", "framing")

    def __init__(self, block: bytes) -> None:
        parsed = _parse_headers(block)  # by lower-case name, repeated ones joined by ``, ``
        self.connection = parsed.get("connection")
        self.keep_alive = parsed.get("keep-alive")
        # said_timeout: Keep-Alive has a timeout= parameter; timeout: its seconds, None
        # when they are not a number within bounds.
        self.said_timeout, self.timeout = _timeout(self.keep_alive) if self.keep_alive \
            else (False, None)
        self.max = _keep_alive_max(self.keep_alive) if self.keep_alive else None
        self.framing = _header_framing(parsed)  # None: no usable length, the default applies


class _MessageStream:
    """HTTP/1.x messages from one direction's in-order bytes.

    Calls ``on_head(first_line_words, headers, started_at)`` when a head is
    complete; it answers how the body is framed; then ``on_end(ended_at,
    body_length)`` when the body is done. Bytes are kept only while a message
    part is incomplete: a segment that holds whole messages is parsed where it
    lies.

    Bytes the capture cut (`skip`) keep their place in the stream: a body whose
    length is known runs on through them. Where they hide what the parser needs
    (the rest of a head, a chunk-size line, where the next message starts) the
    stream is lost: ``on_cut(head_seen)`` says whether the message cut had shown
    its first line (``on_head`` then had the header lines kept, with
    ``partial`` set), and the stream finds its feet again at the next segment
    that starts with a first line (``start``), with ``resynced`` set for that
    message's ``on_head`` (which clears it when it has judged the message).
    """

    __slots__ = ("on_head", "on_end", "on_cut", "start", "buf", "base", "marks", "mode",
                 "remaining", "last_ts", "body", "body_at", "partial", "resynced")

    def __init__(self, on_head, on_end, on_cut=None, start: re.Pattern | None = None) -> None:
        self.on_head, self.on_end, self.on_cut, self.start = on_head, on_end, on_cut, start
        self.buf = b""  # bytes not yet consumed (an incomplete head or chunk line)
        self.base = 0  # stream offset of buf[0]
        self.marks: list[tuple[int, float]] = []  # (stream offset, time) per chunk still held
        # head | fixed | chunk_size | chunk_data | trailer | until_close | lost | dead
        self.mode = "head"
        self.remaining = 0
        self.last_ts = 0.0
        self.body = 0  # the current message's body length so far (chunked: its chunks)
        self.body_at = 0  # where a body framed by the close began
        self.partial = 0  # the head being handed on was cut: _HEAD_CUT, or _LINE_CUT
        self.resynced = False  # the head being handed on was found again after a loss

    def time_at(self, offset: int) -> float:
        marks = self.marks
        ts = marks[0][1]
        for mark_offset, mark_ts in marks:
            if mark_offset > offset:
                break
            ts = mark_ts
        return ts

    def feed(self, data: bytes, ts: float) -> None:
        mode = self.mode
        if mode == "dead" or not data:
            return
        self.last_ts = ts
        if mode == "lost":
            # A segment's first bytes: a message starts here, or the loss goes on; or they
            # could be the start of one the capture cut too short to read.
            self.base += len(data)
            if self.start is None:
                return
            if self.start.match(data) is None:
                if _could_start(data, self.start):
                    self.on_cut(False)
                return
            self.base -= len(data)
            self.mode, self.resynced = "head", True
        if self.buf:
            held = len(self.buf)
            self.marks.append((self.base + held, ts))
            work = self.buf + data
            used = self._run(work, held, None)
        elif mode == "until_close" or (mode == "fixed" and len(data) < self.remaining):
            # The middle of a body: nothing to parse, no time to remember.
            if mode == "fixed":
                self.remaining -= len(data)
            self.base += len(data)
            return
        else:
            # The usual case: nothing held, so every byte parsed came at ``ts``.
            work = data
            used = self._run(data, 0, ts)
            if used < len(data):
                self.marks = [(self.base, ts)]
        self.base += used
        if used < len(work):
            self.buf = work[used:]
            # Forget the times of chunks wholly consumed.
            marks = self.marks
            while len(marks) > 1 and marks[1][0] <= self.base:
                marks.pop(0)
        else:
            self.buf = b""

    def skip(self, n: int) -> None:
        """``n`` bytes the capture cut from the end of the segment just fed: their place in
        the stream is known, their content is not."""
        mode = self.mode
        if mode in ("dead", "lost", "until_close"):
            self.base += n
            return
        if mode in ("fixed", "chunk_data") and not self.buf and n <= self.remaining:
            self.remaining -= n
            self.base += n
            if self.remaining == 0:  # the body (or chunk) ends exactly where the cut does
                if mode == "fixed":
                    self.mode = "head"
                    self.on_end(self.last_ts, self.body)
                else:
                    self.mode = "chunk_size"
            return
        if mode == "fixed" and not self.buf:
            # The body ends inside the cut: its end is known; the next message's start is not.
            self.on_end(self.last_ts, self.body)
            self.mode = "head"
        self._lose()
        self.base += n

    def _lose(self) -> None:
        """The rest of what is being parsed, and where the next message starts, were cut."""
        buf, on_cut = self.buf, self.on_cut
        if self.mode != "head":
            on_cut(True)  # inside a message: its head was seen, its end was not
        elif not buf:
            on_cut(False)  # a message starts in the cut: not even its first line was kept
        else:
            # A head cut short: its first line (perhaps itself cut) and the header lines
            # kept whole. The callback answers None when the words kept say too little.
            line_end = buf.find(b"\r\n")
            first = (buf[:line_end] if line_end >= 0 else buf).decode("latin-1").split(" ", 2)
            last = buf.rfind(b"\r\n")
            block = buf[line_end + 2:last] if last > line_end >= 0 else b""
            headers = _HEADER_BLOCKS.get(block) or _header_block(block)
            self.partial = _HEAD_CUT if line_end >= 0 else _LINE_CUT
            read = self.on_head(first, headers, self.time_at(self.base)) \
                if len(first) >= 2 else None
            self.partial = 0
            if self.mode == "dead":
                self.buf, self.marks = b"", []
                return
            on_cut(read is not None)
        self.base += len(buf)
        self.buf, self.marks, self.mode = b"", [], "lost"

    def _run(self, buf: bytes, searched: int, only: float | None) -> int:
        """Parse ``buf`` (stream offset ``self.base``); returns how many bytes it used.
        ``searched``: bytes at its start already searched for a line end in vain;
        ``only``: the time of every byte, when they all came in one segment."""
        i, n = 0, len(buf)
        base = self.base
        while i < n:
            mode = self.mode
            if mode == "head":
                # Tolerate the empty lines RFC 9112 section 2.2 lets a peer send between messages.
                if buf[i] == 13:
                    while buf.startswith(b"\r\n", i):
                        i += 2
                start = searched - 3
                end = buf.find(b"\r\n\r\n", start if start > i else i)
                if end < 0:
                    if n - i > _MAX_HEAD:
                        self.mode = "dead"
                        return n
                    return i
                started = self.time_at(base + i) if only is None else only
                # The head: its first line's words, and its header block parsed once.
                cut = buf.find(b"\r\n", i, end)
                if cut < 0:
                    first, block = buf[i:end].decode("latin-1").split(" ", 2), b""
                else:
                    first, block = buf[i:cut].decode("latin-1").split(" ", 2), buf[cut + 2:end]
                i = end + 4
                if len(first) < 2:
                    self.mode = "dead"
                    return n
                headers = _HEADER_BLOCKS.get(block)
                if headers is None:
                    headers = _header_block(block)
                framing, length = self.on_head(first, headers, started)
                if self.mode == "dead":
                    return n  # the first line said this is not HTTP/1.x
                if framing == "none" or (framing == "fixed" and length == 0):
                    self.on_end(self.time_at(base + i - 1) if only is None else only, 0)
                elif framing == "fixed":
                    self.mode, self.remaining, self.body = "fixed", length, length
                elif framing == "chunked":
                    self.mode, self.body = "chunk_size", 0
                else:
                    self.mode, self.body_at = "until_close", base + i
            elif mode == "fixed" or mode == "chunk_data":
                take = self.remaining
                if take > n - i:
                    take = n - i
                i += take
                self.remaining -= take
                if self.remaining == 0:
                    if mode == "fixed":
                        self.mode = "head"
                        self.on_end(self.time_at(base + i - 1) if only is None else only,
                                    self.body)
                    else:
                        self.mode = "chunk_size"
            elif mode == "chunk_size" or mode == "trailer":
                start = searched - 1
                end = buf.find(b"\r\n", start if start > i else i)
                if end < 0:
                    if n - i > _MAX_HEAD:
                        self.mode = "dead"
                        return n
                    return i
                line, i = buf[i:end], end + 2
                if mode == "trailer":
                    if not line:
                        self.mode = "head"
                        self.on_end(self.time_at(base + i - 1) if only is None else only,
                                    self.body)
                    continue
                # chunk-size = 1*HEXDIG, then extensions after ";" (RFC 9112 section 7.1).
                # int(x, 16) alone would take "-a" (the parser would step back), "0x5", "+5".
                field = line.split(b";", 1)[0].strip()
                if len(field) > _MAX_CHUNK_DIGITS:
                    field = field.lstrip(b"0") or b"0"
                if _CHUNK_SIZE.fullmatch(field) is None:
                    self.mode = "dead"  # no usable size: where the next message starts is lost
                    return n
                size = int(field, 16)
                if size == 0:
                    self.mode = "trailer"
                else:
                    self.mode, self.remaining = "chunk_data", size + 2  # data and its CRLF
                    self.body += size
            elif mode == "until_close":
                return n
            else:
                return n
            searched = 0
        return i

    def close(self) -> None:
        """The sender's FIN: a body framed by the close ends here."""
        if self.mode == "until_close":
            self.mode = "head"
            self.on_end(self.last_ts, self.base - self.body_at)


# The parsers of a connection that has ended: both FINs seen and every byte in. Only
# retransmissions can follow, and those are trimmed before they reach it.
_ENDED = _MessageStream(None, None)
_ENDED.mode = "dead"

_WHITESPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips


_TLS_HANDSHAKE = 22  # a TLS record's first byte when it holds a handshake (a ClientHello)
_TLS_SNIFF = 6  # bytes `looks_like_tls` needs to judge a record header and its message type
_HTTP_ALPN = (None, "http/1.1", "http/1.0")  # what the HTTP/1.x parser may read


class _FirstBytes:
    """A connection's first client bytes, until they tell a TLS handshake from anything
    else: then they, and every later byte of both directions, go where they told
    (`_Conn.request_stream` and `response_stream` are set, so this object stands in the
    way only of calls already under way). Plain HTTP goes straight to the parsers;
    TLS through a `_TlsSide` each way. It is TLS only if the server has sent nothing
    before: a client that speaks first opens TLS."""

    __slots__ = ("conn", "keylog", "held", "to")

    def __init__(self, conn: _Conn, keylog: KeyLog | None) -> None:
        self.conn, self.keylog = conn, keylog
        self.held: list[tuple[bytes, float]] = []  # bytes too few to tell yet
        self.to: _MessageStream | _TlsSide | None = None

    def feed(self, data: bytes, ts: float) -> None:
        to = self.to
        if to is not None:
            to.feed(data, ts)
            return
        if not data:
            return
        held = self.held
        held.append((data, ts))
        first = data if len(held) == 1 else b"".join(chunk for chunk, _ in held)
        if len(first) < _TLS_SNIFF and first[0] == _TLS_HANDSHAKE:
            return  # a TLS record header perhaps: wait for the bytes that tell
        self._decide(first)

    def _decide(self, first: bytes) -> _MessageStream | _TlsSide:
        conn = self.conn
        responses = conn.response_parser
        if looks_like_tls(first) and responses.base == 0 and not responses.buf:
            conn.tls = TlsConnection(self.keylog)
            to = conn.request_stream = _TlsSide(conn, "client", conn.request_parser)
            conn.response_stream = _TlsSide(conn, "server", responses)
        else:
            to = conn.request_stream = conn.request_parser
        self.to = to
        held, self.held = self.held, []
        for data, ts in held:
            to.feed(data, ts)
        return to

    def skip(self, n: int) -> None:
        to = self.to or self._decide(b"".join(chunk for chunk, _ in self.held))
        to.skip(n)

    def close(self) -> None:
        to = self.to or self._decide(b"".join(chunk for chunk, _ in self.held))
        to.close()


class _TlsSide:
    """One direction of a TLS connection: its bytes through the connection's
    `TlsConnection`, the application data it decrypts on to that direction's HTTP/1.x
    parser (as plain HTTP's bytes go), when the protocol chosen is HTTP/1.x. Keeps
    `_Conn.app_data_before_end`, where the idle time starts. Bytes the capture cut
    (`skip`) end the reading of TLS records in this direction: a record cut is lost."""

    __slots__ = ("conn", "side", "http", "direction", "cut")

    def __init__(self, conn: _Conn, side: str, http: _MessageStream) -> None:
        self.conn, self.side, self.http = conn, side, http
        tls = conn.tls
        self.direction = tls.client if side == "client" else tls.server
        self.cut = False

    def feed(self, data: bytes, ts: float) -> None:
        if self.cut:
            return
        conn = self.conn
        tls = conn.tls
        plain = tls.feed(self.side, data, ts)
        if plain and tls.alpn in _HTTP_ALPN:
            http = self.http
            for chunk, at in plain:
                http.feed(chunk, at)
        at = self.direction.last_app_data_at
        if at is not None and (conn.end_at is None or at <= conn.end_at):
            before = conn.app_data_before_end
            if before is None or at > before:
                conn.app_data_before_end = at

    def skip(self, n: int) -> None:
        self.cut = self.conn.tls_cut = True

    def close(self) -> None:
        self.http.close()


def _alert(alert: Alert) -> str:
    """A TLS alert as `Tls.alerts` says it."""
    if alert.description is None:
        return f"{alert.side} encrypted"
    level = {1: "warning", 2: "fatal"}.get(alert.level, f"level_{alert.level}")
    return f"{alert.side} {level} {alert.name}"


def _http_read(tls: TlsConnection) -> bool:
    """Whether a TLS connection's requests were read (decrypted HTTP/1.x), not inferred."""
    return tls.decryption in (DECRYPT_ON, DECRYPT_FAILED) and tls.alpn in _HTTP_ALPN


def _header_block(block: bytes) -> _Headers:
    """A header block not met before, parsed and remembered."""
    headers = _Headers(block)
    if len(_HEADER_BLOCKS) >= _HEADER_BLOCKS_MAX:
        _HEADER_BLOCKS.clear()
    _HEADER_BLOCKS[block] = headers
    return headers


_HEADER_BLOCKS: dict[bytes, _Headers] = {}  # never mutated once parsed
_HEADER_BLOCKS_MAX = 4096


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not block:
        return headers
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip(_WHITESPACE).lower()
        value = value.strip(_WHITESPACE)
        seen = headers.get(name)
        headers[name] = value if seen is None else f"{seen}, {value}"
    return headers


class _Half:
    """One direction of a connection: sequence tracking for reassembly."""

    __slots__ = ("next_seq", "start", "far", "pending", "pending_bytes", "lost", "fin_at",
                 "fin_seq", "data_said", "said", "last_syn", "last_fin", "last_rst",
                 "retransmits", "next_t", "taken", "held_order")

    def __init__(self, next_seq: int | None = None) -> None:
        self.next_seq = next_seq  # the sequence number of the next byte in order
        self.start = next_seq  # the sequence number of its first byte of data
        # One past the furthest sequence number seen from it out of order (a segment held,
        # its FIN, a pure ACK ahead): with next_seq, Zeek's "last_seq".
        self.far: int | None = None
        # By seq: bytes after a hole; a FIN that came before its data holds an empty entry
        # at its own place, so that the data, when it comes, takes the slow way in.
        self.pending: dict[int, tuple[bytes, float, int]] = {}  # (data, time, bytes cut)
        self.pending_bytes = 0
        # The held segments in the order they start: a heap of (their place in the stream,
        # their seq), where a place is `taken` plus how far ahead of `next_seq` it was when
        # held. So the one to take next is found at once, however many wait: walking them
        # all for each segment taken made 40,000 one-byte segments in reverse a hang.
        self.taken = 0  # bytes taken in order (with those cut): how far `next_seq` moved
        self.held_order: list[tuple[int, int]] = []
        self.lost = False  # more bytes waited behind a hole than _MAX_PENDING: some were let go
        self.fin_at: float | None = None
        self.fin_seq: int | None = None  # sequence number of the FIN: every byte before it is data
        # Zeek's history, this side's share: its data seen (with the ACK flag, as
        # Wireshark's completeness wants it), the once-only letters said, the sequence
        # numbers of its last SYN, FIN and RST, and its retransmissions (a "T" at the
        # 1st, 10th, 100th...).
        self.data_said = False
        self.said = ""
        self.last_syn: int | None = None
        self.last_fin: int | None = None
        self.last_rst: int | None = None
        self.retransmits = 0
        self.next_t = 1

    def hold(self, seq: int, entry: tuple[bytes, float, int]) -> None:
        """A segment (or a FIN's empty place) after a hole, held until the hole fills."""
        assert self.next_seq is not None, "held only once its numbers are known"
        self.pending[seq] = entry
        self.pending_bytes += len(entry[0])
        heappush(self.held_order, (self.taken + _seq_diff(seq, self.next_seq), seq))

    def first_held(self) -> int:
        """The seq of the held segment that starts first (there is one)."""
        order = self.held_order
        while order[0][1] not in self.pending:  # taken already, or ordered afresh
            heappop(order)
        return order[0][1]

    def renumbered(self) -> None:
        """`next_seq` was set anew (a SYN-ACK again): the held segments, ordered from it."""
        if self.pending and self.next_seq is not None:
            self.held_order = [(self.taken + _seq_diff(seq, self.next_seq), seq)
                               for seq in self.pending]
            heapify(self.held_order)

    def probe_seq(self) -> int | None:
        """The sequence number a keep-alive probe from this side carries: one behind the next
        it sends (after its FIN, which takes a number of its own, the FIN's); None while
        this side's numbers are not known."""
        if self.fin_seq is not None:
            return self.fin_seq
        return None if self.next_seq is None else (self.next_seq - 1) % SEQ_MOD

    def furthest(self) -> int | None:
        """One past the furthest sequence number this side has sent (its SYN and FIN taking
        one each): where Zeek counts a segment that ends no further a retransmission."""
        near, far = self.next_seq, self.far
        if near is None or (far is not None and _seq_diff(far, near) > 0):
            return far
        return near

    def reach(self, end: int) -> None:
        """This side's sequence numbers reached ``end`` (out of order, or without data)."""
        far = self.furthest()
        if far is None or _seq_diff(end, far) > 0:
            self.far = end % SEQ_MOD

    def sent_bytes(self) -> int:
        """Bytes of data this side sent, from its sequence numbers (Zeek's endpoint size):
        from its first byte to the furthest it reached, less its FIN."""
        start, far = self.start, self.furthest()
        if start is None or far is None:
            return 0
        sent = _seq_diff(far, start) - (1 if self.fin_seq is not None else 0)
        return sent if sent > 0 else 0

    def short_of_fin(self) -> bool:
        """True while bytes before the FIN have not been seen (a hole before it)."""
        fin_seq, next_seq = self.fin_seq, self.next_seq
        return (fin_seq != next_seq and fin_seq is not None and next_seq is not None
                and _seq_diff(fin_seq, next_seq) > 0)


class _Conn:
    __slots__ = ("number", "client", "server", "first_seen_at", "syn_at", "syn_isn",
                 "syn_retransmits",
                 "client_state", "server_state", "closed",
                 "established_at", "up", "down", "first_fin", "second_fin_at", "rst",
                 "last_data_at", "last_data_before_end", "end_at", "requests", "unanswered",
                 "request_stream", "response_stream", "request_parser", "response_parser",
                 "tls", "tls_cut", "app_data_before_end", "keepalive_probes",
                 "history", "completeness", "truncated", "unpaired_from", "responses_lost",
                 "requests_lost_from", "last_seen_at", "quiet_mark", "final")

    def __init__(self, number: int, client: tuple[str, int], server: tuple[str, int],
                 ts: float, syn_seq: int | None, keylog: KeyLog | None = None) -> None:
        self.number = number
        self.client, self.server = client, server
        self.first_seen_at = ts
        # Its latest segment; the `last_seen_at` a look found quiet past its bound (a second
        # look makes it final); its record handed out (`Analyzer`).
        self.last_seen_at = ts
        self.quiet_mark: float | None = None
        self.final = False
        self.syn_at = ts if syn_seq is not None else None
        self.syn_isn = syn_seq
        self.syn_retransmits = 0
        # Each side's TCP state: only `move` changes them, through `TRANSITIONS`.
        self.client_state = Tcp.SYN_SENT if syn_seq is not None else Tcp.INACTIVE
        self.server_state = Tcp.INACTIVE
        # The move that ended it: its sender, FIN or RST, when, and the peer's state then.
        self.closed: tuple[Side, Closing, float, Tcp] | None = None
        self.established_at: float | None = None
        # client->server, server->client
        self.up = _Half(None if syn_seq is None else (syn_seq + 1) % SEQ_MOD)
        self.down = _Half()
        self.first_fin: tuple[Side, float] | None = None
        self.second_fin_at: float | None = None
        self.rst: tuple[Side, float] | None = None
        self.last_data_at: float | None = None
        self.last_data_before_end: float | None = None  # last payload before the first FIN/RST
        self.end_at: float | None = None  # the first FIN or RST, whichever came first
        self.requests: list[HttpRequest] = []
        self.unanswered: list[HttpRequest] = []
        # The HTTP parsers of each direction, and where each direction's bytes go: to the
        # parser, or for TLS through `_TlsSide` to it; the client's first bytes decide
        # (`_FirstBytes`).
        self.request_parser = _MessageStream(self._on_request_head, self._on_request_end,
                                             self._on_request_cut, _REQUEST_LINE)
        self.response_parser = _MessageStream(self._on_response_head, self._on_response_end,
                                              self._on_response_cut, _STATUS_LINE)
        self.request_stream: _MessageStream | _FirstBytes | _TlsSide = _FirstBytes(self, keylog)
        self.response_stream: _MessageStream | _TlsSide = self.response_parser
        self.tls: TlsConnection | None = None  # its TLS, once its first bytes opened it
        self.tls_cut = False  # the capture cut its TLS records: those after are not read
        self.app_data_before_end: float | None = None  # TLS: its last application data
        self.keepalive_probes = 0
        self.truncated = 0  # its segments the capture cut at the snap length
        # From this request on, responses cannot be told apart by order: a message the
        # capture cut away whole stands somewhere between them. None: all paired.
        self.unpaired_from: int | None = None
        # The response stream is lost in bytes the capture cut: a request still waiting may
        # have had its answer there.
        self.responses_lost = False
        # Requests from this index on may have had another hidden among them in a cut.
        self.requests_lost_from: int | None = None
        # Zeek's history letters in the order they came; Wireshark's completeness bits.
        self.history = "S" if syn_seq is not None else ""
        self.completeness = COMPLETENESS_SYN if syn_seq is not None else 0
        if syn_seq is not None:
            self.up.last_syn = syn_seq

    # --- HTTP callbacks

    def _on_request_head(self, first: list[str], headers: _Headers,
                         started: float) -> tuple[str, int] | None:
        partial = self.request_parser.partial
        if partial == _LINE_CUT:  # the method and the target as far as the capture kept it
            if not first[0].isalpha():
                return None
            first = [first[0], first[1], ""]
        elif len(first) != 3 or not first[2].startswith("HTTP/") or not first[0].isalpha():
            self.request_parser.mode = "dead"  # not a request line: not HTTP/1.x
            return _NO_BODY
        method, target, version = first
        requests = self.requests
        request = HttpRequest(id="", connection=self.number, depth=len(requests) + 1,
                              reused=bool(requests), method=method, target=target[:200],
                              version=version or None, sent_at=started,
                              request_connection=headers.connection)
        requests.append(request)
        self.unanswered.append(request)
        if partial:
            request.unknown = ["target", "version", *_REQUEST_HEAD] if partial == _LINE_CUT \
                else [*_REQUEST_HEAD]
        return headers.framing or _NO_BODY  # a request without a length has no body

    def _on_request_end(self, ts: float, body: int) -> None:
        self.requests[-1].request_body_len = body

    def _on_request_cut(self, head_seen: bool) -> None:
        if not head_seen:  # a request the capture cut away whole: its response is not ours
            self._unpair()
        else:
            _unknown(self.requests[-1], ("request_body_len",))
            # Past here, until the stream is found again, another request may hide in the
            # cut (pipelined in the same segment): the responses will tell.
            if self.requests_lost_from is None:
                self.requests_lost_from = len(self.requests)

    def infer_requests(self) -> None:
        """A TLS connection whose requests could not be read: its requests and responses
        as its records show them (`kalab.tls.InferredExchange`), marked inferred."""
        tls = self.tls
        if tls is None or _http_read(tls):
            return
        self.requests, self.unanswered = [], []
        for depth, exchange in enumerate(tls.exchanges, 1):
            request = HttpRequest(id="", connection=self.number, depth=depth,
                                  reused=depth > 1, method=None, target=None, version=None,
                                  sent_at=exchange.request_at)
            request.response_at = exchange.response_at
            request.response_end_at = exchange.response_end_at
            request.inferred = True
            self.requests.append(request)

    def tls_record(self) -> Tls | None:
        """Its TLS as the report has it; None for plain text."""
        tls = self.tls
        if tls is None:
            return None
        notes = list(tls.notes)
        if self.tls_cut:
            notes.append("the capture cut its frames: its TLS records from the first cut on "
                         "are not read")
        if tls.decryption == DECRYPT_ON and tls.alpn not in _HTTP_ALPN:
            notes.append(f"its protocol is {tls.alpn}, not HTTP/1.x: its requests are "
                         "inferred from its records")
        started, done = tls.handshake_started_at, tls.handshake_done_at
        notify_at = tls.close_notify_at
        fin_at = self.first_fin[1] if self.first_fin else None
        return Tls(
            version=tls.version, sni=tls.sni, alpn=tls.alpn, alpn_known=tls.alpn_known,
            cipher=tls.cipher_name, handshake_started_at=started, handshake_done_at=done,
            handshake_inferred=tls.handshake_done_inferred,
            handshake_seconds=round(done - started, 6)
            if done is not None and started is not None else None,
            close_notify=tls.close_notify, close_notify_by=tls.close_notify_by,
            close_notify_at=notify_at,
            close_notify_before_fin=round(fin_at - notify_at, 6)
            if fin_at is not None and notify_at is not None else None,
            alerts=[_alert(alert) for alert in tls.alerts], decryption=tls.decryption,
            undecrypted_records=tls.client.undecrypted_records
            + tls.server.undecrypted_records, notes=notes)

    def _unanswered_in_the_cut(self) -> None:
        """Requests still waiting when the responses were lost in a cut: their answers may
        be there, unseen. Their response fields are unknown."""
        if self.responses_lost:
            for request in self.unanswered:
                _unknown(request, _RESPONSE_FIELDS)
            self.unanswered = []

    def _waited(self, request: HttpRequest) -> bool:
        """Whether ``request`` left after the answer to the request before it began: its
        client was not pipelining, and no request hid between the two."""
        if request.depth == 1:
            return True
        before = self.requests[request.depth - 2].response_at
        return before is not None and before < request.sent_at

    def _unpair(self, since: int | None = None) -> None:
        """Stop pairing responses with requests: from the oldest unanswered one on, or from
        request ``since`` (an index) on, taking back the responses paired with those."""
        start = self.unanswered[0].depth - 1 if self.unanswered else len(self.requests)
        if since is not None and since < start:
            start = since
            for request in self.requests[since:]:
                for name in _RESPONSE_FIELDS:
                    setattr(request, name, None)
        if self.unpaired_from is None or start < self.unpaired_from:
            self.unpaired_from = start
        self.unanswered = []

    def _on_response_head(self, first: list[str], headers: _Headers,
                          started: float) -> tuple[str, int]:
        version, code = first[0], first[1]
        # status-code = 3DIGIT (RFC 9112 section 4). isdigit() alone also passes "²00" and
        # 5,000 digits, which int() refuses.
        if not version.startswith("HTTP/") or len(code) != 3 or not code.isascii() \
                or not code.isdigit():
            if self.response_parser.partial == _LINE_CUT:
                return None  # cut inside its status code: nothing to read
            self.response_parser.mode = "dead"  # not a status line: not HTTP/1.x
            return _NO_BODY
        status = int(code)
        if 100 <= status < 200 and status != _SWITCHING_PROTOCOLS:
            return _NO_BODY  # an interim response answers no request
        if self.response_parser.resynced:
            # Found again after a cut: it answers the one request waiting, if that one came
            # after the answer to the one before it (a client that waits); else who knows.
            self.response_parser.resynced = False
            waiting = [r for r in self.unanswered if r.sent_at <= started]
            if len(waiting) != 1 or not self._waited(waiting[0]):
                self._unpair()
        lost_from = self.requests_lost_from
        if lost_from is not None and self.unpaired_from is None and (
                not self.unanswered or self.unanswered[0].sent_at > started or (
                    self.unanswered[0].depth > lost_from
                    and not self._waited(self.unanswered[0]))):
            # No request waits for it, or none yet sent: one hid in a cut, and the responses
            # paired since it did went to the wrong requests. Or the one waiting left
            # before the answer to the one before it: a pipelining client, which could
            # have hidden another request in the cut.
            self._unpair(lost_from)
        if self.unpaired_from is not None:
            self.unanswered = []  # requests after the loss are no longer paired either
        self.responses_lost = False
        request = self.unanswered[0] if self.unanswered else None
        if request is None:
            return _response_framing(headers, "GET", status)
        request.response_at = started
        request.status = status
        request.response_version = version
        request.response_connection = headers.connection
        request.response_keep_alive = headers.keep_alive
        request.advertised_timeout = headers.timeout
        request.keep_alive_max = headers.max
        if self.response_parser.partial:
            _unknown(request, _RESPONSE_HEADERS)
        return _response_framing(headers, request.method, status)

    def _on_response_end(self, ts: float, body: int) -> None:
        if self.unanswered and self.unanswered[0].response_at is not None:
            request = self.unanswered.pop(0)
            request.response_end_at, request.response_body_len = ts, body
            if request.status == _SWITCHING_PROTOCOLS:
                # Its answer, and the end of HTTP/1.x on this connection (RFC 9110 section
                # 15.2.2): what follows, both ways, is the protocol switched to (HTTP/2's
                # preface, WebSocket frames), no request or response of ours.
                self.request_parser.mode = self.response_parser.mode = "dead"

    def _on_response_cut(self, head_seen: bool) -> None:
        self.responses_lost = True
        if head_seen and self.unanswered and self.unanswered[0].response_at is not None:
            request = self.unanswered.pop(0)  # its end was cut: answered, when unknown
            _unknown(request, ("response_end_at", "response_body_len"))
        else:
            # A response the capture cut away whole (or after an interim 1xx, the final one
            # somewhere in the cut) answered one of them: which, order can no longer tell;
            # and where a request may have hidden in a cut, not since then either.
            self._unpair(self.requests_lost_from)

    # --- TCP

    def move(self, side: Side, sent: Sent, ts: float) -> None:
        """What ``side`` sent, through `TRANSITIONS`. The first move that takes a side to
        CLOSED or RESET ends the connection: its sender closed it, with a FIN or a RST."""
        client = side is Side.CLIENT
        mine, peer = (self.client_state, self.server_state) if client else \
            (self.server_state, self.client_state)
        moved = TRANSITIONS.get((side, mine, peer, sent))
        if moved is None:
            return
        if client:
            self.client_state, self.server_state = moved
        else:
            self.server_state, self.client_state = moved
        if self.closed is None and moved[0] in (Tcp.CLOSED, Tcp.RESET):
            self.closed = (side, Closing.FIN if moved[0] is Tcp.CLOSED else Closing.RST, ts, peer)
            if self.end_at is None or ts < self.end_at:
                self.end_at = ts

    @property
    def over(self) -> bool:
        """Nothing later but a stray segment can change it: a RST ended it, or both sides
        closed with every byte in (`_release`), every request answered that could be."""
        return self.rst is not None or self.request_stream is _ENDED

    @property
    def refused(self) -> bool:
        """The server's RST ended it while the client's SYN was unanswered."""
        closed = self.closed
        return closed is not None and closed[0] is Side.SERVER and closed[1] is Closing.RST \
            and closed[3] is Tcp.SYN_SENT

    def take(self, ts: float, flags: int, seq: int, payload: bytes, side: Side,
             cut: int = 0) -> None:
        """One segment of this connection, from ``side``, ``cut`` bytes of its payload
        lost to the snap length. The usual one, data in order from a side that has sent
        data before, whole, does no more than it must."""
        if flags & 0x07 or cut:
            self._flagged(ts, flags, seq, payload, side, cut)  # a SYN, FIN or RST; or cut
            return
        if side is Side.CLIENT:
            half, stream = self.up, self.request_stream
        else:
            half, stream = self.down, self.response_stream
        if not payload:
            self._bare(ts, flags, seq, half, side)
            return
        if not half.data_said:
            self._first_data(ts, flags, seq, half, side)
        if seq == half.next_seq and not half.pending:
            self._accept(half, stream, payload, ts)  # in order: the usual case
        elif len(payload) == 1 and seq == half.probe_seq():
            self.keepalive_probes += 1  # a probe with a byte of garbage: not data
            self._retransmitted(half, side)
        else:
            self._deliver(half, stream, seq, payload, ts, side)

    def _say(self, side: Side, letter: str) -> None:
        """One letter of Zeek's history: upper case for the client (Zeek's originator)."""
        if len(self.history) < _MAX_HISTORY:
            self.history += letter if side is Side.CLIENT else letter.lower()

    def _first_data(self, ts: float, flags: int, seq: int, half: _Half, side: Side) -> None:
        """A side's first data (no SYN, FIN or RST): it may move its state, and it is
        Zeek's "d" and Wireshark's DATA."""
        if half.next_seq is None:
            half.next_seq = half.start = seq  # joined mid-stream
        if "D" not in half.said:
            half.said += "D"
            self._say(side, "D")
        if flags & ACK:
            half.data_said = True
            self.completeness |= COMPLETENESS_DATA
        self.move(side, Sent.DATA, ts)

    def _bare(self, ts: float, flags: int, seq: int, half: _Half, side: Side) -> None:
        """A segment with no payload, SYN, FIN or RST: a pure ACK, or a keep-alive probe
        (a reader may leave most pure ACKs out: see `Analyzer`)."""
        if flags & ACK and "A" not in half.said:
            half.said += "A"
            self._say(side, "A")
            self.completeness |= COMPLETENESS_ACK
        self.move(side, Sent.ACK, ts)
        if seq == half.probe_seq():
            self.keepalive_probes += 1
        elif half.next_seq is not None:
            half.reach(seq)  # ahead of what was seen: the capture missed segments

    def _retransmitted(self, half: _Half, side: Side) -> None:
        """A segment whose data ends no further than this side had reached: Zeek's "t",
        written at the 1st, 10th, 100th... of a side."""
        half.retransmits += 1
        if half.retransmits == half.next_t:
            half.next_t *= 10
            self._say(side, "T")

    def _letters(self, flags: int, seq: int, length: int, half: _Half, side: Side) -> None:
        """Zeek's history letters for a segment with a SYN, FIN or RST (its
        ``update_history``): several of them make one "i" (FIN and RST) or "q", once a
        side; a SYN, FIN or RST is said again only at another sequence number."""
        if flags & (SYN | FIN | RST) not in (SYN, FIN, RST):
            letter = "I" if flags & FIN and flags & RST else "Q"
            if letter not in half.said:
                half.said += letter
                self._say(side, letter)
        elif flags & SYN:
            if half.last_syn != seq:
                self._say(side, "H" if flags & ACK else "S")
            half.last_syn = seq
        elif flags & FIN:
            end = (seq + length) % SEQ_MOD
            if half.last_fin != end:
                self._say(side, "F")
            half.last_fin = end
        else:
            if half.last_rst != seq:
                self._say(side, "R")
            half.last_rst = seq

    def _flagged(self, ts: float, flags: int, seq: int, payload: bytes, side: Side,
                 cut: int = 0) -> None:
        """A segment with a SYN, a FIN or a RST (and perhaps data), or one the capture cut
        (``cut`` bytes of its payload not kept)."""
        client = side is Side.CLIENT
        if client:
            half, stream = self.up, self.request_stream
        else:
            half, stream = self.down, self.response_stream
        length = len(payload) + cut  # on the wire
        if cut:
            self.truncated += 1
        if not flags & 0x07:  # data the capture cut, nothing more: as `take` has it
            if not half.data_said:
                self._first_data(ts, flags, seq, half, side)
            if length == 1 and seq == half.probe_seq():
                self.keepalive_probes += 1
                self._retransmitted(half, side)
            elif seq == half.next_seq and not half.pending:
                self._accept(half, stream, payload, ts, cut)
            else:
                self._deliver(half, stream, seq, payload, ts, side, cut)
            return
        self._letters(flags, seq, length, half, side)
        self.completeness |= _completeness(flags, length)
        if flags & SYN:
            if flags & ACK:
                if not client:
                    if self.established_at is None:
                        self.established_at = ts
                    half.next_seq = half.start = (seq + 1) % SEQ_MOD
                    half.renumbered()
                self.move(side, Sent.SYN_ACK, ts)
            else:
                self.move(side, Sent.SYN, ts)
            return
        if flags & RST:
            if self.rst is None:
                self.rst = (side, ts)
            self.move(side, Sent.RST, ts)
            return
        if length:
            if half.next_seq is None:
                half.next_seq = half.start = seq  # joined mid-stream
            if seq == half.next_seq and not half.pending:
                self._accept(half, stream, payload, ts, cut)
            else:
                self._deliver(half, stream, seq, payload, ts, side, cut)
        if half.fin_at is None:
            half.fin_at = ts
            half.fin_seq = (seq + length) % SEQ_MOD
            if half.next_seq is not None:
                half.reach(half.fin_seq + 1)
            if self.first_fin is None:
                self.first_fin = (side, ts)
            elif self.second_fin_at is None:
                self.second_fin_at = ts
            self.move(side, Sent.FIN, ts)
            if half.short_of_fin():
                if half.fin_seq not in half.pending:
                    half.hold(half.fin_seq, (b"", ts, 0))  # see `_Half.pending`
            else:
                stream.close()  # else when the hole before the FIN fills (_accept)
            self._release()

    def _deliver(self, half: _Half, stream: _MessageStream, seq: int, data: bytes,
                 ts: float, side: Side, cut: int = 0) -> None:
        """Data out of order: held until the hole before it fills, trimmed where it
        repeats what came (``cut``: bytes after ``data`` the capture did not keep)."""
        far = half.furthest()
        if far is not None and _seq_diff((seq + len(data) + cut) % SEQ_MOD, far) <= 0:
            self._retransmitted(half, side)
        offset = _seq_diff(seq, half.next_seq)
        if offset > 0:  # a hole before it: hold until filled
            if seq not in half.pending:
                if half.pending_bytes + len(data) > _MAX_PENDING or \
                        len(half.pending) >= _MAX_PENDING_SEGMENTS:
                    half.lost = True  # a hole that never fills must not hold the whole capture
                    return
                half.hold(seq, (data, ts, cut))
                half.reach(seq + len(data) + cut)
            return
        if offset < 0:
            data, cut = _trimmed(data, cut, -offset)
            if not data and not cut:
                return  # a retransmission of bytes already taken
        self._accept(half, stream, data, ts, cut)
        # Then the held ones the data has reached, the earliest first.
        while half.pending:
            pseq = half.first_held()
            poff = _seq_diff(pseq, half.next_seq)
            if poff > 0:
                break  # the earliest is still after a hole: so is every other
            pdata, pts, pcut = half.pending.pop(pseq)
            half.pending_bytes -= len(pdata)
            pdata, pcut = _trimmed(pdata, pcut, -poff)
            if pdata or pcut:
                self._accept(half, stream, pdata, pts, pcut)

    def _accept(self, half: _Half, stream: _MessageStream, data: bytes, ts: float,
                cut: int = 0) -> None:
        half.next_seq = (half.next_seq + len(data) + cut) % SEQ_MOD
        half.taken += len(data) + cut
        if self.last_data_at is None or ts > self.last_data_at:
            self.last_data_at = ts
        if self.end_at is None or ts <= self.end_at:
            if self.last_data_before_end is None or ts > self.last_data_before_end:
                self.last_data_before_end = ts
        stream.feed(data, ts)
        if cut:
            stream.skip(cut)
        if half.fin_at is not None and half.fin_seq == half.next_seq:
            stream.close()  # the data a FIN had overtaken has come: the sender's close
            self._release()

    def _release(self) -> None:
        """Once both sides have closed and every byte is in, the parsers can go."""
        if self.second_fin_at is None or self.request_stream is _ENDED:
            return
        up, down = self.up, self.down
        if up.pending or down.pending or up.short_of_fin() or down.short_of_fin():
            return
        # The parsers hold this connection (their callbacks): let them go with the streams.
        self.request_stream = self.response_stream = _ENDED
        self.request_parser = self.response_parser = _ENDED
        self._unanswered_in_the_cut()
        self.unanswered = []

    # --- the record

    def record(self) -> Connection:
        up, down = self.up, self.down
        gaps = ((1 if up.pending or up.lost or up.short_of_fin() else 0)
                + (1 if down.pending or down.lost or down.short_of_fin() else 0))
        first_fin_by, first_fin_at = self.first_fin or (None, None)
        rst_by, rst_at = self.rst or (None, None)
        closed_by, closed_with, ended_at, _ = self.closed or (None, None, None, None)
        refused = self.refused
        requests = self.requests
        ids = []
        last_response_at = None
        for r in requests:
            ids.append(r.id)
            if r.response_at is not None:
                end = r.response_end_at or r.response_at
                if last_response_at is None or end > last_response_at:
                    last_response_at = end
        quiet_since = self.last_data_before_end or self.established_at
        tls = self.tls
        if tls is not None:
            # TLS's own records (handshake, tickets, alerts) are data to TCP, not to HTTP:
            # idle since the last application data, or since the handshake ended.
            done = tls.handshake_done_at
            quiet_since = self.app_data_before_end or (
                done if done is not None and (ended_at is None or done <= ended_at)
                else self.established_at)
        idle = None
        if ended_at is not None and quiet_since is not None and not refused:
            idle = round(ended_at - quiet_since, 6)
        self._unanswered_in_the_cut()
        if self.unpaired_from is not None:  # their responses cannot be told: unknown
            for r in requests[self.unpaired_from:]:
                if r.status is None:
                    _unknown(r, _RESPONSE_FIELDS)
        # What its last exchange said: the last response's timeout, and whether the last
        # response (else the last request) announced the close; unknown where the capture
        # cut what it said.
        answered = [r for r in requests if r.status is not None]
        last_response = answered[-1] if answered else None
        last_request = requests[-1] if requests else None
        advertised = last_response.advertised_timeout if last_response else None
        announced = close_announced(last_request, last_response)
        as_announced: bool | None = announced is not None and closed_by is not None
        kept = max_kept(answered)
        if self.unpaired_from is not None or any(r.unknown for r in requests[-1:]) or (
                last_response is not None and last_response.unknown):
            if announced is None:
                as_announced = None
            if kept is not False:
                kept = None
        client_bytes, server_bytes = up.sent_bytes(), down.sent_bytes()
        return Connection(
            id=self.number, client=_fmt(self.client), server=_fmt(self.server),
            syn_at=self.syn_at, syn_retransmits=self.syn_retransmits,
            established_at=self.established_at, refused=refused, requests=ids,
            last_response_at=last_response_at, last_data_at=self.last_data_at,
            first_fin_by=_plain(first_fin_by), first_fin_at=first_fin_at,
            second_fin_at=self.second_fin_at, rst_by=_plain(rst_by), rst_at=rst_at,
            closed_by=_plain(closed_by), closed_with=_plain(closed_with),
            idle_before_close=idle, advertised_timeout=advertised, probe=not requests,
            complete=self.syn_at is not None and gaps == 0, gaps=gaps,
            enforced_minus_advertised=round(idle - advertised, 6)
            if closed_by is Side.SERVER and closed_with is Closing.FIN
            and as_announced is False and idle is not None and advertised is not None
            else None,
            keepalive_probes=self.keepalive_probes, history=self.history,
            conn_state=conn_state(self.client_state, self.server_state, client_bytes,
                                  server_bytes, self.history).value,
            completeness=self.completeness, client_bytes=client_bytes,
            server_bytes=server_bytes, close_announced_by=_plain(announced),
            closed_as_announced=as_announced, keep_alive_max_kept=kept,
            truncated=self.truncated, first_seen_at=self.first_seen_at,
            tls=self.tls_record())


_RSTOS0 = re.compile(r"\^?S[^HAFGIQ]*R")  # Zeek's: the client's SYN, then its RST, unanswered


def conn_state(client: Tcp, server: Tcp, client_bytes: int, server_bytes: int,
               history: str) -> ConnState:
    """Zeek's conn_state from the two sides' final states (Zeek's ``conn_state`` function in
    scripts/base/protocols/conn/main.zeek, the client as its originator)."""
    client_quiet = client in (Tcp.INACTIVE, Tcp.PARTIAL)
    server_quiet = server in (Tcp.INACTIVE, Tcp.PARTIAL)
    if server is Tcp.RESET:
        if client in (Tcp.SYN_SENT, Tcp.SYN_ACK_SENT) or (
                client is Tcp.RESET and client_bytes == 0 and server_bytes == 0):
            return ConnState.REJ
        return ConnState.RSTRH if client_quiet else ConnState.RSTR
    if client is Tcp.RESET:
        if server_quiet:
            return ConnState.RSTOS0 if _RSTOS0.match(history) else ConnState.OTH
        return ConnState.RSTO
    if client is Tcp.CLOSED and server is Tcp.CLOSED:
        return ConnState.SF
    if client is Tcp.CLOSED:
        return ConnState.SH if server_quiet else ConnState.S2
    if server is Tcp.CLOSED:
        return ConnState.SHR if client_quiet else ConnState.S3
    if client is Tcp.SYN_SENT and server is Tcp.INACTIVE:
        return ConnState.S0
    if client is Tcp.ESTABLISHED and server is Tcp.ESTABLISHED:
        return ConnState.S1
    return ConnState.OTH


def announces_close(connection: str | None, version: str | None) -> bool:
    """Whether a message says its connection ends after it: its Connection header has the
    ``close`` option (RFC 9112 section 9.6), or it is HTTP/1.0 without ``keep-alive``
    (section 9.3: an HTTP/1.0 connection persists only with it)."""
    options = {option.strip(" \t").lower() for option in connection.split(",")} \
        if connection else set()
    return "close" in options or (version == "HTTP/1.0" and "keep-alive" not in options)


def close_announced(last_request: HttpRequest | None,
                    last_response: HttpRequest | None) -> Side | None:
    """Who said, in a connection's last exchange, that it would end: the server in its last
    response, else the client in its last request; None when neither did."""
    if last_response is not None and announces_close(last_response.response_connection,
                                                     last_response.response_version):
        return Side.SERVER
    if last_request is not None and announces_close(last_request.request_connection,
                                                    last_request.version):
        return Side.CLIENT
    return None


def wire_story(request: HttpRequest, connection: Connection) -> str:
    """A request's fate as the wire alone tells it (`HttpRequest.story`, less `replaced
    dropped connection`, which only the client's word tells): sent after the server's
    first FIN on its ``connection``, `raced the FIN`, a stale pooled connection's
    request; else with no answer, `unanswered`; else on a connection that had carried
    one, `reused`; else `new`."""
    if connection.first_fin_by == Side.SERVER and connection.first_fin_at is not None \
            and request.sent_at > connection.first_fin_at:
        return "raced the FIN"
    if request.status is None:  # a reused connection that carried no answer too
        return "unanswered"
    return "reused" if request.reused else "new"


def max_kept(answered: list[HttpRequest]) -> bool | None:
    """Whether every ``Keep-Alive: max=N`` on a connection held: no more than N requests
    were answered on it after that response. None when no response said max=."""
    kept = None
    for index, request in enumerate(answered):
        if request.keep_alive_max is not None:
            kept = (kept is not False) and len(answered) - index - 1 <= request.keep_alive_max
    return kept


def _completeness(flags: int, length: int) -> int:
    """Wireshark's completeness bits for a segment with a SYN, FIN or RST and ``length``
    bytes of payload on the wire (none of them a connection's first SYN: that one is
    counted where the connection opens)."""
    bits = 0
    if flags & (SYN | ACK) == SYN | ACK:
        bits |= COMPLETENESS_SYN_ACK
    elif flags & (SYN | ACK) == ACK:
        bits |= COMPLETENESS_DATA if length else COMPLETENESS_ACK
    if flags & (FIN | ACK) == FIN | ACK:
        bits |= COMPLETENESS_FIN
    if flags & RST:
        bits |= COMPLETENESS_RST
    return bits


def _unknown(request: HttpRequest, names: tuple[str, ...]) -> None:
    """List ``names`` among the request's fields the capture cut."""
    known = request.unknown or []
    request.unknown = known + [name for name in names if name not in known]


def _trimmed(data: bytes, cut: int, already: int) -> tuple[bytes, int]:
    """A segment's kept bytes and cut bytes less the first ``already`` of them."""
    if already <= 0:
        return data, cut
    if already < len(data):
        return data[already:], cut
    return b"", max(0, cut - (already - len(data)))


def _plain(value: StrEnum | None) -> str | None:
    """A named value as the record holds it: its plain string, which JSON, equality and
    repr treat as the string it is."""
    return None if value is None else value.value


def _fmt(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _keep_alive_max(keep_alive: str) -> int | None:
    """A Keep-Alive header's ``max=``: None unless it is digits, at most
    `_MAX_TIMEOUT_DIGITS` of them (leading zeros aside)."""
    match = _MAX.search(keep_alive.encode("latin-1"))
    if match is None:
        return None
    value = match.group(1)
    if not value.isdigit() or len(value.lstrip(b"0")) > _MAX_TIMEOUT_DIGITS:
        return None
    return int(value)


def _timeout(keep_alive: str) -> tuple[bool, float | None]:
    """Whether a Keep-Alive header has a ``timeout=``, and its seconds: None unless they
    are digits, perhaps with a fraction, and at most `_MAX_TIMEOUT_DIGITS` before the
    point. "1e400", "inf" or 400 nines would be infinite, or a guess if cut short."""
    match = _TIMEOUT.search(keep_alive.encode("latin-1"))
    if match is None:
        return False, None
    value = match.group(1)
    number = _SECONDS.fullmatch(value)
    if number is None or len(number.group(1).lstrip(b"0")) > _MAX_TIMEOUT_DIGITS:
        return True, None
    return True, float(value)


_NO_BODY = ("none", 0)
_UNTIL_CLOSE = ("until_close", 0)


def _header_framing(headers: dict[str, str]) -> tuple[str, int] | None:
    """How the headers delimit the body that follows (RFC 9112 section 6.3): chunked or
    a fixed length; None when they say neither (or say it unreadably)."""
    transfer = headers.get("transfer-encoding")
    if transfer and "chunked" in transfer.lower():
        return "chunked", 0
    length = headers.get("content-length")
    if length is None:
        return None
    size = _content_length(length)
    return None if size is None else ("fixed", size)


def _content_length(value: str) -> int | None:
    """A Content-Length's value: 1*DIGIT (RFC 9110 section 8.6), the same each time when
    repeated, at most `_MAX_LENGTH_DIGITS` digits; None for anything else, which RFC 9112
    section 6.3 calls invalid. int() alone would take "-5" (the parser would step back
    and read the same head forever), "+5", "5_0" and refuse 5,000 digits."""
    first, *rest = value.split(",")
    first = first.strip(_WHITESPACE)
    if not first.isascii() or not first.isdigit() or len(first.lstrip("0")) > _MAX_LENGTH_DIGITS:
        return None
    for other in rest:
        if other.strip(_WHITESPACE) != first:
            return None
    return int(first)


_SWITCHING_PROTOCOLS = 101  # the one 1xx that is a final answer (RFC 9110 section 15.2.2)


def _response_framing(headers: _Headers, method: str, status: int) -> tuple[str, int]:
    """How a response's body is delimited: not at all after HEAD or for 1xx, 204 and 304,
    else as its headers say, else by the close of the connection."""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return _NO_BODY
    return headers.framing or _UNTIL_CLOSE


# When a connection's record is final (Zeek's bounds, in capture time): once it is over
# (a RST, or both FINs with every byte in: `_Conn.over`), after this long without a segment
# (Zeek's ``tcp_close_delay``: a retransmitted FIN or a last RST may still come; one later
# than that starts a new connection, as one whose SYN was not seen: `Analyzer.after_close`)
CLOSE_LINGER = 5.0
# ... and otherwise after this long without a segment (longer than any keep-alive timeout
# or TCP keep-alive probe interval the lab sets; Zeek's ``tcp_inactivity_timeout`` is 5 min).
# A segment after that on its four-tuple starts a new connection, as one whose SYN was not
# seen.
IDLE_BOUND = 3600.0
# Segments between two looks for quiet connections. A connection is quiet past its bound
# when two looks in a row found it so with no segment of its own between them: one
# segment with a wild capture time (a corrupt record) makes nothing final.
SWEEP_EVERY = 1024
# Four-tuples of connections made final by a bound, the latest this many of each, kept to
# tell a later segment there from a capture that started late: those the idle bound ended
# (rare: quiet an hour), and those the close linger ended (one a connection: a straggler
# comes seconds later; 6 MB of them).
IDLE_ENDED_KEPT = 1 << 16
CLOSED_ENDED_KEPT = 1 << 14


class Finished(NamedTuple):
    """A connection whose record is final, as `Analyzer.finished` hands it out.

    Its numbers are provisional until `assemble` has seen them all: ``connection.id`` is
    its place among the connections seen, the requests' ``id`` are empty and
    ``connection.requests`` holds as many empty ids.
    """

    connection: Connection
    requests: list[HttpRequest]
    syn_seen: bool  # its SYN was seen: `assemble` keeps it only if its server port answered
    server_port: int


class Analyzer:
    """Feed segments in capture order; `finished` hands out the records that are final,
    `finish` the rest at the end of the capture.

    A connection's record is final when no later segment could change it: it is
    over (a RST, or both FINs with every byte in) and has been quiet for
    ``close_linger`` seconds, or it has been quiet for ``idle_bound`` seconds, in
    capture time (`CLOSE_LINGER`, `IDLE_BOUND`; None: only at the end), or a new
    SYN took its four-tuple. Every ``sweep_every`` segments (`SWEEP_EVERY`) the
    Analyzer looks; it then forgets what is final: memory follows the connections
    open, not those the capture ever had. `assemble` numbers what was handed out
    as `finish` returns it.

    ``ports``: the server ports to follow. With none, every connection is
    followed and the SYN's receiver is taken as the server; `assemble` then
    keeps the connections to ports that answered a SYN (with SYN-ACK or
    RST), and those whose SYN was not seen (which make a run inconclusive).

    A pure ACK (no payload, no SYN, FIN or RST) on a four-tuple already fed
    changes no record when its direction has already sent a pure ACK since
    its SYN (or since the other direction's SYN without ACK), and its
    sequence number is the furthest its direction has reached since its SYN
    (the end of its furthest segment, SYN and FIN counting one), or that
    direction has sent nothing but pure ACKs (its sequence numbers are then
    unknown): a reader may leave such segments out, and this class must
    never come to depend on them. A direction's first pure ACK is a letter
    of Zeek's history and a bit of Wireshark's completeness; any other may be
    a keep-alive probe, one behind: they must be fed.
    """

    def __init__(self, ports: set[int] | frozenset[int] | None = None,
                 keylog: KeyLog | None = None, close_linger: float | None = CLOSE_LINGER,
                 idle_bound: float | None = IDLE_BOUND, sweep_every: int = SWEEP_EVERY,
                 wire_stories: bool = False) -> None:
        self.ports = frozenset(ports or ())
        # Each request's story from the wire alone (`wire_story`): for a capture without the
        # client's records; a run's stories come from the wire and the client together.
        self.wire_stories = wire_stories
        self.keylog = keylog  # TLS secrets (`kalab.tls.KeyLog`): None, requests inferred
        self.close_linger, self.idle_bound = close_linger, idle_bound
        self.sweep_every = sweep_every
        # Both directions of each four-tuple open: (connection, the sender's side).
        self._live: dict[tuple[str, int, str, int], tuple[_Conn, Side]] = {}
        self._opened = 0  # connections seen so far
        self._going: dict[int, _Conn] = {}  # not over yet, by number
        self._over: deque[_Conn] = deque()  # over, in the order a look found them so
        self._fed = 0  # segments since the last look
        self._finished: list[Finished] = []  # final, not handed out yet
        self._servers: set[int] = set()  # ports that have answered a SYN so far
        self._answered: set[int] = set()  # of final connections, server ports that answered
        # Four-tuples (client, server) whose connection the idle bound, or the close
        # linger, made final, the latest `IDLE_ENDED_KEPT` and `CLOSED_ENDED_KEPT`: a later
        # segment without SYN there is not a capture that started late. (OrderedDicts: a
        # dict's oldest key, after many taken from its front, is found by a walk over
        # their places; 200,000 connections took 4.5 s.)
        self._idle_ended: OrderedDict[tuple, None] = OrderedDict()
        self._closed_ended: OrderedDict[tuple, None] = OrderedDict()
        # Connections whose SYN was not seen, opened on such a four-tuple (said among the
        # capture's problems): the rest of a conversation the idle bound cut; segments after
        # a connection closed and quiet past the close linger (late ones of it, or a new
        # connection whose SYN the capture lacks).
        self.continued_after_idle = 0
        self.after_close = 0

    def feed(self, seg: Segment | tuple) -> None:
        """One segment: a `Segment`, or a plain tuple of its fields in its order."""
        self.feed_all((seg,))

    def feed_all(self, segments: Iterable[Segment | tuple]) -> None:
        """Segments in capture order, as `feed` takes them: a reader's batch at a time
        saves a call per segment on a big capture."""
        ports, live = self.ports, self._live
        fed = 0
        for ts, src, sport, dst, dport, flags, seq, _, payload, cut in segments:
            fed += 1
            if ports and sport not in ports and dport not in ports:
                continue
            entry = live.get((src, sport, dst, dport))
            if flags & SYN and not flags & ACK:
                if entry is not None and entry[1] is Side.CLIENT and entry[0].syn_isn == seq:
                    entry[0].syn_retransmits += 1
                    entry[0].last_seen_at = ts
                else:
                    self._open((src, sport), (dst, dport), ts, seq)  # new, or its port reused
                continue
            if entry is None:
                client, server = ((dst, dport), (src, sport)) if self._is_server(sport, dport) \
                    else ((src, sport), (dst, dport))
                conn = self._open(client, server, ts, None)
                side = Side.CLIENT if client == (src, sport) else Side.SERVER
                if side is Side.SERVER:
                    conn.history = "^"  # Zeek's mark: the first packet's sender is not the client
            else:
                conn, side = entry
                conn.last_seen_at = ts
            conn.take(ts, flags, seq, payload, side, cut)
            if flags & (SYN | RST) and side is Side.SERVER and (
                    conn.established_at is not None or conn.refused):
                self._servers.add(sport)
        self._fed += fed
        if fed and self._fed >= self.sweep_every:
            self._sweep(ts)

    def finished(self) -> list[Finished]:
        """The records final since the last call, in the order they became final."""
        done, self._finished = self._finished, []
        return done

    def _sweep(self, now: float) -> None:
        """A look at the time of the last segment: what is quiet past its bound at two
        looks in a row is final (see the class)."""
        self._fed = 0
        linger, idle, over = self.close_linger, self.idle_bound, self._over
        going = {}
        for conn in self._going.values():
            if conn.final:
                continue
            if linger is not None and conn.over:
                over.append(conn)
                continue
            if idle is not None and now - conn.last_seen_at > idle:
                self._look(conn)
                if conn.final:
                    self._note_end(conn, self._idle_ended, IDLE_ENDED_KEPT)
            if not conn.final:
                going[conn.number] = conn
        self._going = going
        for conn in over:  # in the order they were found over: the quiet ones first
            if not conn.final:
                if now - conn.last_seen_at <= linger:
                    break
                self._look(conn)
                if conn.final:
                    self._note_end(conn, self._closed_ended, CLOSED_ENDED_KEPT)
        while over and over[0].final:
            over.popleft()

    @staticmethod
    def _note_end(conn: _Conn, ended: OrderedDict[tuple, None], kept: int) -> None:
        """``conn`` made final by a bound: its four-tuple among the latest ``kept`` it ended."""
        if len(ended) >= kept:
            ended.popitem(last=False)  # the oldest
        ended[(*conn.client, *conn.server)] = None

    def _look(self, conn: _Conn) -> None:
        """It is quiet past its bound: final if the last look found it so too, with no
        segment of its own since; else marked for the next."""
        if conn.quiet_mark == conn.last_seen_at:
            self._final(conn)
        else:
            conn.quiet_mark = conn.last_seen_at

    def _final(self, conn: _Conn) -> None:
        """Its record, handed out (`finished`), and the connection forgotten."""
        for key in ((*conn.client, *conn.server), (*conn.server, *conn.client)):
            entry = self._live.get(key)
            if entry is not None and entry[0] is conn:
                del self._live[key]
        conn.final = True
        if conn.established_at is not None or conn.refused:
            self._answered.add(conn.server[1])
        conn.infer_requests()
        record = conn.record()
        if self.wire_stories:
            for request in conn.requests:
                request.story = wire_story(request, record)
        self._finished.append(Finished(record, conn.requests, conn.syn_at is not None,
                                       conn.server[1]))
        # Its parsers and streams hold it (their callbacks): without them, it goes as soon
        # as the caller lets its record go, with no wait for the cycle collector.
        conn.request_stream = conn.response_stream = _ENDED
        conn.request_parser = conn.response_parser = _ENDED

    def _is_server(self, port: int, other: int) -> bool:
        """For a connection first seen mid-stream: is ``port`` (the sender's) the server's?"""
        if self.ports:
            return port in self.ports
        if (port in self._servers) != (other in self._servers):
            return port in self._servers
        return port < other

    def _open(self, client: tuple[str, int], server: tuple[str, int], ts: float,
              syn_seq: int | None) -> _Conn:
        keys = ((*client, *server), (*server, *client))
        for key in keys:
            entry = self._live.get(key)
            if entry is not None:
                self._final(entry[0])  # its four-tuple taken: nothing can reach it now
        if syn_seq is None and (self._idle_ended or self._closed_ended):
            for key in keys:
                if key in self._idle_ended:
                    del self._idle_ended[key]
                    self.continued_after_idle += 1
                    break
                if key in self._closed_ended:
                    del self._closed_ended[key]
                    self.after_close += 1
                    break
        self._opened += 1
        conn = _Conn(self._opened, client, server, ts, syn_seq, self.keylog)
        self._live[(*client, *server)] = (conn, Side.CLIENT)
        self._live[(*server, *client)] = (conn, Side.SERVER)
        self._going[conn.number] = conn
        return conn

    def finish(self) -> tuple[list[Connection], list[HttpRequest]]:
        """The end of the capture: the records not handed out yet, numbered (`assemble`).
        For a capture fed whole without a call to `finished`: all of them."""
        self.end()
        return assemble(self.finished(), self.ports, self.server_ports())

    def end(self) -> None:
        """The end of the capture: every connection still open is final (`finished`)."""
        for conn in sorted({id(c): c for c, _ in self._live.values()}.values(),
                           key=attrgetter("number")):
            self._final(conn)
        self._going, self._over = {}, deque()

    def server_ports(self) -> set[int]:
        """Ports that answered a SYN (with SYN-ACK or RST): the servers seen."""
        return self._answered | {c.server[1] for c, _ in self._live.values()
                                 if c.established_at or c.refused}


def assemble(finished: Iterable[Finished], ports: set[int] | frozenset[int],
             servers: set[int]) -> tuple[list[Connection], list[HttpRequest]]:
    """Every final record of a capture, numbered: connections in order seen, requests in
    order sent (named w1, w2...). ``ports``: those the Analyzer followed; ``servers``:
    its `Analyzer.server_ports` at the end."""
    kept = sorted(finished, key=lambda f: f.connection.id)
    if not ports and servers:
        # Nobody answered these SYNs: not a server of this capture.
        kept = [f for f in kept if not f.syn_seen or f.server_port in servers]
    for number, done in enumerate(kept, 1):
        done.connection.id = number
        for request in done.requests:
            request.connection = number
    # By time sent; the sort is stable, so requests sent at the same instant stay in
    # the order they are gathered: by connection, then depth.
    requests = [r for f in kept for r in f.requests]
    requests.sort(key=attrgetter("sent_at"))
    for number, request in enumerate(requests, 1):
        request.id = f"w{number}"
    for done in kept:
        done.connection.requests = [r.id for r in done.requests]
    return [f.connection for f in kept], requests


def analyze(segments, ports: set[int] | None = None, keylog: KeyLog | None = None
            ) -> tuple[list[Connection], list[HttpRequest]]:
    """Run segments through a fresh Analyzer."""
    analyzer = Analyzer(ports, keylog)
    analyzer.feed_all(segments)
    return analyzer.finish()
