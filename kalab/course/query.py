"""The query language of questions: one value of a run's report, named as a student finds it.

A question's answer is never typed by hand: it is a query over the report
of the student's own run (`kalab.report`), evaluated when the key is made
and again when an answer is graded. A query names one value:

    [ENGINE:] SUBJECT [.FIELD ...]

SUBJECT is one of

- ``connections``: the connections that carried a request (probes left
  out), in the order they were opened; its only field is ``count``;
- ``requests``: the requests the scenario sent, retries left out; ``count``;
- ``request[REF]``: one request by its scenario reference (``3``,
  ``post.2``); its fields are `kalab.report.HttpRequest`'s, and
  ``connection``, the connection that carried it;
- ``connection[N]``: the N-th connection that carried a request (from 1);
  its fields are `kalab.report.Connection`'s, and ``client_port``,
  ``server_port`` and ``request_count``.

``ENGINE:`` picks an engine of the run by its scenario name; without it the
run's first engine is meant. Examples: ``connections.count``,
``request[3].connection.client_port``, ``request[4].connection.closed_by``,
``gthread-5: connection[1].idle_before_close``.

`parse` checks a query against the record's own fields, so a typo in a lab
is refused by `kalab check`; `evaluate` answers it from a report, with the
evidence in words ("request 3 went on #2, from port 40318"), or raises
`QueryError` when the run does not hold the answer (the request never
reached the wire, say).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from kalab.report import Closing, Connection, EngineRun, HttpRequest, Report

SUBJECTS = ("connections", "requests", "request", "connection")
CONNECTION_EXTRA = ("client_port", "server_port", "request_count")
REQUEST_EXTRA = ("connection",)
_FORM = re.compile(r"\s*(?:(?P<engine>[A-Za-z0-9_][A-Za-z0-9._-]*)\s*:\s*)?"
                   r"(?P<subject>[a-z]+)(?:\[(?P<key>[A-Za-z0-9._-]+)\])?"
                   r"(?P<path>(?:\.[a-z_]+)*)\s*")


class QueryError(ValueError):
    """A query that does not parse, names no field, or that the run cannot answer."""


@dataclass(frozen=True)
class Query:
    text: str
    engine: str | None
    subject: str
    key: str | None
    path: tuple[str, ...]


@dataclass(frozen=True)
class Answer:
    """A query's value, and where in the run it came from, in words."""

    value: Any
    evidence: str


def _fields(record: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(record))


def parse(text: str) -> Query:
    """A query checked against the report's record types; `QueryError` says what is wrong."""
    match = _FORM.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise QueryError(f"not a query: {text!r} (e.g. request[3].connection.client_port)")
    subject, key = match["subject"], match["key"]
    path = tuple(p for p in match["path"].split(".") if p)
    if subject not in SUBJECTS:
        raise QueryError(f"unknown subject {subject!r} (choose from: {', '.join(SUBJECTS)})")
    if subject in ("request", "connection") and key is None:
        raise QueryError(f"{subject} needs [..]: e.g. {subject}[1]")
    if subject in ("connections", "requests"):
        if key is not None or path != ("count",):
            raise QueryError(f"{subject} has one field, count: {subject}.count")
    elif subject == "connection" and not key.isdigit():
        raise QueryError(f"connection[N] takes a number from 1, got {key!r}")
    else:
        record: type = HttpRequest if subject == "request" else Connection
        for place, step in enumerate(path, 1):
            if record is HttpRequest and step == "connection":
                record = Connection
                continue
            known = _fields(record) + (CONNECTION_EXTRA if record is Connection
                                       else REQUEST_EXTRA)
            if step not in known:
                raise QueryError(f"{record.__name__} has no field {step!r} (known: "
                                 f"{', '.join(known)})")
            if place != len(path):  # by place: `reused.reused` repeats the last name
                raise QueryError(f"{step!r} is a value: nothing follows it")
        if not path:
            raise QueryError(f"name a field of the {subject}: e.g. {subject}[{key}].status")
    return Query(text.strip(), match["engine"], subject, key, path)


def _run(report: Report, engine: str | None) -> EngineRun:
    if not report.runs:
        raise QueryError("the run has no engine's record")
    if engine is None:
        return report.runs[0]
    for run in report.runs:
        if run.engine == engine:
            return run
    raise QueryError(f"the run has no engine {engine!r} (it has: "
                     f"{', '.join(r.engine for r in report.runs)})")


def carrying(run: EngineRun) -> list[Connection]:
    """The connections that carried a request, in the order they were opened."""
    return [c for c in run.connections if c.requests]


def port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def describe(conn: Connection) -> str:
    """A connection in a grader's words: its port, its requests, who closed it and when."""
    words = f"#{conn.id} from port {port(conn.client)} carried {', '.join(conn.requests)}"
    if conn.closed_by is None or conn.refused:
        return f"{words}; {'refused' if conn.refused else 'never closed'}"
    how = "a RST" if conn.closed_with == Closing.RST else "the first FIN"
    words += f"; {how} came from the {conn.closed_by}"
    if conn.idle_before_close is not None:
        words += f" {conn.idle_before_close:.3f} s after the last data"
    return words


def evaluate(query: Query | str, report: Report) -> Answer:
    """The query's value in ``report``."""
    if isinstance(query, str):
        query = parse(query)
    run = _run(report, query.engine)
    if query.subject == "connections":
        conns = carrying(run)
        return Answer(len(conns), f"{len(conns)} connection(s): "
                      + "; ".join(describe(c) for c in conns))
    if query.subject == "requests":
        sent = [r for r in run.requests if "~" not in r.id and r.client is not None] \
            or [r for r in run.requests if "~" not in r.id]
        return Answer(len(sent), f"{len(sent)} request(s): "
                      + ", ".join(f"{r.id} on #{r.connection}" for r in sent))
    by_conn = {c.id: c for c in run.connections}
    if query.subject == "connection":
        conns = carrying(run)
        number = int(query.key)
        if not 1 <= number <= len(conns):
            raise QueryError(f"the run has {len(conns)} connection(s) that carried a "
                             f"request, not {number}")
        return _value(conns[number - 1], query.path, describe(conns[number - 1]))
    request = next((r for r in run.requests if r.id == query.key), None)
    if request is None:
        raise QueryError(f"request {query.key} never reached the wire in this run")
    if query.path[0] == "connection":
        conn = by_conn[request.connection]
        where = f"request {request.id} went on {describe(conn)}"
        if len(query.path) == 1:
            return Answer(conn.id, where)
        return _value(conn, query.path[1:], where)
    return _value(request, query.path, f"request {request.id} ({request.method} "
                  f"{request.target}) went on #{request.connection} at depth {request.depth}")


def _value(record: Connection | HttpRequest, path: tuple[str, ...], where: str) -> Answer:
    (name,) = path
    if name == "client_port":
        value: Any = port(record.client)
    elif name == "server_port":
        value = port(record.server)
    elif name == "request_count":
        value = len(record.requests)
    else:
        value = getattr(record, name)
    return Answer(value, f"{where}: {name} = {_shown(value)}")


def _shown(value: Any) -> str:
    if value is None:
        return "none (the wire did not show it)"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)
