"""Properties of the analyzer under everything TCP may do to a valid HTTP/1.x exchange.

hypothesis builds a few connections, each carrying requests with bodies framed
by Content-Length or chunked coding, pipelined or one at a time, with
`100 Continue`, HEAD, 204 and HTTP/1.0 responses framed by the close, a client
that half-closes after its last request; cuts each
direction's bytes at random points; reorders the segments of each flight,
duplicates segments (retransmissions, spurious or late, across the sequence
wrap), and interleaves the connections. Whatever it does, each request must
land on exactly one connection, at consecutive depths, paired with its own
response; and no byte string as payload may crash the analyzer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kalab.analyzer import Analyzer, Segment, analyze

T0 = 1_700_000_000.0
PORT = 8080
SEQ_MOD = 1 << 32
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass
class Exchange:
    """One request and the response it must be paired with."""

    method: str
    target: str
    request: bytes
    response: bytes
    status: int


@dataclass
class Plan:
    """A connection as hypothesis drew it, before TCP has its way with it."""

    number: int
    exchanges: list[Exchange]
    pipelined: bool
    closer: str  # "client" | "server"
    half_close: bool  # the client's FIN right after its last request (shutdown SHUT_WR)
    client_isn: int
    server_isn: int
    packets: list[tuple[str, int, int, bytes]] = field(default_factory=list)  # side, flags, seq..


def chunked(body: bytes, cuts: list[int]) -> bytes:
    bounds = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    pieces = [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@st.composite
def exchanges(draw, number: int, last: bool) -> Exchange:
    """One request/response pair; ``last``: it may be framed by the server's close."""
    target = f"/c{number}/{draw(st.integers(0, 10**6))}"
    method = draw(st.sampled_from(["GET", "POST", "HEAD"]))
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\n".encode()
    interim = b""
    if method == "POST":
        body = draw(st.binary(max_size=300))
        if draw(st.booleans()):
            head += b"Transfer-Encoding: chunked\r\n"
            body = chunked(body, draw(st.lists(st.integers(0, 400), max_size=4)))
        else:
            head += b"Content-Length: %d\r\n" % len(body)
        if draw(st.booleans()):
            head += b"Expect: 100-continue\r\n"
            interim = b"HTTP/1.1 100 Continue\r\n\r\n"
        request = head + b"\r\n" + body
    else:
        request = head + b"\r\n"
    status = draw(st.sampled_from([200, 201, 204, 304, 404]))
    body = draw(st.binary(max_size=400)) if status not in (204, 304) else b""
    framing = draw(st.sampled_from(["length", "chunked"] + (["close"] if last else [])))
    if method == "HEAD" and status not in (204, 304):
        response = b"HTTP/1.1 %d X\r\nContent-Length: 1234\r\n\r\n" % status  # no body follows
    elif status in (204, 304):
        response = b"HTTP/1.1 %d X\r\n\r\n" % status
    elif framing == "length":
        response = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)
    elif framing == "chunked":
        response = (b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n" % status
                    + chunked(body, draw(st.lists(st.integers(0, 500), max_size=4))))
    else:
        response = b"HTTP/1.0 %d X\r\n\r\n%s" % (status, body)  # ends with the server's FIN
    return Exchange(method, target, request, interim + response, status)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@st.composite
def plans(draw, number: int) -> Plan:
    count = draw(st.integers(1, 4))
    pairs = [draw(exchanges(number, last=n == count - 1)) for n in range(count)]
    closes_by_framing = pairs[-1].response.split(b"\r\n", 1)[0].startswith(b"HTTP/1.0")
    near_wrap = st.integers(SEQ_MOD - 2000, SEQ_MOD - 1)
    closer = "server" if closes_by_framing else draw(st.sampled_from(["client", "server"]))
    return Plan(number, pairs, pipelined=draw(st.booleans()), closer=closer,
                half_close=closer == "client" and draw(st.booleans()),
                client_isn=draw(st.one_of(st.integers(0, SEQ_MOD - 1), near_wrap)),
                server_isn=draw(st.one_of(st.integers(0, SEQ_MOD - 1), near_wrap)))


