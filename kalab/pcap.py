"""pcap and pcapng files and link-layer frames: bytes on disk to `Segment` values.

A plain `struct` loop: the facts file measured it at about ten times the
speed of dpkt and a hundred times scapy's PcapReader on the same file, and
the analyzer needs only addresses, ports, flags, sequence numbers and
payload. The file is read in large blocks and each record is decoded in
place with ``struct.unpack_from``: no per-packet copy but the payload.

`SegmentReader` can leave out the segments that cannot change any record
(``skip_acks``): a pure ACK (no payload, no SYN, FIN or RST) on a four-tuple
it has already handed on, whose direction has already handed on a pure ACK
since its last SYN (or since the other direction's SYN without ACK: a new
connection), and whose sequence number is where its direction has reached
(the end of the furthest segment handed on since the direction's last SYN,
a SYN or FIN counting one), or whose direction has handed on nothing else
yet. Any other pure ACK is handed on: a direction's first is a letter of
Zeek's history and a bit of Wireshark's completeness, and a TCP keep-alive
probe is a pure ACK one behind that point, which the analyzer counts. The point only
moves forward (sequence numbers compared as TCP does, modulo 2^32), so a
retransmission never brings it back to where a probe would sit. The first
segment of a four-tuple is always handed on, even a pure ACK: for a capture
that started late it may be the only sign that the connection existed.
Memory is the block buffer plus one entry per direction of a four-tuple; it
does not grow with the packet count.

`SegmentReader.background_batches` does the reading in a forked child
process, which sends the decoded batches down a pipe: on two cores, the
reading of a big file then costs the analysis next to nothing.

Every length and time in a file is checked before it is used, for a file
from a stranger is hostile: a record or block longer than 4 MiB (whatever
the file header's snap length says), a pcapng block shorter than its own
fields, an interface option that runs past its block, a timestamp
resolution finer than 10^-19 or 2^-63 s, or a record time outside the
years 1970 to 9999, is a `PcapError` naming the byte where its record or
block starts; what came before it is handed on as usual.

Writes classic microsecond pcap, which tcpdump and tshark open.
"""

from __future__ import annotations

import ipaddress
import marshal
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from kalab.analyzer import Segment

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_LINKTYPE_RAW_OLD = 12  # DLT_RAW as some old writers stored it

_ETH_IPV4, _ETH_IPV6, _ETH_VLAN, _ETH_QINQ = 0x0800, 0x86DD, 0x8100, 0x88A8
_SNAPLEN = 262144
# The longest record or block read: a length past it is corrupt, whatever a header says
# (a snap length of 4 GiB would make a read of 4 GiB). Wireshark's own limit is _SNAPLEN.
_MAX_RECORD = 16 * _SNAPLEN
# Record times a report can hold: from 1970 to the end of the year 9999, what `datetime`
# (and so `kalab report`) can show. Only pcapng can say more: 64-bit ticks, its own units.
_LATEST = 253402300800.0
# if_tsresol: a tick of at least 10^-19 or 2^-63 s, as Wireshark reads it (the ticks in a
# second fit in 64 bits); a finer one is corrupt.
_MAX_TSRESOL_DECIMAL, _MAX_TSRESOL_BINARY = 19, 63
_BLOCK = 1 << 20
_BATCH = 2048  # segments handed on at a time
_BACKGROUND_MIN_SIZE = 4 << 20  # bytes of file below which a reading process costs more
_FRAME = struct.Struct("<?I")  # a background reader's message: last?, length
_AF_INET6 = (10, 24, 28, 30)  # Linux, OpenBSD, FreeBSD, macOS
_NO_FRAME = (None, 0, 0)
_SEQ_MASK, _SEQ_HALF = 0xFFFFFFFF, 0x80000000

# (header length, offset of the big-endian ethertype) for the cooked link types.
_COOKED = {LINKTYPE_LINUX_SLL: (16, 14), LINKTYPE_LINUX_SLL2: (20, 0)}
_SUPPORTED = {LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
              LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2, _LINKTYPE_RAW_OLD}

_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_IPV4_TCP = struct.Struct("!2xH2xH1xB2xII")  # total length, fragment, protocol, src, dst
_TCP = struct.Struct("!HHIIBB")  # ports, seq, ack, data offset, flags
# An IPv4 header of 20 bytes and the TCP header after it, from the total length on.
_ETH_IPV4_TCP = struct.Struct("!2xH2xH1xB2xIIHHIIBB")


