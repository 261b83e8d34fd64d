"""Final records on disk while a capture is read, read back in the report's order.

The `Analyzer` hands out each connection's record as it becomes final
(`kalab.analyzer.Finished`), numbered provisionally. A `Spool` writes each
one to a temporary file as the report will have it, a line of compact JSON
(`kalab.report.record_line`), then its requests' lines, each read
without the other. Only the numbers are left out: a connection's line is
written with ``"id":0`` and ``"requests":[]``, a request's with ``"id":"w0"``
and ``"connection":0``, put in when the line is read. Besides, it keeps only
what `kalab.analyzer.assemble` needs to number them and what the report's
problems and time origin need without a walk, in arrays of machine numbers:
per connection where its lines lie, its provisional number, whether its SYN
was seen, whether it has gaps and its server port; per request its time sent.

`Spool.records` numbers them exactly as `assemble` does and returns two
`Records`: sequences that read the connections (in order seen) and the
requests (in order sent) back from the file each time they are walked. The
report's writer takes their lines as they are, the numbers put in
(`Records.lines`: no record is made again); every other walk gets records,
the lines read as `kalab.report.from_dict` reads a report. Memory stays with
the connections open.
"""

from __future__ import annotations

import heapq
import json
import tempfile
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields
from typing import Any, BinaryIO

from kalab import report
from kalab.analyzer import Finished
from kalab.report import (
    Connection,
    HttpRequest,
    Records,
    Seen,
    Tls,
    connection_from_dict,
    record_line,
)

_RECENT = 512  # connections whose requests are kept at hand while requests are read
_RUN = 1 << 16  # requests sorted at once; the sorted runs are then merged

# The numbers a line is written with, and where they are put back. Each record's first
# fields are its numbers (a connection's id; a request's id, then its connection's), so a
# line starts with one of these heads. A connection's ``requests`` is found by its key:
# in compact JSON a quote inside a string is escaped, so `,"requests":[` is a key, and no
# object nested in a connection has that key.
_CONNECTION_HEAD = b'{"id":0'
_REQUEST_HEAD = b'{"id":"w0","connection":0'
_REQUESTS_KEY = b',"requests":['
assert [f.name for f in fields(Connection)][0] == "id"
assert [f.name for f in fields(HttpRequest)][:2] == ["id", "connection"]
assert all(b',"%s":[' % f.name.encode() != _REQUESTS_KEY for f in fields(Tls))


def _loads(line: bytes) -> Any:
    """A line back as `kalab.report.from_dict` reads it. (orjson would read an integer past
    64 bits as a float: records have none, every number from the wire is bounded.)"""
    return json.loads(line) if report.orjson is None else report.orjson.loads(line)


class SpoolError(Exception):
    """The temporary file could not be made or written (a full or missing TMPDIR): the
    message names its folder and why."""


def _failed(exc: OSError) -> SpoolError:
    return SpoolError(f"the records' temporary file in {tempfile.gettempdir()}: "
                      f"{exc.strerror or exc}")


