"""The report record: what a run proved, one JSON document per run.

As in Zeek's conn.log, the record is the product: every field is documented
here, where it is defined (``doc=`` below), and nowhere else. The analyzer
fills `Connection` and `HttpRequest` from packets; the run fills the rest.

Times: every ``*_at`` field is absolute Unix epoch seconds (float), directly
comparable with tshark's ``frame.time_epoch``; every other duration is in
seconds. A value that the wire did not show is ``null``, never a guess; so
is a number JSON has no word for (NaN, an infinity): the JSON is strict, as
JavaScript's parser and every other strict one want it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

SCHEMA = "kalab.report/2"
# /2 grows only by fields with defaults (e.g. `Capture.close_linger`, `TargetServer.ca`):
# every /2 report reads, those written before a field came read it as its default.
# What changed from /1: `Connection.closed_by` is a side (or null) and how it was closed
# is `closed_with`, no longer `server-reset`, `refused` or `open`; see `from_dict`.
SCHEMA_1 = "kalab.report/1"
SCHEMAS_READ = (SCHEMA_1, SCHEMA)
# The fields a /1 record holds with the meaning /2 gives them (its closed_by as `from_dict`
# splits it): what a /1 report can still be checked on against its pcaps. /2 changed
# advertised_timeout (now the last response's) and so enforced_minus_advertised.
KEPT_FROM_1 = {
    "connections": frozenset((
        "id", "client", "server", "syn_at", "syn_retransmits", "established_at", "refused",
        "requests", "last_response_at", "last_data_at", "first_fin_by", "first_fin_at",
        "second_fin_at", "rst_by", "rst_at", "closed_by", "closed_with", "idle_before_close",
        "probe", "complete", "gaps", "keepalive_probes")),
    "requests": frozenset((
        "id", "connection", "depth", "reused", "method", "target", "version", "sent_at",
        "request_connection", "response_at", "response_end_at", "status", "response_version",
        "response_connection", "response_keep_alive", "advertised_timeout", "client",
        "planned_at", "send_lag", "attempt", "story")),
}


class Side(StrEnum):
    """A side of a TCP connection: the client sent its SYN (or, seen mid-stream, is the
    side away from the server's port), the server answered it."""

    CLIENT = "client"
    SERVER = "server"

    @property
    def other(self) -> Side:
        return Side.SERVER if self is Side.CLIENT else Side.CLIENT


class Closing(StrEnum):
    """How a side ended a connection."""

    FIN = "fin"
    RST = "rst"


def doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that carries its documentation."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    if default is not dataclasses.MISSING:
        return field(default=default, metadata={"doc": text})
    return field(metadata={"doc": text})


class ConnState(StrEnum):
    """Zeek's ``conn_state``: how a TCP connection went, the client as Zeek's originator."""

    S0 = "S0"
    S1 = "S1"
    SF = "SF"
    REJ = "REJ"
    S2 = "S2"
    S3 = "S3"
    RSTO = "RSTO"
    RSTR = "RSTR"
    RSTOS0 = "RSTOS0"
    RSTRH = "RSTRH"
    SH = "SH"
    SHR = "SHR"
    OTH = "OTH"


# Zeek's own definitions (scripts/base/protocols/conn/main.zeek), originator and responder
# being the client and the server.
CONN_STATES: dict[ConnState, str] = {
    ConnState.S0: "connection attempt seen, no reply",
    ConnState.S1: "connection established, not terminated",
    ConnState.SF: "normal establishment and termination",
    ConnState.REJ: "connection attempt rejected",
    ConnState.S2: "connection established and close attempt by the client seen (but no "
                  "reply from the server)",
    ConnState.S3: "connection established and close attempt by the server seen (but no "
                  "reply from the client)",
    ConnState.RSTO: "connection established, the client aborted (sent a RST)",
    ConnState.RSTR: "the server sent a RST",
    ConnState.RSTOS0: "the client sent a SYN followed by a RST, no SYN-ACK from the server "
                      "seen",
    ConnState.RSTRH: "the server sent a SYN-ACK followed by a RST, no SYN from the client "
                     "seen",
    ConnState.SH: "the client sent a SYN followed by a FIN, no SYN-ACK from the server seen "
                  "(half open)",
    ConnState.SHR: "the server sent a SYN-ACK followed by a FIN, no SYN from the client seen",
    ConnState.OTH: "no SYN seen, just midstream traffic",
}

# Zeek's history letters (the same file), upper case for the client, lower for the server.
HISTORY_LETTERS = {
    "s": "a SYN without the ACK bit set", "h": "a SYN-ACK (handshake)", "a": "a pure ACK",
    "d": "a packet with payload (data)", "f": "a packet with the FIN bit set",
    "r": "a packet with the RST bit set", "t": "a packet with retransmitted payload",
    "i": "an inconsistent packet (FIN and RST bits set)",
    "q": "a multi-flag packet (SYN and FIN, or SYN and RST bits set)",
    "^": "the connection's direction was flipped: its first packet came from the server",
}

# Wireshark's tcp.completeness bits (epan/dissectors/packet-tcp.c).
COMPLETENESS_BITS = {1: "SYN (the conversation's first segment, a SYN without ACK)",
                     2: "SYN-ACK", 4: "ACK (a segment with the ACK bit, no SYN and no data)",
                     8: "DATA (payload, with the ACK bit and no SYN)",
                     16: "FIN (with the ACK bit)", 32: "RST"}


@dataclass
class HttpRequest:
    """One HTTP request seen on the wire, with the response that answered it."""

    id: str = doc("The request's name: its scenario reference (`3`, `s2.1`) when the run "
                  "knows the scenario, else `w1`, `w2`... in wire order.")
    connection: int = doc("`Connection.id` of the connection that carried it.")
    depth: int = doc("1 for the first request on its connection, 2 for the second, ...")
    reused: bool = doc("True when the connection had carried a request before (depth > 1).")
    method: str | None = doc("Request method, as sent; null for an `inferred` request.")
    target: str | None = doc("Request target (path and query), as sent, cut at 200 "
                             "characters; as far as the capture kept it when `unknown` lists "
                             "it; null for an `inferred` request.")
    version: str | None = doc("HTTP version of the request line, e.g. `HTTP/1.1`; null when "
                              "the capture cut the line before it.")
    sent_at: float = doc("When the segment with the request line's first byte was seen.")
    request_connection: str | None = doc("The request's `Connection` header, if any.", None)
    response_at: float | None = doc("When the status line's first byte was seen; null if "
                                    "no response came.", None)
    response_end_at: float | None = doc("When the response's last byte was seen (end of "
                                        "body); null if unknown.", None)
    status: int | None = doc("Response status code; null if no response came. A line whose "
                             "code is not three digits is no status line: the responses are "
                             "then not HTTP/1.x, and no later one on the connection is read.",
                             None)
    response_version: str | None = doc("HTTP version of the status line.", None)
    response_connection: str | None = doc("The response's `Connection` header values, joined "
                                          "by `, ` as on the wire (e.g. `keep-alive, close`).",
                                          None)
    response_keep_alive: str | None = doc("The response's `Keep-Alive` header, if any.", None)
    advertised_timeout: float | None = doc("`timeout=` from `Keep-Alive`, in seconds: what "
                                           "the server advertised (a hint, never a promise); "
                                           "null without one, or when its value is not a "
                                           "plain decimal number of at most 10 digits before "
                                           "the point (`1e400`, `inf`, 400 nines): the raw "
                                           "header is in `response_keep_alive`.", None)
    keep_alive_max: int | None = doc("`max=` from the response's `Keep-Alive`: how many more "
                                     "requests the server said it would take on the "
                                     "connection (Apache counts it down, `max=3`, `max=2`, "
                                     "`max=1`, then `Connection: close`); null without one, "
                                     "or when it is not plain digits, at most 10.", None)
    request_body_len: int | None = doc("Bytes of the request's body, as sent (de-chunked, "
                                       "not decompressed): Zeek's `request_body_len`; null "
                                       "when the capture cut what framed it.", None)
    response_body_len: int | None = doc("Bytes of the response's body, as `request_body_len` "
                                        "(Zeek's `response_body_len`); null if no response "
                                        "came, it was cut short by the capture's end, or the "
                                        "capture cut what framed it.", None)
    unknown: list[str] | None = doc(
        "The fields of this record the capture cut (frames cut at its snap length): each "
        "is null when the bytes kept did not show it, and otherwise shows it as far as "
        "they did (a header repeated past the cut is missing). `target` and `version` "
        "when the request line itself was cut; `request_connection` and "
        "`request_body_len` when the request's header block was; the response's "
        "header fields (`response_connection`, `response_keep_alive`, `advertised_timeout`, "
        "`keep_alive_max`) when its block was; `response_end_at` and `response_body_len` "
        "when where it ended was; every response field when a message cut away whole "
        "stands between this request and the responses seen, so that which one answered "
        "it cannot be told (HTTP/1.1 pairs them only by order). Null when nothing was "
        "cut.", None)
    client: dict[str, Any] | None = doc("What the client role believed about this request "
                                        "(see `client.sessions.RequestRecord`); null for "
                                        "`kalab analyze`.", None)
    planned_at: float | None = doc("When the scenario said to send it (the client's "
                                   "clock); null without client records.", None)
    send_lag: float | None = doc("`sent_at - planned_at`: how late the request reached the "
                                 "wire against the scenario's timing.", None)
    attempt: int = doc("Which try of the client's request this was: 1, or 2, 3... when "
                       "urllib3 retried it (earlier tries are named `REF~1`, `REF~2`).", 1)
    story: str | None = doc("The request's fate from the wire and the client together: "
                            "`new` (opened its connection), `reused` (went on a connection "
                            "that had carried a request), `replaced dropped connection` "
                            "(urllib3 found the server's FIN and reconnected), `raced the "
                            "FIN` (sent on a connection the server had already closed: a "
                            "stale pooled connection), `unanswered`. `kalab analyze` tells "
                            "it from the wire alone (never `replaced dropped connection`, "
                            "which only the client can tell); null in a run for a request "
                            "without client records.", None)
    inferred: bool = doc(
        "True when the request was not read but inferred from a TLS connection's records "
        "(no key log, or none for this connection; see `Connection.tls`): a burst of the "
        "client's application-data records is a request, the server's burst after it its "
        "response. Then `method`, `target`, `version`, `status` and the headers are null; "
        "`sent_at` is when the burst's first record began, `response_at` when the "
        "server's began, `response_end_at` when its last ended; pipelined requests would "
        "be one. False for a request read from the wire (in plain text, or decrypted).",
        False)


@dataclass
class Tls:
    """What a connection's TLS showed (`kalab.tls`, which reads its records): one per TLS
    connection, in `Connection.tls`. Times are capture times, as everywhere."""

    version: str | None = doc("The version the server chose: `TLS 1.2`, `TLS 1.3` (or "
                              "`SSL 3.0`, `TLS 1.0`, `TLS 1.1`, `0x....`); null before its "
                              "ServerHello.")
    sni: str | None = doc("The server name the client asked for (the ClientHello's SNI); "
                          "null without one.")
    alpn: str | None = doc("The application protocol the server chose (ALPN), e.g. "
                           "`http/1.1`; null when it chose none, or when it cannot be known "
                           "(see `alpn_known`).")
    alpn_known: bool = doc("False when the choice is encrypted and was not decrypted (TLS "
                           "1.3 says it in EncryptedExtensions), or no ServerHello came.")
    cipher: str | None = doc("The cipher suite the server chose, by its IANA name "
                             "(`TLS_AES_128_GCM_SHA256`), or `0x....`.")
    handshake_started_at: float | None = doc("When the ClientHello was seen.")
    handshake_done_at: float | None = doc(
        "When the handshake ended: TLS 1.3, the client's Finished; TLS 1.2, the later "
        "side's Finished. Null if it never ended.")
    handshake_inferred: bool = doc(
        "True when `handshake_done_at` is inferred (TLS 1.3 without keys: the client's "
        "first encrypted record is taken as its Finished, true unless it sent a "
        "certificate).")
    handshake_seconds: float | None = doc("`handshake_done_at - handshake_started_at`.")
    close_notify: str = doc(
        "`seen` (a close_notify alert came: `close_notify_by` sent it), `none` (every "
        "record that could hold one was read, and none did), `unknown` (some could not "
        "be read: TLS 1.3 without keys hides every alert; TLS 1.2 without keys shows an "
        "encrypted alert, not which).")
    close_notify_by: Side | None = doc("`client` or `server`: who sent the first "
                                       "close_notify; null unless `close_notify` is `seen`.")
    close_notify_at: float | None = doc("When the first close_notify was seen.")
    close_notify_before_fin: float | None = doc(
        "Seconds from `close_notify_at` to the connection's first FIN (`first_fin_at`): "
        "positive when the close_notify came first, as TLS wants a close to go; negative "
        "when it came after a FIN. Null without both.")
    alerts: list[str] = doc(
        "Every TLS alert seen (the first 64), in order, as `SIDE LEVEL NAME` (`server "
        "warning close_notify`, `client fatal bad_certificate`); `SIDE encrypted` for one "
        "whose content was not read (TLS 1.2 without keys shows an alert's record, not "
        "what it says: at a connection's end it is usually its close_notify). TLS 1.3 "
        "without keys shows none at all.")
    decryption: str = doc(
        "Whether its records were decrypted: `decrypting` (with the key log; every record "
        "decrypted: its requests are read as in plain HTTP), `no_keylog` (no key log "
        "given: its requests are `inferred`), `no_keys` (the key log lacks, or "
        "contradicts, this connection's secrets), `unsupported` (a version or cipher "
        "suite kalab does not decrypt), `waiting` (a key log, but the two hellos were not "
        "both seen), `failed` (a record did not decrypt: that direction stopped there).")
    undecrypted_records: int = doc("Protected records not decrypted, both directions.")
    notes: list[str] = doc("What kept its TLS from being read whole, in words; empty when "
                           "nothing did.", factory=list)


@dataclass
class Connection:
    """One TCP connection to the server port, from SYN to its end."""

    id: int = doc("1, 2, ... in order of the first packet seen.")
    client: str = doc("Client `address:port` (the SYN's sender).")
    server: str = doc("Server `address:port`.")
    syn_at: float | None = doc("When the first SYN was seen; null if the capture missed it.")
    syn_retransmits: int = doc("Extra SYNs seen for this connection (SYN retransmissions).")
    established_at: float | None = doc("When the SYN-ACK was seen; null if the server "
                                       "never accepted.")
    refused: bool = doc("True when the server's RST ended it before any SYN-ACK: it "
                        "refused the SYN (nothing listened).")
    requests: list[str] = doc("`HttpRequest.id` of every request it carried, in order.")
    last_response_at: float | None = doc("End of the last response on it; null if none.")
    last_data_at: float | None = doc("Last segment with payload, either direction.")
    first_fin_by: Side | None = doc("`server` or `client`: who sent the first FIN; null if "
                                   "no FIN was seen.")
    first_fin_at: float | None = doc("When the first FIN was seen.")
    second_fin_at: float | None = doc("When the other side's FIN was seen.")
    rst_by: Side | None = doc("`server` or `client`: who sent the first RST, if any.")
    rst_at: float | None = doc("When the first RST was seen.")
    closed_by: Side | None = doc("Who ended it: `server` or `client`, the sender of its first "
                                 "FIN or RST, whichever came first (`closed_with` says which); "
                                 "null while it was open when the capture ended. A refused "
                                 "connection was ended by the server's RST.")
    closed_with: Closing | None = doc("How `closed_by` ended it: `fin` or `rst`; null while "
                                      "it was open when the capture ended.")
    idle_before_close: float | None = doc("Seconds from the last payload (normally the last "
                                          "response's end) to the first FIN or RST: the idle "
                                          "time after which it was closed.")
    advertised_timeout: float | None = doc("The `Keep-Alive: timeout=` of its last response: "
                                           "what the server last said of its idle timeout; "
                                           "null when that response said none, or an "
                                           "unreadable one (see "
                                           "`HttpRequest.advertised_timeout`), or none came.")
    probe: bool = doc("True when it carried no request (a readiness probe, a port scan).")
    complete: bool = doc("False when the capture has a hole in it: no SYN seen, or a "
                         "sequence gap never filled.")
    gaps: int = doc("Sequence gaps (bytes the capture never saw) in either direction.")
    enforced_minus_advertised: float | None = doc(
        "When the server closed an idle connection with a FIN, not as announced (see "
        "`closed_as_announced`), and its last response advertised a timeout: "
        "`idle_before_close - advertised_timeout` (negative: it closed sooner than it "
        "said); null otherwise.", None)
    keepalive_probes: int = doc(
        "TCP keep-alive probes seen on it, from either side (SO_KEEPALIVE; tshark's "
        "`tcp.analysis.keep_alive`): segments one sequence number behind what their sender "
        "sends next (after its FIN, the FIN's own number), with no data or one byte of "
        "garbage, and no SYN, FIN or RST; the other side answers each with an ACK. They are "
        "not data: they move no `last_data_at` and no `idle_before_close`, and a server's "
        "HTTP idle timeout runs on through them. Counted only where the sender's sequence "
        "numbers are known (its SYN or data seen); a lone retransmission of a sender's last "
        "byte looks the same and is counted, as tshark counts it.", 0)
    history: str | None = doc(
        "Zeek's conn.log `history`: a letter for each kind of event, in the order they "
        "came, upper case for the client (Zeek's originator), lower case for the server: "
        + "; ".join(f"`{letter}` {text}" for letter, text in HISTORY_LETTERS.items())
        + ". `a`, `d`, `i` and `q` are written once a side; `s`, `h`, `f` and `r` again "
        "only at another sequence number; `t` at a side's 1st, 10th, 100th... A "
        "retransmission is a segment whose data ends no further than its side had "
        "reached (a 1-byte keep-alive probe is one). Zeek's `c` (bad checksum), `g` "
        "(content gap: see `gaps`), `w` (zero window) and `x` are never written: kalab "
        "checks no checksum and reads no window. At most 100 letters. Null only in a "
        "report read from kalab.report/1.", None)
    conn_state: ConnState | None = doc(
        "Zeek's conn.log `conn_state`, from the two sides' final TCP states as Zeek's "
        "analyzer would leave them, with the client as Zeek's originator: "
        + "; ".join(f"`{state}` {text}" for state, text in CONN_STATES.items())
        + ". Null only in a report read from kalab.report/1.", None)
    completeness: int | None = doc(
        "Wireshark's `tcp.completeness` of its conversation: the sum of "
        + ", ".join(f"{bit} {text}" for bit, text in COMPLETENESS_BITS.items())
        + "; 31 is a whole conversation closed with FINs. It is what tshark shows on the "
        "conversation's last frame when it reads the file twice (`tshark -2`): every "
        "segment counted. Null only in a report read from kalab.report/1.", None)
    client_bytes: int | None = doc(
        "Bytes of data the client sent, from its sequence numbers (Zeek's `orig_bytes`): "
        "from its first byte to the furthest it reached, holes included. Null only in a "
        "report read from kalab.report/1.", None)
    server_bytes: int | None = doc(
        "Bytes of data the server sent, as `client_bytes` (Zeek's `resp_bytes`).", None)
    close_announced_by: Side | None = doc(
        "Who said, in its last exchange, that the connection would end: `server` when its "
        "last response had `Connection: close` (or was HTTP/1.0 without `keep-alive`), "
        "else `client` when its last request did; null when neither did (or in a report "
        "read from kalab.report/1).", None)
    closed_as_announced: bool | None = doc(
        "True when it ended (a FIN or a RST, from either side: who sends the first FIN "
        "after `Connection: close` is a race) after `close_announced_by` said it would: "
        "the server kept its word, and no idle timeout is measured against what it "
        "advertised. Null when the capture cut what its last exchange said (see "
        "`truncated`), or in a report read from kalab.report/1.", None)
    keep_alive_max_kept: bool | None = doc(
        "Whether every `Keep-Alive: max=N` on it held: no more than N requests were "
        "answered on it after the response that said it (`HttpRequest.keep_alive_max` "
        "shows the countdown); null when no response said `max=`, or the capture cut "
        "what one said.", None)
    truncated: int = doc(
        "Segments of it the capture cut at its snap length (`Capture.snaplen`): their "
        "place in the sequence and their length are known, the payload past the cut is "
        "not. Nothing is lost: requests and responses are counted from the first lines "
        "kept, and what was cut is listed in each one's `unknown`.", 0)
    first_seen_at: float | None = doc(
        "When its first packet was seen, whatever it carried (its SYN, or on a connection "
        "the capture joined mid-stream its first segment): Zeek's conn.log `ts`. Null in a "
        "report from before it was recorded.", None)
    tls: Tls | None = doc(
        "Its TLS, when the client's first bytes opened a TLS handshake (HTTPS); null for "
        "plain text. Its requests are then read from the decrypted records (with a key "
        "log that has its secrets), else inferred from the records (`HttpRequest.inferred`); "
        "`idle_before_close` runs from the last application data, not from TLS's own "
        "records (handshake, session tickets, alerts), as far as they can be told apart "
        "(TLS 1.3 without keys cannot tell them: every record after the handshake counts "
        "as data).", None)


@dataclass
class Capture:
    """How the observer captured, and whether the capture can be trusted."""

    pcap: str | None = doc("The pcap file, relative to the results folder.", None)
    interface: str | None = doc("Interface captured on.", None)
    filter: str | None = doc("BPF filter used.", None)
    started_at: float | None = doc("When the capture socket was listening.", None)
    stopped_at: float | None = doc("When the capture stopped.", None)
    packets: int = doc("Packets written to the pcap.", 0)
    duplicates_dropped: int = doc("Loopback's outgoing copies dropped (each packet is "
                                  "seen twice on `lo`).", 0)
    kernel_drops: int | None = doc("Packets the kernel dropped before the observer read "
                                   "them (PACKET_STATISTICS); null when not known, as for "
                                   "a pcap from elsewhere.", None)
    problems: list[str] = doc("Why the capture cannot be trusted; empty when it can.",
                              factory=list)
    snaplen: int | None = doc("The capture file's snap length: the longest frame it keeps "
                              "whole (tcpdump's `-s`); null when not known or unlimited.",
                              None)
    truncated_frames: int = doc(
        "Frames the capture cut at its snap length: captured shorter than their length on "
        "the wire. Nothing is lost: each one's length and place are known, its payload past "
        "the cut is not (see `Connection.truncated`). A frame cut inside its TCP header "
        "cannot be read at all, and that is a capture problem.", 0)
    complete: bool = doc("False when the capture was stopped before the client was done "
                         "and its last packets had passed (a run cut short by a signal or a "
                         "failing role): the engine's expectations are then not checked.",
                         True)
    close_linger: float | None = doc(
        "Seconds of capture time a connection that is over (a RST, or both FINs with every "
        "byte in) waits for late segments before its record is final and written "
        "(`kalab.analyzer.CLOSE_LINGER`, Zeek's `tcp_close_delay`); null in a report made "
        "before records were written as connections ended.", None)
    idle_bound: float | None = doc(
        "Seconds of capture time without a segment after which a connection's record is "
        "final though it is not over; a later segment on its four-tuple starts a new "
        "connection, its SYN not seen (`kalab.analyzer.IDLE_BOUND`); null as for "
        "`close_linger`.", None)
    impairments: list[str] = doc(
        "Link impairments in force for this engine (`kalab/impairment.py`), one line per "
        "direction and mechanism, e.g. `server_to_client: delay 100ms by the user-space "
        "delay line (NFQUEUE 1), coming in by eth0: 7 packets delayed, 0 dropped as loss`; "
        "packets the delay line's queue could not hold are counted as LOST TO QUEUE "
        "OVERFLOW. Empty for a clean link.", factory=list)


@dataclass
class ExpectationResult:
    """One expectation from the scenario, checked against the wire."""

    claim: str = doc("The sentence being checked (the scenario's `claim`).")
    kind: str = doc("`connections`, `same_connection`, `new_connection`, `close`, `status`, "
                    "`story`; `sweep` for a sweep's claims.")
    line: int = doc("Line of the scenario file where it is stated.")
    passed: bool = doc("True when the wire agrees.")
    observed: str = doc("What the wire showed, in words.")


@dataclass
class EngineRun:
    """One engine's turn: the server, the capture, the wire, the verdict."""

    engine: str = doc("The scenario's name for this engine.")
    kind: str = doc("The engine's kind: the name of its module in `server/engines/` "
                    "(`kalab.kinds.engine_kinds()`), `unknown` for `kalab analyze`, or "
                    "`target` for a server the lab did not start (`kalab probe`, `kalab run "
                    "--target`).")
    description: str = doc("The engine and its settings in words.")
    version: str | None = doc("The engine's version as the server role reported it; for "
                              "`kalab probe`, the `Server` header; null for `kalab run "
                              "--target` (the lab sends nothing the scenario does not).")
    listen: str | None = doc("`address:port` the server listened on (a target's: the "
                             "address its host resolved to).")
    options: dict[str, Any] = doc("The engine's settings from the scenario.")
    capture: Capture = doc("How the wire was captured.")
    connections: list[Connection] = doc("Every connection seen, probes included.")
    requests: list[HttpRequest] = doc("Every request seen, in the order sent.")
    client_errors: list[dict[str, Any]] = doc("Client records that never reached the wire "
                                              "(e.g. connection refused).", factory=list)
    disagreements: list[str] = doc("Where the client's belief and the wire differ (a port, "
                                   "a reuse, an error the wire does not show).", factory=list)
    engine_log: list[str] = doc("What the engine logged as an error or a warning during "
                                "the run, verbatim (nginx's error log says why it answered "
                                "502: `upstream prematurely closed connection`, `recv() "
                                "failed (104: Connection reset by peer)`).", factory=list)
    expectations: list[ExpectationResult] = doc("Each expectation with its result.",
                                                factory=list)
    verdict: str = doc("`pass`, `fail`, `inconclusive` (the capture cannot be trusted), "
                       "`interrupted` (the run was cut short while this engine ran: its "
                       "expectations are not checked), or `observed` (no expectations).",
                       "observed")


@dataclass
class ProbeResult:
    """What `kalab probe URL` measured of a server the lab did not start (`kalab.probe`)."""

    url: str = doc("The URL probed (only http:// and https:// are).")
    status: int | None = doc("The status of the first response.", None)
    server: str | None = doc("The response's `Server` header, if any.", None)
    advertised_connection: str | None = doc("The first response's `Connection` header.",
                                            None)
    advertised_keep_alive: str | None = doc("The first response's `Keep-Alive` header.",
                                            None)
    advertised_timeout: float | None = doc("`timeout=` from that header, in seconds: what the "
                                           "server says of itself (a hint).", None)
    advertised_max: int | None = doc("`max=` from that header: requests a connection may "
                                     "still carry, as the server says.", None)
    idle_timeout: float | None = doc(
        "Seconds from the end of a response to the server's close of the idle connection, "
        "as enforced; 0 when it closes after every response; null when not found within "
        "the probe's bounds.", None)
    idle_found_by: str = doc(
        "How `idle_timeout` was found: `watched close` (the close was seen when it came), "
        "`closed after each response`, `bisection (between A and B s)` (no close reached "
        "the client: a request after that much idle failed), `none within N s`, or `not "
        "measured`.", "not measured")
    closed_with: str | None = doc("How the server ended the idle connection: `fin`, `rst`, "
                                  "or `silent` (nothing reached the client); null if unknown.",
                                  None)
    requests_per_connection: int | None = doc(
        "Requests one connection carried before the server ended it (or the probe stopped "
        "trying: see `requests_limited`).", None)
    requests_limited: bool = doc("True when the server ended that connection itself (a "
                                 "`Connection: close`, a close): `requests_per_connection` "
                                 "is its limit.", False)
    requests_sent: int = doc("Requests the probe sent in all (it is bounded).", 0)
    seconds: float = doc("How long the probe took.", 0.0)
    notes: list[str] = doc("What the probe could not learn, and why (a bound reached).",
                           factory=list)


@dataclass
class SweepPoint:
    """At one point of a sweep, for one engine and one counted request: how its trials
    ended (`kalab.sweep`)."""

    value: float = doc("The swept param's value at this point.")
    engine: str = doc("The engine.")
    request: str = doc("The counted request's reference (`2`, `httpx.2`).")
    client: str = doc("The client kind of the request's session (`requests`, `httpx`...).")
    trials: int = doc("The trials run at this point (those a signal cut short not counted).")
    counts: dict[str, int] = doc(
        "Trials per outcome, outcomes with none left out. The request's first try's story: "
        "`new`, `reused`, `replaced dropped connection`, `raced the FIN`, `unanswered`, or "
        "`not sent` (it never reached the wire); and, counted beside the story, `error` (the "
        "client ended with an error) and `retried` (the client tried it again: `REF~1`...).")
    shares: dict[str, float] = doc("`counts` divided by `trials`, to four places.")


@dataclass
class SweepEngine:
    """One engine's timeouts over all the trials of a sweep: the chart's marks."""

    engine: str = doc("The engine.")
    advertised_timeout: float | None = doc("The `Keep-Alive: timeout=` it advertised most "
                                           "often; null when it advertised none.", None)
    enforced_timeout: float | None = doc("The median idle time after which it closed a "
                                         "connection that had carried a request, itself; "
                                         "null when it never did.", None)
    enforced_low: float | None = doc("The shortest such idle time.", None)
    enforced_high: float | None = doc("The longest such idle time.", None)


@dataclass
class Sweep:
    """A sweep (`kalab.sweep`): the scenario at many values of one param, several trials
    each; the share of each outcome per point, engine and counted request."""

    param: str = doc("The swept param (`${NAME}` in the scenario).")
    values: list[float] = doc("The points, in order.")
    trials: int = doc("Trials per point, as planned.")
    at_once: int = doc("Trials that ran at once at most.")
    requests: list[str] = doc("The counted requests.")
    planned_trials: int = doc("Points times trials: the trials the sweep planned.")
    trial_reports: list[str] = doc("Each trial's own report, relative to the run's folder "
                                   "(`trials/POINT-TRIAL/report.json`, from 1): the raw "
                                   "records every count comes from.")
    doubtful_trials: list[str] = doc("Trials whose report is `inconclusive` or "
                                     "`interrupted` (their folders): they are counted, and "
                                     "make the sweep's verdict `inconclusive`.", factory=list)
    engines: list[SweepEngine] = doc("Each engine's advertised and enforced timeouts.",
                                     factory=list)
    points: list[SweepPoint] = doc("Per point, engine and counted request, in that order.",
                                   factory=list)
    expectations: list[ExpectationResult] = doc("The sweep's claims (kind `sweep`), each "
                                                "with its result.", factory=list)
    send_lags: dict[str, list[float]] = doc(
        "Per request of the scenario (its reference; a retry's tries left out), its "
        "`send_lag` in every trial, in seconds: how faithfully the client kept the "
        "scenario's timing (a counted request's lag moves it off its point).", factory=dict)


@dataclass
class TargetServer:
    """The server a `kalab run --target URL SCENARIO` ran the scenario's sessions against:
    one the lab did not start (`kalab.target`). Its turn is the run of a pseudo-engine
    named `target` (kind `target`), captured on the client's side of the wire."""

    url: str = doc("The URL given: the server's root, `http://` or `https://` (over HTTPS "
                   "the client writes its TLS secrets to the run's key log, and the "
                   "requests are read off the wire with it).")
    address: str = doc("The first address the URL's host resolved to when the run started "
                       "(of those this host has a route to): the one a client tries first.")
    port: int = doc("The server's TCP port, from the URL (the scenario's `port` is not "
                    "used).")
    interface: str = doc("The interface this host's packets to `address` leave by: where "
                         "the capture was taken.")
    engines_ignored: list[str] = doc("The scenario's engines, by name: none was started. "
                                     "The sessions ran once, against the target.")
    expectations_of: str | None = doc("The engine whose `expect` list was checked against "
                                      "the target (`--expectations-of`, or the scenario's "
                                      "only engine with any); null when none was.")
    max_requests: int = doc("The most requests the scenario could send (each try of a "
                            "client's retries counted) for the run to be allowed.")
    max_seconds: float = doc("The most seconds the run could take: the scenario's planned "
                             "time must fit, and the run is stopped past it.")
    rate: float = doc("Requests a second at most, all sessions together; a request held "
                      "back shows as its `send_lag`.")
    burst: int = doc("Requests that may leave at once before `rate` holds them back.")
    ca: str | None = doc("With an `https://` URL, the CA file the clients trusted "
                         "(`--target-ca`, copied into the run folder as `target-ca.pem`); "
                         "null: this host's trusted CAs (or an `http://` URL).", default=None)
    addresses: list[str] = doc(
        "Every address the URL's host resolved to that this host has a route to, `address` "
        "first, in the order a client tries them (until one answers: `localhost` may be "
        "`::1`, then `127.0.0.1`): the capture takes packets to and from any of them "
        "(`Capture.filter`). Empty in reports written before it was recorded: `address` "
        "alone was captured.", factory=list)


@dataclass
class Report:
    """The whole run."""

    schema: str = doc(f"Always `{SCHEMA}`; bumped when a field changes meaning.")
    scenario: str | None = doc("The scenario file, or null for `kalab analyze`.")
    name: str = doc("The scenario's name.")
    runtime: str = doc("`netns`, `local`, `compose`, `kubernetes` (deploy/kubernetes/), "
                       "`target` (`kalab run --target`: the lab's roles on this host, the "
                       "server one it did not start), `probe` (`kalab probe`), or `analyze`.")
    started_at: float = doc("When the run started.")
    finished_at: float = doc("When the run finished.")
    runs: list[EngineRun] = doc("One per engine, in the order run.")
    verdict: str = doc("`interrupted` if the run was cut short (see `complete`), else "
                       "`inconclusive` if any capture cannot be trusted, else `fail` if any "
                       "engine failed, `pass` if any passed; `observed` with no "
                       "expectations.")
    exit_code: int = doc("0 pass or observed, 1 fail, 3 inconclusive, 5 interrupted; 2 (bad "
                         "input) only for `kalab analyze` of a capture file cut short, whose "
                         "report covers what was read before the bad byte.")
    complete: bool = doc("False when the run was cut short (Ctrl-C, SIGTERM, a stopped "
                         "container): `phase` says where, `engines_not_run` which engines "
                         "never ran, and the verdict is `interrupted`.", True)
    phase: str | None = doc("Where an incomplete run was cut short: `setup` (making the "
                            "network), `capture start`, `server start`, `scenario` (the "
                            "client running), `between engines`, or `report writing`; null "
                            "for a complete run.", None)
    engines_not_run: list[str] = doc("The scenario's engines whose turn never came (an "
                                     "incomplete run); empty when every engine ran.",
                                     factory=list)
    student: str | None = doc("The student ID a lab was run for (`kalab run LAB --student "
                              "ID`); null otherwise.", None)
    params: dict[str, Any] = doc("The lab's parameters as drawn for the student (or their "
                                 "defaults), by name; empty for a scenario without any.",
                                 factory=dict)
    probe: ProbeResult | None = doc("What `kalab probe` measured (runtime `probe`); null "
                                    "for every other run.", None)
    sweep: Sweep | None = doc("A sweep's points and claims (`kalab.sweep`); null for a run "
                              "that is not a sweep. A sweep's `runs` is empty: each trial "
                              "has its own report.", None)
    target: TargetServer | None = doc("The server a `kalab run --target` ran against "
                                      "(runtime `target`); null for every other run.", None)


def overall_verdict(verdicts: list[str]) -> str:
    if "interrupted" in verdicts:
        return "interrupted"
    if "inconclusive" in verdicts:
        return "inconclusive"
    if "fail" in verdicts:
        return "fail"
    if "pass" in verdicts:
        return "pass"
    return "observed"


def to_json(report: Report) -> str:
    """The report as indented JSON, each connection and request on a line of its own.

    A record is written compactly (no space after ``:`` or ``,``, UTF-8 as it
    is), one a line: a report of 20,000 connections stays a grep away. The
    document parses to what `dataclasses.asdict` gives, NaN and infinities as
    null. orjson writes the records where it is installed, the json module
    otherwise (the same document: a float below 1e-4 gets an exponent there).
    """
    return to_json_bytes(report).decode()


def to_json_bytes(report: Report) -> bytes:
    """`to_json` in UTF-8, for a file or a pipe: no trip through text and back."""
    return b"".join(_pieces(report))


def write_json(report: Report, stream: BinaryIO) -> None:
    """Write `to_json_bytes` to ``stream`` piece by piece as they are made, never as one
    copy: records read back from disk (`Records`) pass through memory a chunk at a time."""
    _dump(_plain(report), 0, _Writing(stream))


class _Writing:
    """A stream taking pieces as `_dump` gives them to a list."""

    __slots__ = ("append",)

    def __init__(self, stream: BinaryIO) -> None:
        self.append = stream.write


def _pieces(report: Report) -> list[bytes | memoryview]:
    """The document as pieces in order: a report of tens of megabytes is copied once at
    most (by the caller's join or write), not once for each level of nesting."""
    out: list[bytes | memoryview] = []
    _dump(_plain(report), 0, out)
    return out


class Seen(NamedTuple):
    """A connection at a glance, as a spool keeps it beside the record (`Records.seen`)."""

    id: int  # `Connection.id`
    syn_seen: bool  # `Connection.syn_at` is not None
    gaps: bool  # `Connection.gaps` is not 0


class Records(Sequence):
    """Connections or requests read back each time they are walked (`kalab.spool`):
    what the writer and the views walk as they walk a list of records, in the order
    ``walk`` gives them (requests: in the order sent, as the report has them).

    Ways to need less than a walk of whole records, where given: ``at``, the record
    at an index, read alone; ``lines``, the lines the report writes for them
    (`record_line`'s bytes), which the writer takes as they are; for connections,
    ``seen``, each one's `Seen`, which the capture's problems are made of
    (`kalab.evidence.wire_problems`), and ``origin``, the earliest ``syn_at`` (else
    ``established_at``) of one that is not a probe, or None: the terminal's time
    origin (`kalab.summary.time_zero`).
    """

    def __init__(self, length: int, walk: Callable[[], Iterable[Any]],
                 at: Callable[[int], Any] | None = None,
                 lines: Callable[[], Iterable[bytes]] | None = None,
                 seen: Callable[[], Iterable[Seen]] | None = None,
                 origin: Callable[[], float | None] | None = None) -> None:
        self._length, self._walk = length, walk
        self.at, self.lines, self.seen, self.origin = at, lines, seen, origin

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Any]:
        return iter(self._walk())

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]  # no slices
        if not -self._length <= index < self._length:
            raise IndexError(index)
        index %= self._length
        if self.at is not None:
            return self.at(index)
        for number, record in enumerate(self):
            if number == index:
                return record
        raise IndexError(index)


