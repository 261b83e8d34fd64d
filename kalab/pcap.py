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

Memory is the block buffer plus one entry per direction of a four-tuple
followed, at most `TUPLES_FOLLOWED` directions: when the table is full it is
emptied, and the four-tuples seen after that are followed afresh, cautiously.
A direction first seen after the table was emptied may have sent anything
before (the analyzer may know where it has reached, the reader no longer
does), so every pure ACK it sends is handed on until it sends a SYN, which
starts a sequence space the reader knows. Leaving out fewer pure ACKs changes
no record (the analyzer reads them all without ``skip_acks``), so forgetting
is always safe; a capture with fewer four-tuples than the bound is read as if
there were none.

`SegmentReader` is the reference: every format, a frame at a time, each
step said once. The analysis reads with `kalab.pcap_fast.FastSegmentReader`,
which hands on the same segments (tests/test_pcap_fast.py compares the two)
in less time: a classic pcap decoded in one hand-inlined loop, the reading
done in a second process.

Every length and time in a file is checked before it is used, for a file
from a stranger is hostile: a record or block longer than 4 MiB (whatever
the file header's snap length says), a pcapng block shorter than its own
fields, an interface option that runs past its block, a timestamp
resolution finer than 10^-19 or 2^-63 s, or a record time outside the
years 1970 to 9999, is a `PcapError` naming the byte where its record or
block starts; what came before it is handed on as usual.

A file compressed with gzip or bzip2 (known by its first bytes, as tshark
knows them) is decompressed as it is read (`open_capture`); its offsets count
its bytes once decompressed, and a stream cut short or corrupt is a
`PcapError` where its data ends. One compressed with xz, zstd or lz4 is
refused with the command that decompresses it.

Writes classic microsecond pcap, which tcpdump and tshark open.
"""

from __future__ import annotations

import bz2
import gzip
import ipaddress
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, NamedTuple

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
_AF_INET6 = (10, 24, 28, 30)  # Linux, OpenBSD, FreeBSD, macOS
_SEQ_MASK, _SEQ_HALF = 0xFFFFFFFF, 0x80000000
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10

# (header length, offset of the big-endian ethertype) for the cooked link types.
_COOKED = {LINKTYPE_LINUX_SLL: (16, 14), LINKTYPE_LINUX_SLL2: (20, 0)}
_SUPPORTED = {LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
              LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2, _LINKTYPE_RAW_OLD}

_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_IPV4_TCP = struct.Struct("!2xH2xH1xB2xII")  # total length, fragment, protocol, src, dst
_TCP = struct.Struct("!HHIIBB")  # ports, seq, ack, data offset, flags


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
    capture has few hosts and many packets, and a subscript is cheaper than a call. At
    most `NAMES_KEPT` (then emptied): a capture may also have millions of hosts."""

    def __missing__(self, raw: int | bytes) -> str:
        if len(self) >= NAMES_KEPT:
            self.clear()
        name = self[raw] = _address(raw)
        return name


NAMES_KEPT = 1 << 16


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


# Compressed captures, read as tshark reads them: by their first bytes, whatever their name.
# Both decompress in bounded memory (a 32 KiB window; 900 kB blocks).
_COMPRESSIONS: dict[bytes, tuple[str, Callable[[BinaryIO], BinaryIO]]] = {
    b"\x1f\x8b": ("gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    b"BZh": ("bzip2", bz2.BZ2File),
}
# Compressions known and not read, with the command that undoes each. xz's decoder takes
# the memory its file's header asks for (up to 4 GiB: a hostile file's to choose), and
# Python reads neither zstd nor lz4.
_NOT_READ = {b"\xfd7zXZ\x00": ("xz", "xz -dk"), b"\x28\xb5\x2f\xfd": ("zstd", "zstd -d"),
             b"\x04\x22\x4d\x18": ("lz4", "lz4 -d")}
# What a compressed stream raises when it is cut short (EOFError) or corrupt.
_STREAM_ERRORS = (EOFError, OSError, zlib.error)


def compression(path: str | Path) -> str | None:
    """The compression a capture file is in that it is read through (gzip or bzip2), from
    its first bytes; None for any other file."""
    with open(path, "rb") as f:
        found = _compression_of(f.read(6))
    return None if found is None else found[0]


def _compression_of(head: bytes) -> tuple[str, Callable[[BinaryIO], BinaryIO]] | None:
    """(name, opener) of the compression a file starting with ``head`` is read through."""
    return next((found for magic, found in _COMPRESSIONS.items() if head.startswith(magic)),
                None)


class CaptureFile(NamedTuple):
    """A capture file open to read (`open_capture`)."""

    data: BinaryIO  # its bytes, decompressed as they are read if it is compressed
    name: str | Path  # as its errors name it: a compressed one's offsets are decompressed
    compressed: BinaryIO | None  # the compressed file on disk; None for a plain one


@contextmanager
def open_capture(path: str | Path) -> Iterator[CaptureFile]:
    """``path`` open to read, decompressed as it is read if it is compressed: offsets in
    a compressed one (`PcapError.offset`) count its bytes once decompressed, and the
    name its errors give it says so."""
    with open(path, "rb") as raw:
        found = _compression_of(raw.read(6))
        raw.seek(0)
        if found is None:
            yield CaptureFile(raw, path, None)
            return
        with found[1](raw) as data:  # leaves ``raw`` open: the outer `with` closes it
            yield CaptureFile(data, f"{path} (decompressed)", raw)


class _Blocks:
    """A file read in large blocks; ``buf[pos:]`` is what is left of the current one."""

    def __init__(self, f: BinaryIO, path: str | Path = "",
                 compressed: BinaryIO | None = None) -> None:
        self.f = f
        self.path = path  # named in the error of a stream that breaks
        self.compressed = compressed  # the file on disk, when ``f`` decompresses it
        self.buf = b""
        self.pos = 0
        self.base = 0  # file offset of buf[0]
        self.broken: str | None = None  # why the file's data ended before its end

    def need(self, n: int) -> bool:
        """Make ``n`` bytes available at ``pos``; False when the file ends first. A
        compressed file cut short or corrupt is a `PcapError` where its data ends: what
        came before it is read as usual."""
        if len(self.buf) - self.pos >= n:
            return True
        rest = self.buf[self.pos:]
        self.base += self.pos
        self.pos = 0
        want = max(_BLOCK, n - len(rest))
        chunks, have = [rest], 0
        while have < want and self.broken is None:
            try:  # read1: a stream that breaks keeps what it gave before (read would not)
                chunk = self.f.read1(want - have)
            except _STREAM_ERRORS as exc:
                self.broken = str(exc) or type(exc).__name__
                break
            if not chunk:
                break
            chunks.append(chunk)
            have += len(chunk)
        self.buf = b"".join(chunks)
        if len(self.buf) >= n:
            return True
        if self.broken is not None:
            end = self.base + len(self.buf)
            raise PcapError(f"{self.path}: byte {end}: its data ends there, cut short or "
                            f"corrupt ({self.broken})", end)
        return False

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def read_so_far(self, offset: int) -> int:
        """How far the file on disk is read once its data is read up to ``offset``:
        ``offset`` itself, or for a compressed file its compressed bytes read so far."""
        return offset if self.compressed is None else self.compressed.tell()

    def left(self) -> int:
        return len(self.buf) - self.pos


def _records(path: str | Path, snaplens: list[int] | None = None) -> Iterator[Record]:
    """The file's records; ``snaplens`` gets the snap length of each header read."""
    with open_capture(path) as capture:
        yield from _records_of(_Blocks(*capture), capture.name,
                               [] if snaplens is None else snaplens)


def _records_of(blocks: _Blocks, path: str | Path, snaplens: list[int]) -> Iterator[Record]:
    """`_records` of a file opened as ``blocks`` (``blocks.offset``: how far it is read)."""
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
        for head, (name, command) in _NOT_READ.items():
            if blocks.buf.startswith(head):
                raise PcapError(f"{path}: byte 0: compressed with {name}, which is not read: "
                                f"decompress it first ({command} FILE)", 0)
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


# Directions of four-tuples the pure-ACK filter follows at most (about 200 bytes each):
# past it, its table is emptied (see the module's docstring).
TUPLES_FOLLOWED = 1 << 16
# Where a direction has reached when it was first seen after the table was emptied: not
# known until its SYN, and meanwhile every pure ACK of it is handed on.
UNKNOWN = -1


class _PureAcks:
    """Which pure ACKs change no record (see the module's docstring), from what each
    direction of each four-tuple handed on has sent so far."""

    def __init__(self, limit: int) -> None:
        # Per direction: where its sequence numbers have reached (None while it has sent
        # nothing but pure ACKs, UNKNOWN when that cannot be said), and whether it has
        # handed on a pure ACK since its SYN.
        self.reached: dict[tuple, int | None] = {}
        self.acked: dict[tuple, bool] = {}
        self.limit = limit
        self.emptied = False  # the table was full once: new four-tuples are followed afresh

    def changes_nothing(self, src: int | bytes, sport: int, dst: int | bytes, dport: int,
                        flags: int, seq: int, length: int) -> bool:
        """Whether this segment (``length``: its payload, kept or cut) can be left out;
        notes it when it is handed on."""
        direction, other = (src, sport, dst, dport), (dst, dport, src, sport)
        moves = bool(length or flags & (_SYN | _FIN | _RST))  # not a pure ACK
        reach = seq + length + (1 if flags & (_SYN | _FIN) else 0)  # a SYN or FIN takes one
        if direction not in self.reached:  # its first segment: handed on, whatever it is
            if len(self.reached) >= self.limit:
                self.reached, self.acked, self.emptied = {}, {}, True
            if self.emptied:  # it may have sent anything before: known from its SYN on
                self.reached[direction] = reach if flags & _SYN else UNKNOWN
                self.reached[other] = UNKNOWN
            else:
                self.reached[direction], self.reached[other] = reach, None
            self.acked[direction], self.acked[other] = not moves, False
            return False
        reached = self.reached[direction]
        if reached == UNKNOWN and not flags & _SYN:
            self.acked[direction] = True
            return False  # handed on, whatever it is
        if moves:
            # Moved only forward (modulo 2^32), or anywhere by a SYN: a new sequence space.
            if reached is None or reached == seq or flags & _SYN or _after(reach, reached):
                self.reached[direction] = reach
            if flags & _SYN:  # a new connection's first pure ACKs count again, both ways
                self.acked[direction] = False  # for a SYN-ACK, only its own direction's
                if not flags & _ACK:
                    self.acked[other] = False
            return False
        if reached is None or reached == seq:
            if self.acked[direction]:
                return True
        elif _after(seq, reached):
            self.reached[direction] = seq  # past the furthest seen: the capture missed some
        # else behind it: a keep-alive probe (one behind), or an old duplicate
        self.acked[direction] = True
        return False


def _after(seq: int, reached: int) -> bool:
    """Whether sequence number ``seq`` is at or past ``reached``, as TCP compares them."""
    return (seq - reached) & _SEQ_MASK < _SEQ_HALF


class SegmentReader:
    """The TCP segments of a capture file, in file order: the reference reader, a frame
    at a time. `kalab.pcap_fast.FastSegmentReader` hands on the same, faster.

    ``ports``: leave out segments on no such port (the analyzer would ignore
    them). ``skip_acks``: leave out the pure ACKs that change no record: on
    a four-tuple already handed on, where their direction has reached (see
    the module's docstring); a keep-alive probe is handed on. A `PcapError`
    ends the iteration at the first unreadable byte (its ``offset``);
    everything before it has been handed on.
    """

    tuples_followed = TUPLES_FOLLOWED  # directions the pure-ACK filter follows at most

    def __init__(self, path: str | Path, ports: Iterable[int] | None = None,
                 skip_acks: bool = False) -> None:
        self.path = path
        self.ports = frozenset(ports or ())
        self.skip_acks = skip_acks
        self.records = 0  # records read
        self.segments = 0  # segments handed on
        self.skipped = 0  # pure ACKs left out
        self.truncated = 0  # records the capture cut short of their length on the wire
        self.headers_cut = 0  # of those, TCP frames cut inside their TCP header: unreadable
        self.snaplens: list[int] = []  # the snap length of each file or interface header
        self.cut_at = 0  # the longest captured length of a record cut
        # Bytes of the file read as far as the last batch handed on (a progress line's;
        # of a compressed file, its compressed bytes read so far).
        self.position = 0
        self._blocks: _Blocks | None = None  # the file being read

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
        """The segments in lists of a few thousand (`Analyzer.feed_all` takes them so);
        before a `PcapError`, the list of what came before it."""
        batch: list[Segment] = []
        with open_capture(self.path) as capture:
            blocks = self._blocks = _Blocks(*capture)
            try:
                for segment in self._segments():
                    batch.append(segment)
                    if len(batch) >= _BATCH:
                        self.position = blocks.read_so_far(blocks.offset)
                        yield batch
                        batch = []
            except PcapError as exc:
                self.position = blocks.read_so_far(exc.offset)  # as far as the bad byte
                if batch:
                    yield batch
                raise
            self.position = blocks.read_so_far(blocks.offset)
            if batch:
                yield batch

    def _segments(self) -> Iterator[Segment]:
        pure_acks = _PureAcks(self.tuples_followed) if self.skip_acks else None
        names = _Names()
        assert self._blocks is not None, "read by `batches`, which opens the file"
        for linktype, ts, buf, start, end, wirelen in _records_of(
                self._blocks, self._blocks.path, self.snaplens):
            self.records += 1
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
            if self.ports and sport not in self.ports and dport not in self.ports:
                continue
            payload = bytes(buf[data:data_end])
            if pure_acks is not None and pure_acks.changes_nothing(
                    src, sport, dst, dport, flags, seq, len(payload) + cut):
                self.skipped += 1
                continue
            self.segments += 1
            yield Segment(ts, names[src], sport, names[dst], dport, flags, seq, ack, payload,
                          cut)


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
