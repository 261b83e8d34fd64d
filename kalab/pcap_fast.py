"""The fast path of `kalab.pcap`: the same segments as its `SegmentReader`, in less time.

`kalab.pcap.SegmentReader` is the reference and says each step once; this
module is what the analysis reads with (`FastSegmentReader`, through
`kalab.evidence.analyze_capture`), and every trick in it is measured in
bench/RESULTS.md and checked against the reference by tests/test_pcap_fast.py
(every link type, VLAN, pcapng, frames cut at short snap lengths, files cut
short or corrupt, the hostile corpus, and generated captures):

- `FastSegmentReader._classic` reads a classic pcap in one loop, the usual
  frame (Ethernet, IPv4 with a 20-byte header, TCP) decoded inline from one
  ``struct`` unpack, with the pure-ACK bookkeeping of `kalab.pcap._PureAcks`
  inlined too and each `Segment` built with ``tuple.__new__``: about twice as
  fast as the reference. Other frames go through the reference's `_ip_offset`
  and `_tcp`; other formats (pcapng) through the reference reader itself.
- `FastSegmentReader.background_batches` does the reading in a forked child
  process, which sends the decoded batches down a pipe: on two cores, the
  reading of a big file then costs the analysis next to nothing.
"""

from __future__ import annotations

import marshal
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from kalab.analyzer import Segment
from kalab.pcap import (
    _BATCH,
    _MAX_RECORD,
    _PCAP_MAGIC,
    _SNAPLEN,
    _SUPPORTED,
    LINKTYPE_ETHERNET,
    UNKNOWN,
    PcapError,
    SegmentReader,
    _Blocks,
    _cut_tcp,
    _ip_offset,
    _Names,
    _tcp,
    compression,
    open_capture,
)

_BACKGROUND_MIN_SIZE = 4 << 20  # bytes of file below which a reading process costs more
# A background reader's message: last?, length, and the bytes of the file read so far.
_FRAME = struct.Struct("<?IQ")
# An IPv4 header of 20 bytes and the TCP header after it, from the total length on.
_ETH_IPV4_TCP = struct.Struct("!2xH2xH1xB2xIIHHIIBB")
# Segment's own constructor is a Python function around this: called directly, one call
# less for each of hundreds of thousands of segments.
_new_segment = tuple.__new__


def _new_connection(known: dict[tuple, list], cell: list, flags: int, src: int | bytes,
                    sport: int, dst: int | bytes, dport: int) -> None:
    """A SYN: its direction's next pure ACK is the first of a connection again, and so,
    for a SYN without ACK (a new connection), is the other direction's."""
    cell[1] = False
    if not flags & 0x10:
        other = known.get((dst, dport, src, sport))
        if other is not None:
            other[1] = False


class FastSegmentReader(SegmentReader):
    """`kalab.pcap.SegmentReader`, faster: the same segments, counters and errors (the
    tests compare the two on every kind of file), for the analysis to read with."""

    def __init__(self, path: str | Path, ports: Iterable[int] | None = None,
                 skip_acks: bool = False) -> None:
        super().__init__(path, ports, skip_acks)
        self._row: type = Segment  # plain tuple in a background reader: marshal writes those

    def batches(self) -> Iterator[list[Segment]]:
        """The segments in lists of a few thousand: one generator switch per list, not per
        segment, and the reading loop stays hot (a third faster than one at a time)."""
        with open_capture(self.path) as capture:
            blocks = _Blocks(*capture)
            if blocks.need(4) and blocks.buf[:4] in _PCAP_MAGIC:
                try:
                    yield from self._classic(blocks, blocks.buf[:4])
                except PcapError as exc:  # one in its file header too
                    self.position = blocks.read_so_far(exc.offset)
                    raise
                return
        yield from super().batches()

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
        try:  # a compressed file is worth it at any size: decompressing is reading too
            small = os.path.getsize(self.path) < _BACKGROUND_MIN_SIZE and \
                compression(self.path) is None
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
                data = marshal.dumps(batch if type(batch[0]) is tuple else
                                     [tuple(s) for s in batch])  # pcapng: the reference's
                out.write(_FRAME.pack(False, len(data), self.position))
                out.write(data)
        except PcapError as exc:
            error = (str(exc), exc.offset)
        data = marshal.dumps((self.records, self.segments, self.skipped, self.truncated,
                              self.headers_cut, self.cut_at, self.snaplens, error))
        out.write(_FRAME.pack(True, len(data), self.position))
        out.write(data)

    def _receive(self, pipe: BinaryIO) -> Iterator[list[tuple]]:
        while True:
            header = pipe.read(_FRAME.size)
            if len(header) < _FRAME.size:
                raise EOFError
            last, size, position = _FRAME.unpack(header)
            data = pipe.read(size)
            if len(data) < size:
                raise EOFError
            self.position = position
            if not last:
                yield marshal.loads(data)
                continue
            (self.records, self.segments, self.skipped, self.truncated,
             self.headers_cut, self.cut_at, self.snaplens, error) = marshal.loads(data)
            if error is not None:
                raise PcapError(*error)
            return

    def _classic(self, blocks: _Blocks, magic: bytes) -> Iterator[list[Segment]]:
        """Classic pcap in one loop: Ethernet, IPv4 and a 20-byte IP header are decoded
        inline (the usual case), anything else by `_ip_offset` and `_tcp`. It does what
        the reference reader does, about twice as fast."""
        path = blocks.path  # as its errors name it
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
        # Per direction of each four-tuple handed on: [where its sequence numbers have
        # reached, whether it has handed on a pure ACK since its SYN], as in `_PureAcks`.
        known: dict[tuple, list] = {}
        reached_at = known.get
        followed, emptied = self.tuples_followed, False  # at most; emptied once full
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
                cut_short = caplen < wirelen <= _MAX_RECORD  # at the snap length: see the reference
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
                cell = reached_at((src, sport, dst, dport))  # as `_PureAcks.changes_nothing`
                if cell is None:
                    reach = seq + data_end - data + cut if data < data_end else seq + cut
                    if flags & 0x03:
                        reach += 1
                    if len(known) >= followed:
                        known.clear()
                        emptied = True
                    acked = not (data < data_end or cut or flags & 0x07)
                    if emptied:
                        known[(src, sport, dst, dport)] = [reach if flags & 0x02 else UNKNOWN,
                                                           acked]
                        known[(dst, dport, src, sport)] = [UNKNOWN, False]
                    else:
                        known[(src, sport, dst, dport)] = [reach, acked]
                        known[(dst, dport, src, sport)] = [None, False]
                elif cell[0] == UNKNOWN and not flags & 0x02:
                    cell[1] = True  # followed afresh: handed on until its SYN
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
                    self.position = blocks.read_so_far(blocks.base + pos)
                    yield batch
                    batch = []
                    append = batch.append
            # The loop leaves with `blocks.pos` set.
            self.position = blocks.read_so_far(blocks.offset)
            if batch:
                yield batch
        except PcapError as exc:
            self.position = blocks.read_so_far(exc.offset)  # as far as the bad byte
            if batch:
                yield batch  # what came before the bad byte, then the error
                batch = []
            raise
        finally:
            self.records, self.segments, self.skipped = records, segments, skipped
            self.truncated, self.headers_cut, self.cut_at = truncated, headers_cut, cut_at