_ONE_LINE = (Connection, HttpRequest)
_CHUNK = 4096  # records of a `Records` written at once
_SCALARS = (str, int, float, bool, type(None))


def finite(value: Any) -> Any:
    """``value`` with every NaN and infinity in it, through dicts, lists and tuples, made
    None: what strict JSON can write, and what a report says of a value it lacks."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def _encode(value: Any) -> str:
    """``value`` as strict JSON, as json writes it in an indented document. json would
    write a NaN or an infinity as NaN or Infinity, which strict parsers refuse; they are
    written as null, as orjson writes them."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(finite(value))


def _compact(value: Any) -> bytes:
    """``value`` as strict JSON on one line, as orjson writes it: no spaces, UTF-8 as it
    is, NaN and infinities as null. orjson where installed; json for what orjson cannot
    write (a key that is not a string) or where it is not installed."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(finite(value), separators=(",", ":"), ensure_ascii=False)
    return text.encode()


try:  # writes records several times faster than json; not in Debian 12
    import orjson
except ImportError:  # pragma: no cover - the json module writes the same document
    orjson = None


def _plain(value: Any) -> Any:
    """Dataclasses to dicts, like `dataclasses.asdict` but without its deep copies;
    connections and requests are left for `_dump` to write on one line."""
    if type(value) in _SCALARS or isinstance(value, _ONE_LINE):
        return value
    if isinstance(value, Records):
        return value if value else []  # read back as they are written
    if isinstance(value, list) and value and isinstance(value[0], _ONE_LINE):
        return value  # records, left as they are: `_record_lines` looks at each
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def record_line(record: Connection | HttpRequest) -> bytes:
    """A connection or request on one line: its fields (only those: not an attribute set
    beside them), in their order. orjson writes the record itself where it can (a third
    of the time of making a dict of it first: big captures have millions)."""
    if orjson is not None and len(vars(record)) == len(record.__dataclass_fields__):
        try:
            return orjson.dumps(record)
        except TypeError:  # json's turn: an integer past 64 bits, a key not a string
            pass
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    try:
        return _compact(values)
    except TypeError:  # a value json cannot write as it stands (a dataclass): as asdict would
        return _compact({name: _plain(value) for name, value in values.items()})


def _record_lines(records: list[Any] | Records, level: int,
                  out: list[bytes | memoryview]) -> None:
    """A list of connections or requests, one a line, less the closing bracket: `_CHUNK`
    records at a time (a `Records` is read back from disk as it is walked)."""
    pad = b"\n" + b"  " * (level + 1)
    out.append(b"[" + pad)
    between = b"," + pad
    lines = records.lines if isinstance(records, Records) else None
    walked, first = iter(records if lines is None else lines()), True
    while chunk := list(islice(walked, _CHUNK)):
        if not first:
            out.append(between)
        if lines is None:
            _some_lines(chunk, level, between, out)
        else:  # written already, as `record_line` writes them
            out.append(between.join(chunk))
        first = False


def _some_lines(records: list[Any], level: int, between: bytes,
                out: list[bytes | memoryview]) -> None:
    for number, r in enumerate(records):
        if number:
            out.append(between)
        if isinstance(r, _ONE_LINE):
            out.append(record_line(r))
        else:  # a list of records with something else in it
            _dump(_plain(r), level + 1, out)


def _dump(value: Any, level: int, out: list[bytes | memoryview]) -> None:
    if isinstance(value, _ONE_LINE):
        out.append(record_line(value))
        return
    pad = ("\n" + "  " * (level + 1)).encode()
    end = ("\n" + "  " * level).encode()
    if isinstance(value, dict) and value:
        separator = b"{"
        for k, v in value.items():
            out.append(separator + pad + _encode(_key(k)).encode() + b": ")
            _dump(v, level + 1, out)
            separator = b","
        out.append(end + b"}")
        return
    if isinstance(value, (list, Records)) and value:
        if isinstance(value, Records) or isinstance(value[0], _ONE_LINE):
            _record_lines(value, level, out)
        else:
            separator = b"["
            for v in value:
                out.append(separator + pad)
                _dump(v, level + 1, out)
                separator = b","
        out.append(end + b"]")
        return
    out.append(_encode(value).encode())


def _key(key: Any) -> str:
    """A dict key as json writes it: always a string."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None:
        return _encode(key)
    return str(key) if isinstance(key, int) else repr(key)