class PcapError(Exception):
    """A file that is not a readable capture; says at which byte it went wrong."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset


def _ip_offset(linktype: int, frame: bytes, start: int, end: int) -> int | None:
    """Where the IP header starts in a frame, or None if the frame is not IP."""
    if linktype == LINKTYPE_ETHERNET:
        offset = start + 14
        if offset > end:
            return None
        ethertype = (frame[offset - 2] << 8) | frame[offset - 1]
        while ethertype in (_ETH_VLAN, _ETH_QINQ) and offset + 4 <= end:
            ethertype = (frame[offset + 2] << 8) | frame[offset + 3]
            offset += 4
    elif linktype in _COOKED:
        length, where = _COOKED[linktype]
        offset = start + length
        if offset > end:
            return None
        ethertype = (frame[start + where] << 8) | frame[start + where + 1]
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        offset = start + 4
        if offset > end:
            return None
        order = "big" if linktype == LINKTYPE_LOOP else "little"
        family = int.from_bytes(frame[start:offset], order)
        if family > 0xFFFF:  # a NULL header written on a host of the other byte order
            family = int.from_bytes(frame[start:offset], "big" if order == "little" else "little")
        ethertype = _ETH_IPV4 if family == 2 else _ETH_IPV6 if family in _AF_INET6 else 0
    elif linktype in (LINKTYPE_RAW, _LINKTYPE_RAW_OLD, LINKTYPE_IPV4, LINKTYPE_IPV6):
        offset = start
        version = frame[start] >> 4 if end > start else 0
        ethertype = _ETH_IPV4 if version == 4 else _ETH_IPV6 if version == 6 else 0
    else:
        raise PcapError(f"link type {linktype} is not supported")
    return offset if ethertype in (_ETH_IPV4, _ETH_IPV6) else None


def _tcp(packet: bytes, ip: int, end: int, wire_end: int | None = None
         ) -> tuple[int | bytes, int | bytes, int, int, int, int, int, int, int, int] | None:
    """(src, dst, sport, dport, flags, seq, ack, payload start, payload end, cut) of an IP
    packet carrying TCP, addresses as int (IPv4) or bytes (IPv6); None for anything else.
    ``wire_end``: where the frame ended on the wire, past ``end`` when the capture cut it
    (its snap length); ``cut`` is then the payload the IP header says came after ``end``."""
    if end - ip < 20:
        return None
    claimed = wire_end if wire_end is not None and wire_end > end else end
    version = packet[ip] >> 4
    if version == 4:
        ihl = (packet[ip] & 0x0F) * 4
        total, frag, proto, src, dst = _IPV4_TCP.unpack_from(packet, ip)
        if proto != 6 or ihl < 20 or frag & 0x1FFF:
            return None  # not TCP, corrupt, or a later fragment (no TCP header)
        tcp = ip + ihl
        if total:  # TSO frames may say 0; anything past the IP length is padding
            end = min(end, ip + total)
            claimed = min(claimed, ip + total)
    elif version == 6:
        if end - ip < 40:
            return None
        next_header = packet[ip + 6]
        tcp = ip + 40
        # Skip the extension headers that can stand before TCP.
        while next_header in (0, 43, 60) and end >= tcp + 8:
            next_header = packet[tcp]
            tcp += (packet[tcp + 1] + 1) * 8
        if next_header != 6:
            return None
        src, dst = packet[ip + 8:ip + 24], packet[ip + 24:ip + 40]
        plen = (packet[ip + 4] << 8) | packet[ip + 5]
        if plen:
            end = min(end, ip + 40 + plen)
            claimed = min(claimed, ip + 40 + plen)
    else:
        return None
    if end - tcp < 20:
        return None
    sport, dport, seq, ack, offset, flags = _TCP.unpack_from(packet, tcp)
    data = tcp + (offset >> 4) * 4
    if data < tcp + 20:
        return None  # a data offset below the header's own size: corrupt
    cut = claimed - max(end, data)
    return src, dst, sport, dport, flags & 0x3F, seq, ack, data, max(end, data), \
        cut if cut > 0 else 0


def _cut_tcp(packet: bytes, ip: int, end: int) -> bool:
    """Whether a frame the capture cut, which `_tcp` could not read, carried TCP: its IP
    header says so, and the capture ended before the TCP header did."""
    if end - ip < 10:
        return False
    version = packet[ip] >> 4
    if version == 4:
        return packet[ip + 9] == 6
    return version == 6 and end - ip >= 7 and packet[ip + 6] == 6


def _address(raw: int | bytes) -> str:
    if isinstance(raw, int):
        return f"{raw >> 24}.{(raw >> 16) & 0xFF}.{(raw >> 8) & 0xFF}.{raw & 0xFF}"
    return str(ipaddress.IPv6Address(bytes(raw)))


class _Names(dict):
    """Addresses as the analyzer names them, each formatted the first time it is seen: a
    capture has few hosts and many packets, and a subscript is cheaper than a call."""

    def __missing__(self, raw: int | bytes) -> str:
        name = self[raw] = _address(raw)
        return name


# Segment's own constructor is a Python function around this: called directly, one call
# less for each of hundreds of thousands of segments.
_new_segment = tuple.__new__


def decode_ip(ts: float, packet: bytes, offset: int = 0) -> Segment | None:
    """Decode an IPv4 or IPv6 packet carrying TCP; None for anything else."""
    fields = _tcp(packet, offset, len(packet))
    if fields is None:
        return None
    src, dst, sport, dport, flags, seq, ack, start, end, _ = fields
    return Segment(ts, _address(src), sport, _address(dst), dport, flags, seq, ack,
                   bytes(packet[start:end]))


# --- reading files

# linktype, time, buffer, frame start, frame end (what was captured), its length on the wire
Record = tuple[int, float, bytes, int, int, int]


class _Blocks:
    """A file read in large blocks; ``buf[pos:]`` is what is left of the current one."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.buf = b""
        self.pos = 0
        self.base = 0  # file offset of buf[0]

    def need(self, n: int) -> bool:
        """Make ``n`` bytes available at ``pos``; False when the file ends first."""
        if len(self.buf) - self.pos >= n:
            return True
        rest = self.buf[self.pos:]
        self.base += self.pos
        self.buf = rest + self.f.read(max(_BLOCK, n - len(rest)))
        self.pos = 0
        return len(self.buf) >= n

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def left(self) -> int:
        return len(self.buf) - self.pos