class Spool:
    """Write `Finished` records as they come (`add`); `records` gives them back numbered.

    Per connection it keeps 24 bytes (where its record lies and its line's size, its
    place by provisional number, whether its SYN was seen and whether it has gaps, its
    server port, where its requests start) and per request 8 (its time sent), and
    numbering adds 12 and 8: 2 million connections and 4 million requests take about
    115 MB.
    """

    def __init__(self) -> None:
        try:
            self._file: BinaryIO = tempfile.TemporaryFile(prefix="kalab-records-")
        except OSError as exc:
            raise _failed(exc) from None
        self._at = array("q")  # per connection as added: its offset in the file
        self._line_size = array("I")  # its line's bytes there; its requests' lines follow
        self._where = array("i")  # provisional number - 1 -> its place added
        self._syn = array("b")  # per connection as added: its SYN was seen
        self._gaps = array("b")  # bytes are missing from it (`Connection.gaps`)
        # The earliest time origin (`Records.origin`) of the connections numbering keeps
        # whatever ports answered, and of the others by their server port.
        self._origin_kept: float | None = None
        self._origin_by_port: dict[int, float] = {}
        self._port = array("H")  # its server port
        self._first = array("i")  # its first request's place among the requests added
        self._sent = array("d")  # per request as added: `HttpRequest.sent_at`
        self._size = 0

    def extend(self, finished: Iterable[Finished]) -> None:
        """`add` each."""
        for done in finished:
            self.add(done)

    def add(self, done: Finished) -> None:
        """One final record to the file, then its requests' lines: each read alone."""
        connection, requests = done.connection, done.requests
        number = connection.id
        self._sent.extend(r.sent_at for r in requests)
        # Its own record, about to be dropped: its numbers are put in when read back.
        connection.id, connection.requests = 0, []
        line = record_line(connection)
        lines = [line]
        for r in requests:
            r.id, r.connection = "w0", 0
            lines.append(record_line(r)[len(_REQUEST_HEAD):])
        blob = b"\n".join(lines)
        try:
            self._file.write(blob)
        except OSError as exc:
            raise _failed(exc) from None
        if number > len(self._where):
            self._where.frombytes(bytes(4 * (number - len(self._where))))
        self._where[number - 1] = len(self._at)
        self._at.append(self._size)
        self._line_size.append(len(line))
        self._size += len(blob)
        self._syn.append(done.syn_seen)
        self._gaps.append(connection.gaps > 0)
        origin = None if connection.probe else connection.syn_at or connection.established_at
        if origin is not None:
            if done.syn_seen:  # kept only if its server port answered (or ports were given)
                by_port = self._origin_by_port
                if origin < by_port.get(done.server_port, origin + 1):
                    by_port[done.server_port] = origin
            elif self._origin_kept is None or origin < self._origin_kept:
                self._origin_kept = origin
        self._port.append(done.server_port)
        self._first.append(len(self._sent) - len(requests))

    def records(self, ports: set[int] | frozenset[int], servers: set[int]
                ) -> tuple[Records, Records]:
        """The connections and the requests, numbered as `kalab.analyzer.assemble` numbers
        them, once every record is in. ``ports``: those the Analyzer followed;
        ``servers``: its `server_ports`. Called once."""
        try:
            self._file.flush()
        except OSError as exc:
            raise _failed(exc) from None
        self._first.append(len(self._sent))  # where the last one's requests end
        self._at.append(self._size)  # where the last one's lines end
        first, sent = self._first, self._sent
        keep_all = bool(ports) or not servers
        order = array("i")  # places added, in the order kept connections are numbered
        final = array("i", bytes(4 * len(self._line_size)))  # place added -> its number; 0: out
        gathered = array("i")  # their requests: by connection, then depth
        for place in self._where:
            if keep_all or not self._syn[place] or self._port[place] in servers:
                order.append(place)
                final[place] = len(order)
                gathered.extend(range(first[place], first[place + 1]))
        # By time sent; runs sorted and merged, both stable, so requests sent at the same
        # instant stay by connection, then depth (as `assemble` gathers them).
        runs = [array("i", sorted(gathered[start:start + _RUN], key=sent.__getitem__))
                for start in range(0, len(gathered), _RUN)]
        del gathered
        by_time = array("i", heapq.merge(*runs, key=sent.__getitem__))
        del runs
        self._sent = array("d")
        rank = array("i", bytes(4 * len(sent)))  # request added -> its number
        for number, request in enumerate(by_time, 1):
            rank[request] = number
        reader = _Reader(self, final, rank)
        syn, gaps = self._syn, self._gaps
        origins = [t for port, t in self._origin_by_port.items() if keep_all or port in servers]
        if self._origin_kept is not None:
            origins.append(self._origin_kept)
        origin = min(origins, default=None)
        return (Records(len(order), lambda: map(reader.connection, order),
                        at=lambda index: reader.connection(order[index]),
                        lines=lambda: map(reader.connection_line, order),
                        seen=lambda: (Seen(final[p], bool(syn[p]), bool(gaps[p]))
                                      for p in order),
                        origin=lambda: origin),
                Records(len(by_time), lambda: reader.requests(by_time, reader.request_records),
                        at=lambda index: reader.request(by_time[index]),
                        lines=lambda: reader.requests(by_time, reader.request_lines)))


class _Reader:
    """Lines back from the spool file, their numbers put in; records made of them. A
    connection's line is read without its requests', its requests' without its own."""

    def __init__(self, spool: Spool, final: array, rank: array) -> None:
        self.file, self.at, self.line_size = spool._file, spool._at, spool._line_size
        self.first = spool._first
        self.final, self.rank = final, rank
        self._pos = -1  # where the file is: no seek for lines read in the order written

    def _read(self, offset: int, size: int) -> bytes:
        if offset != self._pos:
            self.file.seek(offset)
        self._pos = offset + size
        return self.file.read(size)

    def connection_line(self, place: int) -> bytes:
        line = self._read(self.at[place], self.line_size[place])
        slot, rank = line.index(_REQUESTS_KEY) + len(_REQUESTS_KEY), self.rank
        ids = ",".join(f'"w{rank[r]}"' for r in range(self.first[place], self.first[place + 1]))
        return b"".join((b'{"id":%d' % self.final[place], line[len(_CONNECTION_HEAD):slot],
                         ids.encode(), line[slot:]))

    def connection(self, place: int) -> Connection:
        return connection_from_dict(_loads(self.connection_line(place)))

    def request_lines(self, place: int) -> list[bytes]:
        """Its requests' lines, which follow its own in the file."""
        if self.first[place] == self.first[place + 1]:
            return []
        start = self.at[place] + self.line_size[place] + 1  # after its line and a newline
        rests = self._read(start, self.at[place + 1] - start).split(b"\n")
        number, first, rank = self.final[place], self.first[place], self.rank
        return [b'{"id":"w%d","connection":%d' % (rank[first + depth], number) + rest
                for depth, rest in enumerate(rests)]

    def request_records(self, place: int) -> list[HttpRequest]:
        return [HttpRequest(**_loads(line)) for line in self.request_lines(place)]

    def place_of(self, request: int) -> int:
        """The place added of the connection a request (by its place added) was on."""
        return bisect_right(self.first, request) - 1

    def request(self, request: int) -> HttpRequest:
        """One request by its place added: its connection's requests are read for it."""
        place = self.place_of(request)
        return self.request_records(place)[request - self.first[place]]

    def requests(self, by_time: array, made: Callable[[int], list[Any]]) -> Iterator[Any]:
        """Each request in the order numbered, made by ``made`` from its connection's
        place: its connection's are made at once and kept while the nearby ones come."""
        recent: OrderedDict[int, list[Any]] = OrderedDict()  # the oldest out in O(1)
        first = self.first
        for request in by_time:
            place = self.place_of(request)
            if place not in recent:
                if len(recent) >= _RECENT:
                    recent.popitem(last=False)
                recent[place] = made(place)
            yield recent[place][request - first[place]]
