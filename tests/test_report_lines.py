"""A record's line (`kalab.report.record_line`): its fields, on one line, whoever writes it.

orjson writes a connection or request itself where it is installed: the same
bytes as orjson writing a dict of its fields, the plain way. The json module
writes that dict otherwise, or where orjson cannot (a key that is not a
string): the same document (a float below 1e-4 has an exponent there, not in
orjson's). Whatever the records hold (strings that look like JSON, objects
nested in them, NaN and infinities, text in any script), each is one line
that parses to the record's fields.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pcap_formats import mixed_capture, records, write

from kalab import report


@pytest.fixture(scope="module")
def wire(tmp_path_factory) -> tuple[tuple, tuple]:
    """The records of a capture (three connections, six requests), never changed: the
    tests write copies."""
    folder = tmp_path_factory.mktemp("wire")
    connections, requests = records(write(folder / "x.pcap", mixed_capture()))
    return tuple(connections), tuple(requests)


def by_json(record, monkeypatch) -> bytes:
    with monkeypatch.context() as patched:
        patched.setattr(report, "orjson", None)
        return report.record_line(record)


def test_orjson_and_json_write_a_record_alike(wire, monkeypatch):
    assert report.orjson is not None, "the project's dependencies install orjson"
    for record in (*wire[0], *wire[1]):
        line = report.record_line(record)
        assert line == by_json(record, monkeypatch)
        assert json.loads(line) == json.loads(json.dumps(dataclasses.asdict(record)))


def test_only_the_fields_are_written_whoever_writes(wire, monkeypatch):
    _, requests = wire
    odd = dataclasses.replace(requests[0])
    odd.note = "an attribute beside the fields"  # orjson would write it: json writes it
    assert b"note" not in report.record_line(odd)
    assert report.record_line(odd) == report.record_line(requests[0])
    keyed = dataclasses.replace(requests[0], client={1: "a key orjson cannot write"})
    assert report.record_line(keyed) == by_json(keyed, monkeypatch)
    assert json.loads(report.record_line(keyed))["client"] == {"1": "a key orjson cannot write"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=12)
    | st.floats(allow_nan=True, allow_infinity=True, width=32)
    | st.sampled_from(['},{"id":', '"id"', "caf\u00e9 \u2603 \U0001f600", "\\", "\n"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["id", "a", "tries", '},{"id":']), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_drawn_records_are_written_alike(wire, data):
    _, requests = wire
    record = dataclasses.replace(
        requests[data.draw(st.integers(0, len(requests) - 1))],
        target=data.draw(st.text(max_size=20) | st.just('/x"},{"id":"y')),
        client=data.draw(st.none() | st.dictionaries(st.text(max_size=5), json_values,
                                                      max_size=3)),
        advertised_timeout=data.draw(st.none() | st.floats(allow_nan=True)))
    line = report.record_line(record)
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    assert line == report._compact(fields)  # orjson on the record, or on a dict of it
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(report, "orjson", None)
        by_json = report.record_line(record)
    expected = json.loads(json.dumps(report.finite(dataclasses.asdict(record))))
    for written in (line, by_json):
        assert b"\n" not in written  # one a line, whatever it holds
        assert json.loads(written) == expected
