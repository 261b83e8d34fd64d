"""Final records on disk while a capture is read, read back in the report's order.

The `Analyzer` hands out each connection's record as it becomes final
(`kalab.analyzer.Finished`), numbered provisionally. A `Spool` writes each
one to a temporary file (a pickle of its fields' values, then one of its
requests', each read without the other) and keeps only what
`kalab.analyzer.assemble` needs to number them, in arrays of machine
numbers: per connection where it lies, its provisional number, whether its
SYN was seen and its server port; per request its time sent. `Spool.records`
numbers them exactly as `assemble` does and returns two `Records`: sequences
that read the connections (in order seen) and the requests (in order sent)
back from the file each time they are walked, their ids set as `assemble`
sets them. The report's writer walks them (`kalab.report.write_json`), and
memory stays with the connections open.
"""

from __future__ import annotations

import heapq
import pickle
import tempfile
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import fields
from operator import attrgetter
from typing import BinaryIO

from kalab.analyzer import Finished
from kalab.report import Connection, HttpRequest, Records

_CONNECTION = attrgetter(*(f.name for f in fields(Connection)))
_REQUEST = attrgetter(*(f.name for f in fields(HttpRequest)))
_RECENT = 512  # connections whose requests are kept at hand while requests are read
_RUN = 1 << 16  # requests sorted at once; the sorted runs are then merged


class Spool:
    """Write `Finished` records as they come (`add`); `records` gives them back numbered.

    Per connection it keeps 27 bytes (where its record lies and its size, its place by
    provisional number, whether its SYN was seen, its server port, where its requests
    start) and per request 8 (its time sent), and numbering adds 12 and 8: 2 million
    connections and 4 million requests take about 120 MB.
    """

    def __init__(self) -> None:
        self._file: BinaryIO = tempfile.TemporaryFile(prefix="kalab-records-")
        self._at = array("q")  # per connection as added: its offset in the file
        self._record_size = array("I")  # its record's bytes there; its requests follow
        self._where = array("i")  # provisional number - 1 -> its place added
        self._syn = array("b")  # per connection as added: its SYN was seen
        self._port = array("H")  # its server port
        self._first = array("i")  # its first request's place among the requests added
        self._sent = array("d")  # per request as added: `HttpRequest.sent_at`
        self._size = 0

    def extend(self, finished: Iterable[Finished]) -> None:
        """`add` each."""
        for done in finished:
            self.add(done)

    def add(self, done: Finished) -> None:
        """One final record to the file, then its requests: each read alone."""
        blob = pickle.dumps(_CONNECTION(done.connection), pickle.HIGHEST_PROTOCOL)
        self._record_size.append(len(blob))
        if done.requests:
            blob += pickle.dumps([_REQUEST(r) for r in done.requests], pickle.HIGHEST_PROTOCOL)
        self._file.write(blob)
        number = done.connection.id
        if number > len(self._where):
            self._where.frombytes(bytes(4 * (number - len(self._where))))
        self._where[number - 1] = len(self._at)
        self._at.append(self._size)
        self._size += len(blob)
        self._syn.append(done.syn_seen)
        self._port.append(done.server_port)
        self._first.append(len(self._sent))
        self._sent.extend(r.sent_at for r in done.requests)

    def records(self, ports: set[int] | frozenset[int], servers: set[int]
                ) -> tuple[Records, Records]:
        """The connections and the requests, numbered as `kalab.analyzer.assemble` numbers
        them, once every record is in. ``ports``: those the Analyzer followed;
        ``servers``: its `server_ports`. Called once."""
        self._file.flush()
        self._first.append(len(self._sent))  # where the last one's requests end
        first, sent = self._first, self._sent
        keep_all = bool(ports) or not servers
        order = array("i")  # places added, in the order kept connections are numbered
        final = array("i", bytes(4 * len(self._at)))  # place added -> its number; 0: out
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
        reader = _Reader(self._file, self._at, self._record_size, first, final, rank)
        return (Records(len(order), lambda: map(reader.connection, order)),
                Records(len(by_time), lambda: reader.requests(by_time)))


class _Reader:
    """Records back from the spool file, their numbers set. A connection's record is read
    without its requests, a connection's requests without its record."""

    def __init__(self, file: BinaryIO, at: array, record_size: array, first: array,
                 final: array, rank: array) -> None:
        self.file, self.at, self.record_size = file, at, record_size
        self.first, self.final, self.rank = first, final, rank
        self._pos = -1  # where the file is: no seek for records read in the order written

    def _load(self, offset: int) -> object:
        if offset != self._pos:
            self.file.seek(offset)
        value = pickle.load(self.file)
        self._pos = self.file.tell()
        return value

    def connection(self, place: int) -> Connection:
        connection = Connection(*self._load(self.at[place]))
        connection.id = self.final[place]
        rank = self.rank
        connection.requests = [f"w{rank[r]}" for r in range(self.first[place],
                                                             self.first[place + 1])]
        return connection

    def _requests(self, place: int) -> list[HttpRequest]:
        """Its requests, which follow its record in the file."""
        made = [HttpRequest(*r) for r in self._load(self.at[place] + self.record_size[place])]
        number, first, rank = self.final[place], self.first[place], self.rank
        for depth, request in enumerate(made):
            request.connection = number
            request.id = f"w{rank[first + depth]}"
        return made

    def requests(self, by_time: array) -> Iterator[HttpRequest]:
        recent: dict[int, list[HttpRequest]] = {}
        first = self.first
        for request in by_time:
            place = bisect_right(first, request) - 1  # its connection's place added
            if place not in recent:
                if len(recent) >= _RECENT:
                    del recent[next(iter(recent))]
                recent[place] = self._requests(place)
            yield recent[place][request - first[place]]
