"""The fast path of the report writer (`kalab.report_fast`) writes the plain writer's bytes.

`kalab.report` writes each connection and request with a call of its own;
`kalab.report_fast.record_lines` writes a whole list in one orjson call and
cuts it at the boundaries between records. Whatever the records hold
(strings that look like boundaries, objects nested in them that start like
a record, NaN and infinities, text in any script), the list it writes is
the plain one, or it says None and leaves the list to the plain writer.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pcap_formats import mixed_capture, records, write

from kalab import report, report_fast

SEPARATOR = b",\n      "


@pytest.fixture(scope="module")
def wire(tmp_path_factory) -> tuple[tuple, tuple]:
    """The records of a capture (three connections, six requests), never changed: the
    tests write copies."""
    folder = tmp_path_factory.mktemp("wire")
    connections, requests = records(write(folder / "x.pcap", mixed_capture()))
    return tuple(connections), tuple(requests)


def plain(items: list) -> bytes:
    return SEPARATOR.join(report.record_line(r) for r in items)


def test_the_fast_path_writes_ordinary_records_as_the_plain_writer_does(wire):
    for items in map(list, wire):
        fast = report_fast.record_lines(items, SEPARATOR)
        assert fast is not None  # taken: these are the records every report holds
        assert bytes(fast) == plain(items)
        assert [json.loads(line.rstrip(b",")) for line in bytes(fast).split(b"\n")] == \
            [json.loads(json.dumps(dataclasses.asdict(r))) for r in items]


def test_the_fast_path_refuses_what_it_cannot_write_alike(wire, monkeypatch):
    connections, requests = map(list, wire)
    assert report_fast.record_lines([*connections, *requests], SEPARATOR) is None  # mixed
    odd = dataclasses.replace(requests[0])
    odd.note = "an attribute beside the fields"  # orjson would write it; the plain one not
    assert report_fast.record_lines([odd, *requests[1:]], SEPARATOR) is None
    nested = dataclasses.replace(requests[0], client={"tries": [{"id": 1}, {"id": 2}]})
    assert report_fast.record_lines([nested, *requests[1:]], SEPARATOR) is None
    keyed = dataclasses.replace(requests[0], client={1: "a key orjson cannot write"})
    assert report_fast.record_lines([keyed], SEPARATOR) is None
    monkeypatch.setattr(report_fast, "orjson", None)
    assert report_fast.record_lines(requests, SEPARATOR) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=12)
    | st.floats(allow_nan=True, allow_infinity=True, width=32)
    | st.sampled_from(['},{"id":', '"id"', "caf\u00e9 \u2603 \U0001f600", "\\", "\n"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["id", "a", "tries", '},{"id":']), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_drawn_records_are_written_alike_or_refused(wire, data):
    _, requests = wire
    items = [dataclasses.replace(
        requests[data.draw(st.integers(0, len(requests) - 1))],
        target=data.draw(st.text(max_size=20) | st.just('/x"},{"id":"y')),
        client=data.draw(st.none() | st.dictionaries(st.text(max_size=5), json_values,
                                                      max_size=3)),
        advertised_timeout=data.draw(st.none() | st.floats(allow_nan=True)))
        for _ in range(data.draw(st.integers(1, 5)))]
    fast = report_fast.record_lines(items, SEPARATOR)
    if fast is not None:
        assert bytes(fast) == plain(items)
    lines = plain(items).split(b"\n")
    assert len(lines) == len(items)  # one a line, whatever they hold
    assert [json.loads(line.strip().rstrip(b",")) for line in lines] == \
        [json.loads(json.dumps(report.finite(dataclasses.asdict(r)))) for r in items]


def test_a_whole_report_is_the_same_either_way(wire, monkeypatch):
    connections, requests = map(list, wire)
    run = report.EngineRun(engine="capture", kind="unknown", description="x", version=None,
                           listen=None, options={}, capture=report.Capture(),
                           connections=connections, requests=requests)
    document = report.Report(schema=report.SCHEMA, scenario=None, name="x", runtime="analyze",
                             started_at=1.0, finished_at=2.0, runs=[run], verdict="observed",
                             exit_code=0)
    fast = report.to_json_bytes(document)
    monkeypatch.setattr(report_fast, "record_lines", lambda *_: None)
    assert report.to_json_bytes(document) == fast