@st.composite
def wires(draw) -> tuple[list[Plan], list[Segment]]:
    """A few connections, cut, reordered within flights, duplicated and interleaved."""
    connections = [draw(plans(n)) for n in range(1, draw(st.integers(1, 3)) + 1)]
    flows = []
    for plan in connections:
        client, server = ("10.0.0.1", 40000 + plan.number), ("10.0.0.2", PORT)
        seq = {"client": plan.client_isn, "server": plan.server_isn}
        # Flights: runs of segments one side sends before it must wait for the other.
        flights: list[tuple[str, list[tuple[int, bytes]]]] = [("client", [(SYN, b"")]),
                                                               ("server", [(SYN | ACK, b"")])]
        if plan.pipelined:
            order = [("client", b"".join(e.request for e in plan.exchanges)),
                     ("server", b"".join(e.response for e in plan.exchanges))]
        else:
            order = [(side, data) for e in plan.exchanges
                     for side, data in (("client", e.request), ("server", e.response))]
        for side, data in order:
            points = draw(st.lists(st.integers(0, 2000), max_size=6))
            flights.append((side, [(PSH | ACK, piece) for piece in cut(data, points)]))
        first = plan.closer
        other = "client" if first == "server" else "server"
        if plan.half_close:  # the FIN leaves with the last request; responses still come
            last = max(n for n, (side, _) in enumerate(flights) if side == "client")
            flights[last] = ("client", [*flights[last][1], (FIN | ACK, b"")])
        elif flights[-1][0] == first:  # the FIN leaves with the closer's last data
            flights[-1] = (first, [*flights[-1][1], (FIN | ACK, b"")])
        else:
            flights.append((first, [(FIN | ACK, b"")]))
        flights.append((other, [(FIN | ACK, b"")]))
        packets: list[Segment] = []
        for side, flight in flights:
            src, dst = (client, server) if side == "client" else (server, client)
            sent = []
            for flags, payload in flight:
                sent.append((flags, seq[side], payload))
                seq[side] = (seq[side] + len(payload) + (1 if flags & (SYN | FIN) else 0)) \
                    % SEQ_MOD
            # TCP may deliver a flight in any order: the next flight waits for all of it.
            if len(sent) > 1 and sent[0][0] & SYN == 0:
                sent = draw(st.permutations(sent))
            for flags, s, payload in sent:
                packets.append(Segment(0.0, *src, *dst, flags, s, 0, payload))
        # Retransmissions, spurious or late: a copy of a data segment anywhere after it.
        for _ in range(draw(st.integers(0, 3))):
            data = [n for n, p in enumerate(packets) if p.payload]
            if data:
                n = draw(st.sampled_from(data))
                packets.insert(draw(st.integers(n + 1, len(packets))), packets[n])
        flows.append(packets)
    # Interleave the connections, each keeping its own order.
    merged: list[Segment] = []
    while any(flows):
        flow = draw(st.sampled_from([f for f in flows if f]))
        merged.append(flow.pop(0))
    stamped = [seg._replace(ts=T0 + n * 0.001) for n, seg in enumerate(merged)]
    return connections, stamped


def check_structure(connections, requests) -> None:
    """Each request on exactly one connection, depths 1, 2, 3... on each."""
    by_id = {r.id: r for r in requests}
    assert len(by_id) == len(requests)
    listed = [rid for c in connections for rid in c.requests]
    assert sorted(listed) == sorted(by_id)  # each request listed once, on one connection
    for conn in connections:
        carried = [by_id[rid] for rid in conn.requests]
        assert all(r.connection == conn.id for r in carried)
        assert sorted(r.depth for r in carried) == list(range(1, len(carried) + 1))
        assert all(r.reused == (r.depth > 1) for r in carried)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wires())
def test_reordering_duplicates_and_cuts_keep_every_request_in_place(wire):
    plans_drawn, segments = wire
    connections, requests = analyze(segments, {PORT})
    check_structure(connections, requests)
    assert len(connections) == len(plans_drawn)
    for plan in plans_drawn:
        conn = next(c for c in connections if c.client.endswith(f":{40000 + plan.number}"))
        carried = sorted((r for r in requests if r.connection == conn.id), key=lambda r: r.depth)
        assert [(r.method, r.target, r.status) for r in carried] == [
            (e.method, e.target, e.status) for e in plan.exchanges]
        assert all(r.response_end_at is not None for r in carried)  # every response ended
        assert conn.complete and conn.gaps == 0
        assert conn.first_fin_by == plan.closer
        assert conn.syn_retransmits == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 0x3F), st.integers(0, SEQ_MOD - 1),
                          st.binary(max_size=200)), max_size=40),
       st.binary(max_size=64))
