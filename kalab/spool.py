"""Final records on disk while a capture is read, read back in the report's order.

The `Analyzer` hands out each connection's record as it becomes final
(`kalab.analyzer.Finished`), numbered provisionally. A `Spool` writes each
one to a temporary file (a pickle of its fields' values and its requests')
and keeps only what `kalab.analyzer.assemble` needs to number them, in
arrays of machine numbers: per connection where it lies, its provisional
number, whether its SYN was seen and its server port; per request its time
sent. `Spool.records` numbers them exactly as `assemble` does and returns two
`Records`: sequences that read the connections (in order seen) and the
requests (in order sent) back from the file each time they are walked,
their ids set as `assemble` sets them. The report's writer walks them
(`kalab.report.write_json`), and memory stays with the connections open.
"""

from __future__ import annotations

import pickle
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import fields
from operator import attrgetter
from typing import Any, BinaryIO

from kalab.analyzer import Finished
from kalab.report import Connection, HttpRequest, Records

_CONNECTION = attrgetter(*(f.name for f in fields(Connection)))
_REQUEST = attrgetter(*(f.name for f in fields(HttpRequest)))
_RECENT = 512  # connections whose requests are kept at hand while requests are read


class Spool:
    """Write `Finished` records as they come (`add`); `records` gives them back numbered."""

    def __init__(self) -> None:
        self._file: BinaryIO = tempfile.TemporaryFile(prefix="kalab-records-")
        self._at = array("q")  # per connection as added: its offset in the file
        self._number = array("q")  # its provisional number (`Connection.id`)
        self._syn = array("b")  # its SYN was seen
        self._port = array("l")  # its server port
        self._first = array("q")  # its first request's place among the requests added
        self._sent = array("d")  # per request as added: `HttpRequest.sent_at`
        self._size = 0

    def extend(self, finished: Iterable[Finished]) -> None:
        """`add` each."""
        for done in finished:
            self.add(done)

    def add(self, done: Finished) -> None:
        """One final record, and its requests, to the file."""
        blob = pickle.dumps((_CONNECTION(done.connection),
                             [_REQUEST(r) for r in done.requests]), pickle.HIGHEST_PROTOCOL)
        self._file.write(blob)
        self._at.append(self._size)
        self._size += len(blob)
        self._number.append(done.connection.id)
        self._syn.append(done.syn_seen)
        self._port.append(done.server_port)
        self._first.append(len(self._sent))
        self._sent.extend(r.sent_at for r in done.requests)

    def records(self, ports: set[int] | frozenset[int], servers: set[int]
              ) -> tuple[Records, Records]:
        """The connections and the requests, numbered as `kalab.analyzer.assemble` numbers
        them. ``ports``: those the Analyzer followed; ``servers``: its `server_ports`."""
        self._file.flush()
        added = len(self._at)
        where = array("q", bytes(8 * added))  # provisional number - 1 -> place added
        for place, number in enumerate(self._number):
            where[number - 1] = place
        keep_all = bool(ports) or not servers
        order = array("q")  # places added, in the order kept connections are numbered
        final = array("q", bytes(8 * added))  # place added -> its number; 0: left out
        for place in where:
            if keep_all or not self._syn[place] or self._port[place] in servers:
                order.append(place)
                final[place] = len(order)
        # Requests by time sent; the sort is stable, so those sent at the same instant
        # stay by connection, then depth (as `assemble` gathers them).
        gathered = [r for place in order for r in range(self._first[place], self._ends(place))]
        gathered.sort(key=self._sent.__getitem__)
        rank = array("q", bytes(8 * len(self._sent)))  # request added -> its number
        for number, request in enumerate(gathered, 1):
            rank[request] = number
        requests = array("q", gathered)
        del gathered
        reader = _Reader(self._file, self._at, self._first, final, rank, self._ends)
        return (Records(len(order), lambda: map(reader.connection, order)),
                Records(len(requests), lambda: reader.requests(requests)))

    def _ends(self, place: int) -> int:
        """Where the requests of the connection added at ``place`` end."""
        return self._first[place + 1] if place + 1 < len(self._first) else len(self._sent)


class _Reader:
    """Records back from the spool file, their numbers set."""

    def __init__(self, file: BinaryIO, at: array, first: array, final: array, rank: array,
                 ends: Any) -> None:
        self.file, self.at, self.first, self.final, self.rank = file, at, first, final, rank
        self.ends = ends
        self.owner = array("q")  # request added -> place added of its connection
        for place in range(len(at)):
            self.owner.extend([place] * (ends(place) - first[place]))

    def _load(self, place: int) -> tuple[Connection, list[HttpRequest]]:
        self.file.seek(self.at[place])
        values, requests = pickle.load(self.file)
        number = self.final[place]
        first = self.first[place]
        made = [HttpRequest(*r) for r in requests]
        for depth, request in enumerate(made):
            request.connection = number
            request.id = f"w{self.rank[first + depth]}"
        connection = Connection(*values)
        connection.id = number
        connection.requests = [r.id for r in made]
        return connection, made

    def connection(self, place: int) -> Connection:
        return self._load(place)[0]

    def requests(self, order: array) -> Iterator[HttpRequest]:
        recent: dict[int, list[HttpRequest]] = {}
        for request in order:
            place = self.owner[request]
            if place not in recent:
                if len(recent) >= _RECENT:
                    del recent[next(iter(recent))]
                recent[place] = self._load(place)[1]
            yield recent[place][request - self.first[place]]