def _records(path: str | Path, snaplens: list[int] | None = None) -> Iterator[Record]:
    """The file's records; ``snaplens`` gets the snap length of each header read."""
    snaplens = [] if snaplens is None else snaplens
    with open(path, "rb") as f:
        blocks = _Blocks(f)
        if not blocks.need(4):
            raise PcapError(f"{path}: byte 0: too short to be a capture file", 0)
        magic = blocks.buf[:4]
        if magic == _PCAPNG_MAGIC:
            yield from _pcapng_records(blocks, path, snaplens)
        else:
            yield from _pcap_records(blocks, path, magic, snaplens)


def _pcap_records(blocks: _Blocks, path: str | Path, magic: bytes,
                  snaplens: list[int]) -> Iterator[Record]:
    if magic not in _PCAP_MAGIC:
        raise PcapError(f"{path}: byte 0: not a pcap or pcapng file (magic {magic.hex()})", 0)
    order, unit = _PCAP_MAGIC[magic]
    if not blocks.need(24):
        raise PcapError(f"{path}: byte 4: truncated file header", 4)
    snaplen, linktype = struct.unpack_from(order + "II", blocks.buf, 16)
    linktype &= 0x0FFFFFFF
    if linktype not in _SUPPORTED:
        raise PcapError(f"{path}: byte 20: link type {linktype} is not supported", 20)
    snaplens.append(snaplen)
    limit = min(max(snaplen, _SNAPLEN), _MAX_RECORD)
    header = struct.Struct(order + "IIII")
    unpack = header.unpack_from
    blocks.pos = 24
    while True:
        buf, pos = blocks.buf, blocks.pos
        if len(buf) - pos < 16:
            if not blocks.need(16):
                if blocks.left():
                    raise PcapError(f"{path}: byte {blocks.offset}: truncated record header",
                                    blocks.offset)
                return
            buf, pos = blocks.buf, blocks.pos
        sec, frac, caplen, wirelen = unpack(buf, pos)
        if caplen > limit:
            raise PcapError(f"{path}: byte {blocks.offset}: record length {caplen} is corrupt",
                            blocks.offset)
        end = pos + 16 + caplen
        if end > len(buf):
            if not blocks.need(16 + caplen):
                raise PcapError(f"{path}: byte {blocks.offset}: truncated record",
                                blocks.offset)
            buf, pos = blocks.buf, blocks.pos
            end = pos + 16 + caplen
        blocks.pos = end
        yield linktype, sec + frac * unit, buf, pos + 16, end, wirelen