def test_any_bytes_as_payload_never_crash(packets, prefix):
    """Arbitrary flags, sequence numbers and payloads: records come out, consistent."""
    analyzer = Analyzer()
    client, server = ("10.0.0.1", 40000), ("10.0.0.2", PORT)
    analyzer.feed(Segment(T0, *client, *server, SYN, 100))
    analyzer.feed(Segment(T0, *server, *client, SYN | ACK, 900, 101))
    analyzer.feed(Segment(T0, *client, *server, PSH | ACK, 101, 901, prefix))
    for n, (up, flags, seq, payload) in enumerate(packets):
        src, dst = (client, server) if up else (server, client)
        analyzer.feed(Segment(T0 + n * 0.001, *src, *dst, flags, seq, 0, payload))
    connections, requests = analyzer.finish()
    check_structure(connections, requests)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=120), min_size=1, max_size=12),
       st.lists(st.binary(min_size=1, max_size=120), min_size=1, max_size=12))
def test_any_bytes_in_order_never_crash(up, down):
    """Garbage and fragments of HTTP, in sequence both ways: parsed or given up on, never a
    crash."""
    vocabulary = [b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"Content-Length: 3\r\n",
                  b"Transfer-Encoding: chunked\r\n", b"\r\n", b"5\r\nhello\r\n", b"0\r\n\r\n"]
    analyzer = Analyzer({PORT})
    client, server = ("10.0.0.1", 40000), ("10.0.0.2", PORT)
    analyzer.feed(Segment(T0, *client, *server, SYN, 100))
    analyzer.feed(Segment(T0, *server, *client, SYN | ACK, 900, 101))
    seq = {"up": 101, "down": 901}
    for n in range(max(len(up), len(down))):
        for side, pieces in (("up", up), ("down", down)):
            if n < len(pieces):
                data = pieces[n] + vocabulary[n % len(vocabulary)]
                src, dst = (client, server) if side == "up" else (server, client)
                analyzer.feed(Segment(T0 + n, *src, *dst, PSH | ACK, seq[side], 0, data))
                seq[side] += len(data)
    connections, requests = analyzer.finish()
    check_structure(connections, requests)
    assert len(connections) == 1 and connections[0].gaps == 0


# The fields of a request that come from its bytes (not its place among the requests seen).
FROM_THE_BYTES = ("method", "target", "version", "request_connection", "request_body_len",
                  "response_at", "response_end_at", "status", "response_version",
                  "response_connection", "response_keep_alive", "advertised_timeout",
                  "keep_alive_max", "response_body_len")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wires(), st.integers(0, 120))
def test_a_snap_length_loses_no_packet_and_guesses_nothing(wire, keep):
    """Every segment cut to its first ``keep`` bytes of payload, as `tcpdump -s` cuts
    frames: the connections are what they were, and every request seen is one that was
    sent, each field either what the whole capture says or listed as unknown."""
    _, segments = wire
    whole_connections, whole_requests = analyze(segments, {PORT})
    cut = [seg._replace(payload=seg.payload[:keep], cut=max(0, len(seg.payload) - keep))
           for seg in segments]
    connections, requests = analyze(cut, {PORT})
    check_structure(connections, requests)

    def facts(conns):
        return [(c.client, c.syn_at, c.first_fin_by, c.first_fin_at, c.second_fin_at,
                 c.closed_by, c.closed_with, c.last_data_at, c.complete, c.gaps, c.history,
                 c.conn_state, c.completeness, c.client_bytes, c.server_bytes,
                 c.keepalive_probes) for c in conns]

    assert facts(connections) == facts(whole_connections)
    sent = {}
    for request in whole_requests:
        sent.setdefault((request.connection, request.sent_at, request.method), []).append(request)
    for request in requests:
        matches = sent.get((request.connection, request.sent_at, request.method))
        assert matches, f"{request.method} {request.target}: no such request was sent"
        original = matches.pop(0)
        unknown = request.unknown or ()
        for name in FROM_THE_BYTES:
            mine, theirs = getattr(request, name), getattr(original, name)
            if name not in unknown:
                assert mine == theirs, (name, mine, theirs)
            elif isinstance(mine, str):
                assert theirs is not None and theirs.startswith(mine), (name, mine, theirs)
            elif mine is not None:
                assert mine == theirs, (name, mine, theirs)
