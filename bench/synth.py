"""A big, realistic pcap made with `struct`: the analysis half of the benchmark.

20,000 keep-alive connections to two servers, 12 packets each (handshake,
two requests and their responses, the ACKs, both FINs), about 40 open at
once, written in capture order: 240,000 packets. ``segments_per_body``
cuts each response body into that many 64-byte segments (8: 520,000
packets), to show that memory follows the connection table and not the
packet count.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator
from pathlib import Path

from kalab.pcap import PcapWriter

T0 = 1_700_000_000.0
SERVERS = (("10.2.0.1", 8080), ("10.2.0.2", 8081))
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_ETH = bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00"


def _ip4(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


def frame(src: bytes, sport: int, dst: bytes, dport: int, flags: int, seq: int, ack: int,
          payload: bytes = b"") -> bytes:
    """Ethernet, IPv4, TCP (no options), payload: what tshark dissects like a real one."""
    total = 40 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      5 << 4, flags, 65535, 0, 0)
    return _ETH + ip + tcp + payload


def connection(n: int, start: float, segments_per_body: int) -> Iterator[tuple[float, bytes]]:
    """One connection's packets, in order, with their capture times."""
    server, sport = SERVERS[n % len(SERVERS)]
    s = _ip4(server)
    c = _ip4(f"10.1.{(n >> 8) & 0xFF}.{n & 0xFF}")
    cport = 20000 + (n >> 16) * 7 + n % 4000
    ci, si = (n * 7919) & 0xFFFFFFFF, (n * 104729 + 17) & 0xFFFFFFFF
    t = start
    step = 0.0005

    def tick() -> float:
        nonlocal t
        t += step
        return t

    yield tick(), frame(c, cport, s, sport, SYN, ci, 0)
    yield tick(), frame(s, sport, c, cport, SYN | ACK, si, ci + 1)
    cseq, sseq = ci + 1, si + 1
    yield tick(), frame(c, cport, s, sport, ACK, cseq, sseq)
    for i, close in ((1, False), (2, True)):
        req = (f"GET /item/{n}/{i} HTTP/1.1\r\nHost: {server}:{sport}\r\n"
               "User-Agent: bench\r\n\r\n").encode()
        yield tick(), frame(c, cport, s, sport, PSH | ACK, cseq, sseq, req)
        cseq += len(req)
        body = b"x" * (64 * segments_per_body)
        head = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: "
                f"{'close' if close else 'keep-alive'}\r\nKeep-Alive: timeout=5\r\n\r\n").encode()
        data = head + body
        cut = len(head) + 64 if segments_per_body > 1 else len(data)
        pieces = [data[:cut]] + [data[k:k + 64] for k in range(cut, len(data), 64)]
        for piece in pieces:
            yield tick(), frame(s, sport, c, cport, PSH | ACK, sseq, cseq, piece)
            sseq += len(piece)
        yield tick(), frame(c, cport, s, sport, ACK, cseq, sseq)
    yield tick(), frame(s, sport, c, cport, FIN | ACK, sseq, cseq)
    yield tick(), frame(c, cport, s, sport, FIN | ACK, cseq, sseq + 1)
    yield tick(), frame(s, sport, c, cport, ACK, sseq + 1, cseq + 1)


def write(path: Path, connections: int = 20_000, segments_per_body: int = 1,
          per_second: float = 2000.0) -> int:
    """Write the pcap; returns its packet count.

    The packets in order of (time, bytes), as `heapq.merge` of every connection's
    would give them, but a connection is started only when its first packet is
    next: memory follows the connections open at once, not the file's (two million
    for the 24-million-packet pcap)."""
    def stream(n: int) -> Iterator[tuple[float, bytes]]:
        return connection(n, T0 + n / per_second, segments_per_body)

    heap: list[tuple[float, bytes, int, Iterator[tuple[float, bytes]]]] = []
    waiting = None  # the next connection not started, with its first packet
    started = count = 0
    with PcapWriter(path) as writer:
        while True:
            while started < connections:  # start those whose first packet comes next
                if waiting is None:
                    waiting = stream(started)
                    first = next(waiting)
                if heap and (first[0], first[1]) > (heap[0][0], heap[0][1]):
                    break
                heapq.heappush(heap, (first[0], first[1], started, waiting))
                waiting, started = None, started + 1
            if not heap:
                return count
            ts, data, n, packets = heapq.heappop(heap)
            writer.write(ts, data)
            count += 1
            following = next(packets, None)
            if following is not None:
                heapq.heappush(heap, (following[0], following[1], n, packets))
