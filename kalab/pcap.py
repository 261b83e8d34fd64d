"""pcap files and link-layer frames: bytes on disk to `Segment` values.

A plain `struct` loop: the facts file measured it at about ten times the
speed of dpkt and a hundred times scapy's PcapReader on the same file, and
the analyzer needs only addresses, ports, flags, sequence numbers and
payload. Writes classic microsecond pcap, which tcpdump and tshark open.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kalab.analyzer import Segment

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

_ETH_IPV4, _ETH_IPV6, _ETH_VLAN, _ETH_QINQ = 0x0800, 0x86DD, 0x8100, 0x88A8
_SNAPLEN = 262144


class PcapError(Exception):
    """A file that is not a readable capture; says where it went wrong."""


def _ip_payload(linktype: int, frame: bytes) -> tuple[int, int] | None:
    """(IP version, offset of the IP header) in a frame, or None if not IP."""
    if linktype == LINKTYPE_ETHERNET:
        offset, ethertype = 14, int.from_bytes(frame[12:14], "big")
        while ethertype in (_ETH_VLAN, _ETH_QINQ) and len(frame) >= offset + 4:
            ethertype = int.from_bytes(frame[offset + 2:offset + 4], "big")
            offset += 4
    elif linktype == LINKTYPE_LINUX_SLL:
        offset, ethertype = 16, int.from_bytes(frame[14:16], "big")
    elif linktype == LINKTYPE_LINUX_SLL2:
        offset, ethertype = 20, int.from_bytes(frame[0:2], "big")
    elif linktype == LINKTYPE_NULL:
        family = int.from_bytes(frame[0:4], "little")
        if family > 0xFFFF:
            family = int.from_bytes(frame[0:4], "big")
        offset = 4
        ethertype = _ETH_IPV4 if family == 2 else _ETH_IPV6 if family in (10, 24, 28, 30) else 0
    elif linktype in (LINKTYPE_RAW, 12, LINKTYPE_IPV4, LINKTYPE_IPV6):
        offset = 0
        version = frame[0] >> 4 if frame else 0
        ethertype = _ETH_IPV4 if version == 4 else _ETH_IPV6 if version == 6 else 0
    else:
        raise PcapError(f"link type {linktype} is not supported")
    if ethertype == _ETH_IPV4:
        return 4, offset
    if ethertype == _ETH_IPV6:
        return 6, offset
    return None


def _addr6(raw: bytes) -> str:
    import ipaddress

    return str(ipaddress.IPv6Address(raw))


def decode_ip(ts: float, packet: bytes, offset: int = 0) -> Segment | None:
    """Decode an IPv4 or IPv6 packet carrying TCP; None for anything else."""
    if len(packet) < offset + 20:
        return None
    version = packet[offset] >> 4
    if version == 4:
        ihl = (packet[offset] & 0x0F) * 4
        if packet[offset + 9] != 6:
            return None
        total = int.from_bytes(packet[offset + 2:offset + 4], "big")
        frag = int.from_bytes(packet[offset + 6:offset + 8], "big")
        if frag & 0x1FFF:
            return None  # a later fragment has no TCP header
        src = ".".join(map(str, packet[offset + 12:offset + 16]))
        dst = ".".join(map(str, packet[offset + 16:offset + 20]))
        end = offset + total if total else len(packet)  # TSO frames may say 0
        tcp = offset + ihl
    elif version == 6:
        if len(packet) < offset + 40:
            return None
        next_header = packet[offset + 6]
        tcp = offset + 40
        # Skip the extension headers that can stand before TCP.
        while next_header in (0, 43, 60) and len(packet) >= tcp + 8:
            next_header = packet[tcp]
            tcp += (packet[tcp + 1] + 1) * 8
        if next_header != 6:
            return None
        src = _addr6(packet[offset + 8:offset + 24])
        dst = _addr6(packet[offset + 24:offset + 40])
        plen = int.from_bytes(packet[offset + 4:offset + 6], "big")
        end = offset + 40 + plen if plen else len(packet)
    else:
        return None
    if len(packet) < tcp + 20:
        return None
    sport, dport, seq, ack, off_flags = struct.unpack_from("!HHIIH", packet, tcp)
    data_offset = (off_flags >> 12) * 4
    return Segment(ts, src, sport, dst, dport, off_flags & 0x3F, seq, ack,
                   bytes(packet[tcp + data_offset:min(end, len(packet))]))


def decode_frame(linktype: int, ts: float, frame: bytes) -> Segment | None:
    where = _ip_payload(linktype, frame)
    if where is None:
        return None
    return decode_ip(ts, frame, where[1])


def read_frames(path: str | Path) -> Iterator[tuple[int, float, bytes]]:
    """(linktype, timestamp, frame) for every record of a pcap or pcapng file."""
    with open(path, "rb") as f:
        magic = f.read(4)
        if len(magic) < 4:
            raise PcapError(f"{path}: byte 0: too short to be a capture file")
        if magic == b"\x0a\x0d\x0d\x0a":
            yield from _read_pcapng(f, path, magic)
        else:
            yield from _read_pcap(f, path, magic)


def _read_pcap(f: BinaryIO, path: str | Path, magic: bytes) -> Iterator[tuple[int, float, bytes]]:
    endian = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
              b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}.get(magic)
    if endian is None:
        raise PcapError(f"{path}: byte 0: not a pcap or pcapng file (magic {magic.hex()})")
    order, unit = endian
    header = f.read(20)
    if len(header) < 20:
        raise PcapError(f"{path}: byte 4: truncated file header")
    linktype = struct.unpack(order + "HHiIII", header)[-1] & 0x0FFFFFFF
    record = struct.Struct(order + "IIII")
    offset = 24
    while True:
        head = f.read(16)
        if not head:
            return
        if len(head) < 16:
            raise PcapError(f"{path}: byte {offset}: truncated record header")
        sec, frac, caplen, _ = record.unpack(head)
        if caplen > _SNAPLEN:
            raise PcapError(f"{path}: byte {offset}: record length {caplen} is corrupt")
        data = f.read(caplen)
        if len(data) < caplen:
            raise PcapError(f"{path}: byte {offset}: truncated record")
        yield linktype, sec + frac * unit, data
        offset += 16 + caplen


def _read_pcapng(f: BinaryIO, path: str | Path,
                 magic: bytes) -> Iterator[tuple[int, float, bytes]]:
    offset = 0
    order = "<"
    interfaces: list[tuple[int, float]] = []  # (linktype, seconds per tick), per section
    pending_type: bytes | None = magic
    while True:
        raw_type = pending_type if pending_type is not None else f.read(4)
        pending_type = None
        if not raw_type:
            return
        raw_length = f.read(4)
        if len(raw_type) < 4 or len(raw_length) < 4:
            raise PcapError(f"{path}: byte {offset}: truncated block header")
        if raw_type == b"\x0a\x0d\x0d\x0a":  # section header: sets the byte order
            bom = f.read(4)
            order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(bom, "")
            if not order:
                raise PcapError(f"{path}: byte {offset}: corrupt section header")
            length = struct.unpack(order + "I", raw_length)[0]
            body = bom + f.read(max(length - 12, 0))
            interfaces = []
        else:
            length = struct.unpack(order + "I", raw_length)[0]
            body = f.read(length - 8) if 12 <= length <= _SNAPLEN * 4 else b""
        if length < 12 or length % 4 or len(body) != length - 8:
            raise PcapError(f"{path}: byte {offset}: truncated or corrupt block")
        block_type = struct.unpack(order + "I", raw_type)[0]
        if block_type == 1:  # interface description
            linktype = struct.unpack_from(order + "H", body, 0)[0]
            interfaces.append((linktype, _if_tsresol(body[8:-4], order)))
        elif block_type == 6:  # enhanced packet
            iface, high, low, caplen = struct.unpack_from(order + "IIII", body, 0)
            if iface >= len(interfaces):
                raise PcapError(f"{path}: byte {offset}: packet names unknown interface {iface}")
            linktype, tick = interfaces[iface]
            yield linktype, ((high << 32) | low) * tick, body[20:20 + caplen]
        elif block_type == 3:  # simple packet: no timestamp
            if not interfaces:
                raise PcapError(f"{path}: byte {offset}: packet before any interface")
            yield interfaces[0][0], 0.0, body[4:-4]
        offset += length


def _if_tsresol(options: bytes, order: str) -> float:
    i = 0
    while i + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, i)
        if code == 0:
            break
        if code == 9 and length >= 1:
            value = options[i + 4]
            return 2.0 ** -(value & 0x7F) if value & 0x80 else 10.0 ** -value
        i += 4 + ((length + 3) & ~3)
    return 1e-6


def read_segments(path: str | Path) -> Iterator[Segment]:
    """Every TCP segment in a capture file, in file order."""
    for linktype, ts, frame in read_frames(path):
        seg = decode_frame(linktype, ts, frame)
        if seg is not None:
            yield seg


class PcapWriter:
    """Writes a classic pcap (microseconds), flushing so a crash loses little."""

    def __init__(self, path: str | Path, linktype: int = LINKTYPE_ETHERNET) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, _SNAPLEN, linktype))
        self.count = 0

    def write(self, ts: float, frame: bytes) -> None:
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        self.file.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
        self.file.write(frame)
        self.count += 1

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