def write(report: Report, folder: Path) -> Path:
    path = folder / "report.json"
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "wb") as out:
        write_json(report, out)
        out.write(b"\n")
    tmp.replace(path)
    return path


def from_dict(data: dict[str, Any]) -> Report:
    """Rebuild a Report from its JSON form (for `kalab report`, grading and tests).

    Reads `kalab.report/2` and `kalab.report/1`. A /1 report keeps its ``schema``;
    its connections' ``closed_by`` is split as /2 has it (`server-reset` is
    closed by the server with `rst`, `refused` by the server with `rst`, `open` by
    nobody), and the fields /2 added take their defaults. ValueError for another.
    """
    schema = data.get("schema")
    if schema not in SCHEMAS_READ:
        raise ValueError(f"schema {schema!r} is not one of {', '.join(SCHEMAS_READ)}")
    connection = _connection_from_1 if schema == SCHEMA_1 else dict
    runs = []
    for run in data["runs"]:
        run = dict(run)
        run["capture"] = Capture(**run["capture"])
        run["connections"] = [connection_from_dict(connection(c)) for c in run["connections"]]
        run["requests"] = [HttpRequest(**r) for r in run["requests"]]
        run["expectations"] = [ExpectationResult(**e) for e in run["expectations"]]
        runs.append(EngineRun(**run))
    probe = ProbeResult(**data["probe"]) if data.get("probe") else None
    target = TargetServer(**data["target"]) if data.get("target") else None
    sweep = None
    if data.get("sweep"):
        sweep = dict(data["sweep"])
        sweep["engines"] = [SweepEngine(**e) for e in sweep["engines"]]
        sweep["points"] = [SweepPoint(**p) for p in sweep["points"]]
        sweep["expectations"] = [ExpectationResult(**e) for e in sweep["expectations"]]
        sweep = Sweep(**sweep)
    return Report(**{**data, "runs": runs, "probe": probe, "target": target, "sweep": sweep})


def connection_from_dict(record: dict[str, Any]) -> Connection:
    """A connection from its JSON form; its ``tls`` (absent before it was recorded) too."""
    tls = record.get("tls")
    if tls is not None:
        record = {**record, "tls": Tls(**tls)}
    return Connection(**record)


def _connection_from_1(record: dict[str, Any]) -> dict[str, Any]:
    """A `kalab.report/1` connection's fields as /2 names them."""
    record = dict(record)
    closed = record.get("closed_by")
    if closed == "open":
        record["closed_by"], record["closed_with"] = None, None
    elif closed == "refused":
        record["closed_by"], record["closed_with"] = Side.SERVER, Closing.RST
    elif isinstance(closed, str) and closed.endswith("-reset"):
        record["closed_by"], record["closed_with"] = closed.removesuffix("-reset"), Closing.RST
    else:
        record["closed_with"] = Closing.FIN
    return record