def _pcapng_records(blocks: _Blocks, path: str | Path, snaplens: list[int]
                    ) -> Iterator[Record]:
    order = "<"
    interfaces: list[tuple[int, float, float]] = []  # linktype, seconds per tick, offset
    while True:
        if not blocks.need(12):
            if blocks.left():
                raise PcapError(f"{path}: byte {blocks.offset}: truncated block header",
                                blocks.offset)
            return
        offset, buf, pos = blocks.offset, blocks.buf, blocks.pos
        raw_type = buf[pos:pos + 4]
        if raw_type == _PCAPNG_MAGIC:  # a section header sets the byte order
            order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(
                buf[pos + 8:pos + 12], "")
            if not order:
                raise PcapError(f"{path}: byte {offset}: corrupt section header", offset)
            interfaces = []
        block_type, length = struct.unpack_from(order + "II", buf, pos)
        if length < 12 or length % 4 or length > _MAX_RECORD:
            raise PcapError(f"{path}: byte {offset}: corrupt block length {length}", offset)
        if not blocks.need(length):
            raise PcapError(f"{path}: byte {offset}: truncated block", offset)
        buf, pos = blocks.buf, blocks.pos
        if struct.unpack_from(order + "I", buf, pos + length - 4)[0] != length:
            raise PcapError(f"{path}: byte {offset}: corrupt block (trailing length differs)",
                            offset)
        blocks.pos = pos + length
        if block_type == 6:  # enhanced packet
            if length < 32:  # its fields would be read from the next block, or past the file
                raise PcapError(f"{path}: byte {offset}: corrupt block length {length}", offset)
            iface, high, low, caplen, wirelen = struct.unpack_from(order + "IIIII", buf,
                                                                   pos + 8)
            if iface >= len(interfaces):
                raise PcapError(f"{path}: byte {offset}: packet names unknown interface {iface}",
                                offset)
            if 28 + caplen > length - 4:
                raise PcapError(f"{path}: byte {offset}: record length {caplen} is corrupt",
                                offset)
            linktype, tick, base = interfaces[iface]
            ts = base + ((high << 32) | low) * tick
            if not 0.0 <= ts < _LATEST:
                raise PcapError(f"{path}: byte {offset}: timestamp {ts:.6g} is absurd (not "
                                "between the years 1970 and 9999)", offset)
            yield linktype, ts, buf, pos + 28, pos + 28 + caplen, wirelen
        elif block_type == 1:  # interface description
            if length < 20:
                raise PcapError(f"{path}: byte {offset}: corrupt block length {length}", offset)
            linktype, snaplen = struct.unpack_from(order + "H2xI", buf, pos + 8)
            if linktype not in _SUPPORTED:
                raise PcapError(f"{path}: byte {offset}: link type {linktype} is not supported",
                                offset)
            tick, base = _if_options(buf[pos + 16:pos + length - 4], order, f"{path}: byte "
                                     f"{offset}", offset)
            interfaces.append((linktype, tick, base))
            snaplens.append(snaplen)
        elif block_type == 3:  # simple packet: no timestamp
            if length < 16:
                raise PcapError(f"{path}: byte {offset}: corrupt block length {length}", offset)
            if not interfaces:
                raise PcapError(f"{path}: byte {offset}: packet before any interface", offset)
            wirelen = struct.unpack_from(order + "I", buf, pos + 8)[0]
            yield (interfaces[0][0], 0.0, buf, pos + 12, pos + 12 + min(wirelen, length - 16),
                   wirelen)


def _if_options(options: bytes, order: str, where: str, offset: int) -> tuple[float, float]:
    """An interface's seconds per timestamp tick (if_tsresol) and offset (if_tsoffset);
    a `PcapError` at ``offset`` (``where`` says so) for an option that is not readable."""
    tick, base = 1e-6, 0.0
    i = 0
    while i + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, i)
        if code == 0:
            break
        if i + 4 + length > len(options):
            raise PcapError(f"{where}: interface option {code} runs past its block", offset)
        if code == 9 and length >= 1:
            value = options[i + 4]
            binary, exponent = bool(value & 0x80), value & 0x7F
            if exponent > (_MAX_TSRESOL_BINARY if binary else _MAX_TSRESOL_DECIMAL):
                raise PcapError(f"{where}: timestamp resolution {2 if binary else 10}^-"
                                f"{exponent} s is absurd", offset)
            tick = 2.0 ** -exponent if binary else 10.0 ** -exponent
        elif code == 14 and length == 8:
            base = float(struct.unpack_from(order + "q", options, i + 4)[0])
        i += 4 + ((length + 3) & ~3)
    return tick, base


def read_frames(path: str | Path) -> Iterator[tuple[int, float, bytes]]:
    """(linktype, timestamp, frame) for every record of a pcap or pcapng file."""
    for linktype, ts, buf, start, end, _ in _records(path):
        yield linktype, ts, buf[start:end]


def _new_connection(known: dict[tuple, list], cell: list, flags: int, src: int | bytes,
                    sport: int, dst: int | bytes, dport: int) -> None:
    """A SYN: its direction's next pure ACK is the first of a connection again, and so,
    for a SYN without ACK (a new connection), is the other direction's."""
    cell[1] = False
    if not flags & 0x10:
        other = known.get((dst, dport, src, sport))
        if other is not None:
            other[1] = False


class SegmentReader:
    """The TCP segments of a capture file, in file order.

    ``ports``: leave out segments on no such port (the analyzer would ignore
    them). ``skip_acks``: leave out the pure ACKs that change no record: on
    a four-tuple already handed on, where their direction has reached (see
    the module's docstring); a keep-alive probe is handed on. A `PcapError`
    ends the iteration at the first unreadable byte; everything before it
    has been handed on, and ``offset`` says where the good part of the file
    ends. ``fast``: read a classic pcap with `_classic`; False reads every
    file with `_any`, which must give the same segments (the tests compare
    the two).
    """

    def __init__(self, path: str | Path, ports: Iterable[int] | None = None,
                 skip_acks: bool = False, fast: bool = True) -> None:
        self.path = path
        self.ports = frozenset(ports or ())
        self.skip_acks = skip_acks
        self.fast = fast
        self._row: type = Segment  # plain tuple in a background reader: marshal writes those
        self.records = 0  # records read
        self.segments = 0  # segments handed on
        self.skipped = 0  # pure ACKs left out
        self.offset = 0  # end of the last record read
        self.truncated = 0  # records the capture cut short of their length on the wire
        self.headers_cut = 0  # of those, TCP frames cut inside their TCP header: unreadable
        self.snaplens: list[int] = []  # the snap length of each file or interface header
        self.cut_at = 0  # the longest captured length of a record cut

    @property
    def snaplen(self) -> int | None:
        """The file's snap length: the longest frame it keeps whole (the smallest of its
        interfaces'), or where its frames were cut when that is shorter (`editcap -s` cuts
        the frames and leaves the header as it was); None when it sets none (pcapng's 0)."""
        limits = [n for n in self.snaplens if n] + ([self.cut_at] if self.cut_at else [])
        return min(limits) if limits else None

    def __iter__(self) -> Iterator[Segment]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Segment]]:
        """The segments in lists of a few thousand: one generator switch per list, not per
        segment, and the reading loop stays hot (a third faster than one at a time)."""
        with open(self.path, "rb") as f:
            blocks = _Blocks(f)
            if self.fast and blocks.need(4) and blocks.buf[:4] in _PCAP_MAGIC:
                yield from self._classic(blocks, blocks.buf[:4])
                return
        yield from self._any()

    def background_batches(self) -> Iterator[list[Segment] | list[tuple]]:
        """`batches`, read by a child process while the caller works on what came before.

        Reading and decoding is a third of the work of an analysis; on a second core
        it overlaps the rest. The child sends each batch as it is decoded, down a pipe
        in `marshal` form (plain tuples: a few times cheaper to write and read than the
        decoding itself), and they come out as plain tuples in `Segment`'s field
        order, equal to its segments (`Analyzer.feed` takes either); then the
        counters and the `PcapError` that ended the file, if one did. Without
        ``os.fork``, for a small file (a fork would cost more than it saves), or if
        the child dies, the batches are read here, in this process.
        Only for a caller that has no other threads: a forked child copies one.
        """
        try:
            small = os.path.getsize(self.path) < _BACKGROUND_MIN_SIZE
        except OSError:
            small = True
        if small or not hasattr(os, "fork"):
            yield from self.batches()
            return
        source, sink = os.pipe()
        try:  # a batch at once in the pipe, not 64 KiB: the two sides wake each other less
            import fcntl

            fcntl.fcntl(sink, fcntl.F_SETPIPE_SZ, 1 << 20)
        except (ImportError, AttributeError, OSError):
            pass  # not Linux, or above the system's limit: the default pipe works as well
        pid = os.fork()
        if pid == 0:  # the child: read, send, and leave without running the parent's exits
            os.close(source)
            try:
                with os.fdopen(sink, "wb") as out:
                    self._send(out)
            finally:
                os._exit(0)
        os.close(sink)
        received = 0
        try:
            with os.fdopen(source, "rb") as pipe:
                for batch in self._receive(pipe):
                    received += 1
                    yield batch
                return
        except EOFError:
            pass  # the child died: read the rest here
        finally:
            os.waitpid(pid, 0)  # the pipe is closed: a child still writing stops at once
        for number, batch in enumerate(self.batches()):
            if number >= received:
                yield batch

    def _send(self, out: BinaryIO) -> None:
        self._row = tuple
        error = None
        try:
            for batch in self.batches():
                data = marshal.dumps(batch)
                out.write(_FRAME.pack(False, len(data)))
                out.write(data)
        except PcapError as exc:
            error = (str(exc), exc.offset)
        data = marshal.dumps((self.records, self.segments, self.skipped, self.offset,
                              self.truncated, self.headers_cut, self.cut_at, self.snaplens,
                              error))
        out.write(_FRAME.pack(True, len(data)))
        out.write(data)

    def _receive(self, pipe: BinaryIO) -> Iterator[list[tuple]]:
        while True:
            header = pipe.read(_FRAME.size)
            if len(header) < _FRAME.size:
                raise EOFError
            last, size = _FRAME.unpack(header)
            data = pipe.read(size)
            if len(data) < size:
                raise EOFError
            if not last:
                yield marshal.loads(data)
                continue
            (self.records, self.segments, self.skipped, self.offset, self.truncated,
             self.headers_cut, self.cut_at, self.snaplens, error) = marshal.loads(data)
            if error is not None:
                raise PcapError(*error)
            return

    def _any(self) -> Iterator[list[Segment]]:
        """Any format, a frame at a time."""
        ports, skip_acks = self.ports, self.skip_acks
        # Per direction of each four-tuple handed on: [where its sequence numbers have
        # reached (None before it has sent anything but pure ACKs), whether it has handed
        # on a pure ACK since its last SYN].
        known: dict[tuple, list] = {}
        reached_at = known.get
        names = _Names()
        batch: list[Segment] = []
        records = _records(self.path, self.snaplens)
        while True:
            try:
                linktype, ts, buf, start, end, wirelen = next(records)
            except StopIteration:
                break
            except PcapError:
                if batch:
                    yield batch  # what came before the bad byte, then the error
                raise
            self.records += 1
            self.offset = end
            # Cut at the snap length: the IP header says how much more there was.
            wire_end = start + wirelen if end - start < wirelen <= _MAX_RECORD else None
            if wire_end is not None:
                self.truncated += 1
                self.cut_at = max(self.cut_at, end - start)
            ip = _ip_offset(linktype, buf, start, end)
            fields = None if ip is None else _tcp(buf, ip, end, wire_end)
            if fields is None:
                if wire_end is not None and ip is not None and _cut_tcp(buf, ip, end):
                    self.headers_cut += 1
                continue
            src, dst, sport, dport, flags, seq, ack, data, data_end, cut = fields
            if ports and sport not in ports and dport not in ports:
                continue
            # Where this direction has reached (see the module's docstring): a one-item
            # list per direction, so that moving it costs no second dict lookup.
            cell = reached_at((src, sport, dst, dport))
            if cell is None:  # a four-tuple not handed on before: handed on, whatever it is
                reach = seq + data_end - data + cut if data < data_end else seq + cut
                if flags & 0x03:
                    reach += 1  # a SYN or FIN takes a sequence number
                known[(src, sport, dst, dport)] = [reach, not (data < data_end or cut
                                                               or flags & 0x07)]
                known[(dst, dport, src, sport)] = [None, False]
            elif data < data_end or cut or flags & 0x07:  # data, SYN, FIN or RST: it reaches
                reach = seq + data_end - data + cut if data < data_end else seq + cut
                if flags & 0x03:
                    reach += 1
                # Left unreduced modulo 2^32 (a sum past it costs an ACK handed on, once in
                # 4 GiB); moved only forward, or anywhere by a SYN: a new sequence space.
                reached = cell[0]
                if reached == seq or reached is None or flags & 0x02 or \
                        (reach - reached) & _SEQ_MASK < _SEQ_HALF:
                    cell[0] = reach
                if flags & 0x02:  # a SYN: a new connection, whose first pure ACKs count
                    _new_connection(known, cell, flags, src, sport, dst, dport)
            else:  # a pure ACK
                reached = cell[0]
                if reached == seq or reached is None:
                    if cell[1] and skip_acks:
                        self.skipped += 1  # it changes no record
                        continue
                elif (seq - reached) & _SEQ_MASK < _SEQ_HALF:
                    cell[0] = seq  # past the furthest seen: the capture missed segments
                # else behind it: a keep-alive probe (one behind), or an old duplicate
                cell[1] = True  # its direction's first pure ACK is handed on
            self.segments += 1
            batch.append(_new_segment(self._row, (ts, names[src], sport, names[dst], dport,
                                                  flags, seq, ack, buf[data:data_end], cut)))
            if len(batch) >= _BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def _classic(self, blocks: _Blocks, magic: bytes) -> Iterator[list[Segment]]:
        """Classic pcap in one loop: Ethernet, IPv4 and a 20-byte IP header are decoded
        inline (the usual case), anything else by `_ip_offset` and `_tcp`. It does what
        `_any` does, about twice as fast."""
        path = self.path
        order, unit = _PCAP_MAGIC[magic]
        if not blocks.need(24):
            raise PcapError(f"{path}: byte 4: truncated file header", 4)
        snaplen, linktype = struct.unpack_from(order + "II", blocks.buf, 16)
        linktype &= 0x0FFFFFFF
        if linktype not in _SUPPORTED:
            raise PcapError(f"{path}: byte 20: link type {linktype} is not supported", 20)
        self.snaplens.append(snaplen)
        limit = min(max(snaplen, _SNAPLEN), _MAX_RECORD)
        record = struct.Struct(order + "IIII").unpack_from
        ipv4_tcp = _ETH_IPV4_TCP.unpack_from
        new, row = _new_segment, self._row
        ethernet = linktype == LINKTYPE_ETHERNET
        ports, skip_acks = self.ports, self.skip_acks
        known: dict[tuple, list] = {}  # as in `_any`
        reached_at = known.get
        names = _Names()
        records = segments = skipped = truncated = headers_cut = cut_at = 0
        batch: list[Segment] = []
        append = batch.append
        blocks.pos = pos = 24
        buf = blocks.buf
        size = len(buf)
        try:
            while True:
                if size - pos < 16:
                    blocks.pos = pos
                    if not blocks.need(16):
                        if blocks.left():
                            raise PcapError(f"{path}: byte {blocks.offset}: truncated record "
                                            "header", blocks.offset)
                        break
                    buf, pos = blocks.buf, blocks.pos
                    size = len(buf)
                sec, frac, caplen, wirelen = record(buf, pos)
                if caplen > limit:
                    blocks.pos = pos
                    raise PcapError(f"{path}: byte {blocks.offset}: record length {caplen} is "
                                    "corrupt", blocks.offset)
                start = pos + 16
                end = start + caplen
                if end > size:
                    blocks.pos = pos
                    if not blocks.need(16 + caplen):
                        raise PcapError(f"{path}: byte {blocks.offset}: truncated record",
                                        blocks.offset)
                    buf, pos = blocks.buf, blocks.pos
                    size = len(buf)
                    start = pos + 16
                    end = start + caplen
                pos = end
                records += 1
                cut_short = caplen < wirelen <= _MAX_RECORD  # at the snap length: see `_any`
                if cut_short:
                    truncated += 1
                    if caplen > cut_at:
                        cut_at = caplen
                if ethernet and caplen >= 54 and buf[start + 12] == 8 and buf[start + 13] == 0 \
                        and buf[start + 14] == 0x45:
                    total, frag, proto, src, dst, sport, dport, seq, ack, offset, flags = \
                        ipv4_tcp(buf, start + 14)
                    if proto != 6 or frag & 0x1FFF or offset < 0x50:
                        continue
                    flags &= 0x3F
                    data = start + 34 + (offset >> 4) * 4
                    data_end = start + 14 + total if total else \
                        start + wirelen if cut_short else end
                    cut = 0
                    if data_end > end:
                        if cut_short:
                            cut = min(data_end, start + wirelen) - max(end, data)
                            if cut < 0:
                                cut = 0
                        data_end = end
                    elif data_end < start + 54:
                        continue  # an IP length that ends inside the headers: as `_tcp` does
                else:
                    ip = _ip_offset(linktype, buf, start, end)
                    fields = None if ip is None else \
                        _tcp(buf, ip, end, start + wirelen if cut_short else None)
                    if fields is None:
                        if cut_short and ip is not None and _cut_tcp(buf, ip, end):
                            headers_cut += 1
                        continue
                    src, dst, sport, dport, flags, seq, ack, data, data_end, cut = fields
                if ports and sport not in ports and dport not in ports:
                    continue
                cell = reached_at((src, sport, dst, dport))  # as in `_any`
                if cell is None:
                    reach = seq + data_end - data + cut if data < data_end else seq + cut
                    if flags & 0x03:
                        reach += 1
                    known[(src, sport, dst, dport)] = [reach, not (data < data_end or cut
                                                                   or flags & 0x07)]
                    known[(dst, dport, src, sport)] = [None, False]
                elif data < data_end or cut or flags & 0x07:
                    reach = seq + data_end - data + cut if data < data_end else seq + cut
                    if flags & 0x03:
                        reach += 1
                    reached = cell[0]
                    if reached == seq or reached is None or flags & 0x02 or \
                            (reach - reached) & 0xFFFFFFFF < 0x80000000:
                        cell[0] = reach
                    if flags & 0x02:
                        _new_connection(known, cell, flags, src, sport, dst, dport)
                else:
                    reached = cell[0]
                    if reached == seq or reached is None:
                        if cell[1] and skip_acks:
                            skipped += 1
                            continue
                    elif (seq - reached) & 0xFFFFFFFF < 0x80000000:
                        cell[0] = seq
                    cell[1] = True
                segments += 1
                append(new(row, (sec + frac * unit, names[src], sport, names[dst], dport,
                                     flags, seq, ack, buf[data:data_end], cut)))
                if segments % _BATCH == 0:
                    yield batch
                    batch = []
                    append = batch.append
            if batch:
                yield batch
        except PcapError:
            if batch:
                yield batch  # what came before the bad byte, then the error
                batch = []
            raise
        finally:
            if blocks.pos < pos and blocks.buf is buf:
                blocks.pos = pos
            self.records, self.segments, self.skipped = records, segments, skipped
            self.truncated, self.headers_cut, self.cut_at = truncated, headers_cut, cut_at
            self.offset = blocks.offset


def read_segments(path: str | Path) -> Iterator[Segment]:
    """Every TCP segment in a capture file, in file order."""
    return iter(SegmentReader(path))


class PcapWriter:
    """Writes a classic pcap (microseconds), flushing so a crash loses little."""

    def __init__(self, path: str | Path, linktype: int = LINKTYPE_ETHERNET) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, _SNAPLEN, linktype))
        self.count = 0

    @staticmethod
    def record(ts: float, frame: bytes | memoryview) -> bytes:
        """One record's header, microseconds rounded to the nearest."""
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        return struct.pack("<IIII", sec, usec, len(frame), len(frame))

    def write(self, ts: float, frame: bytes) -> None:
        self.file.write(self.record(ts, frame))
        self.file.write(frame)
        self.count += 1

    def write_records(self, data: bytes | bytearray, count: int) -> None:
        """Records already laid out (headers from `record`, frames): one write for many."""
        self.file.write(data)
        self.count += count

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
