"""The question language: queries over a report, answer types, marks with evidence."""

from __future__ import annotations

import pytest
from report_samples import sample_report

from kalab.course.query import QueryError, evaluate, parse
from kalab.course.questions import Question, key_value, mark, right_answer


@pytest.fixture(scope="module")
def report():
    return sample_report()


@pytest.mark.parametrize("text,value", [
    ("connections.count", 2),
    ("requests.count", 2),
    ("request[2].connection.client_port", 40002),
    ("request[1].connection.closed_by", "server"),
    ("request[1].connection.idle_before_close", 0.01),
    ("request[2].status", 200),
    ("request[2].reused", False),
    ("request[1].connection", 1),
    ("connection[2].first_fin_by", "server"),
    ("connection[1].request_count", 1),
    ("keeps: request[3].status", 500),
    ("keeps: request[3].connection.closed_by", "client"),
    ("keeps: request[3].connection.closed_with", "rst"),
    ("keeps:connections.count", 1),
    ("keeps: request[2].reused", True),
    ("keeps: connection[1].requests", ["1", "2", "3"]),
])
def test_a_query_names_one_value_of_the_report(report, text, value):
    assert evaluate(text, report).value == value


def test_the_evidence_quotes_the_wire(report):
    answer = evaluate("connections.count", report)
    assert answer.evidence.startswith("2 connection(s): #1 from port 40001 carried 1; "
                                      "the first FIN came from the server 0.010 s after")
    answer = evaluate("keeps: request[3].connection.closed_by", report)
    assert "a RST came from the client" in answer.evidence
    assert answer.evidence.endswith("closed_by = client")


@pytest.mark.parametrize("text,why", [
    ("request[3].connection.nope", "has no field 'nope'"),
    ("requests[3].status", "requests has one field"),
    ("connections", "connections has one field"),
    ("request.status", "request needs"),
    ("connection[x].status", "takes a number"),
    ("request[1]", "name a field"),
    ("request[1].status.more", "nothing follows"),
    ("pcap.count", "unknown subject"),
    ("request[1].status; import os", "not a query"),
    ("", "not a query"),
])
def test_a_query_is_checked_against_the_record(text, why):
    with pytest.raises(QueryError, match=why):
        parse(text)


@pytest.mark.parametrize("text,why", [
    ("request[9].status", "never reached the wire"),
    ("connection[3].closed_by", "has 2 connection"),
    ("other: connections.count", "no engine 'other'"),
])
def test_a_run_that_lacks_the_answer_says_so(report, text, why):
    with pytest.raises(QueryError, match=why):
        evaluate(text, report)


def question(text: str, kind: str, **extra) -> Question:
    return Question(id="q", text="?", query=parse(text), type=kind, **extra)


def test_answer_types_read_the_value_as_a_student_would(report):
    assert right_answer(question("request[1].connection.closed_by", "side"), report)[0] \
        == "server"
    assert right_answer(question("keeps: request[3].connection.closed_by", "side"),
                        report)[0] == "client"
    assert right_answer(question("keeps: request[2].reused", "yes-no"), report)[0] == "yes"
    assert right_answer(question("request[2].connection.client_port", "port"), report)[0] \
        == 40002
    story = question("request[1].response_connection", "choice",
                     choices=("keep-alive", "Keep-Alive, Close"))
    assert right_answer(story, report)[0] == "Keep-Alive, Close"


def test_a_run_that_cannot_key_a_question_is_refused(report):
    with pytest.raises(QueryError, match="not among the choices"):
        right_answer(question("request[1].response_connection", "choice",
                              choices=("close",)), report)
    keeps = question("keeps: connection[1].first_fin_by", "side")
    with pytest.raises(QueryError, match="does not show it"):
        right_answer(keeps, report)
    with pytest.raises(QueryError, match="not a whole number"):
        key_value(question("request[1].connection.idle_before_close", "count"),
                  evaluate("request[1].connection.idle_before_close", report))


@pytest.mark.parametrize("kind,text,given,right", [
    ("count", "connections.count", 2, True),
    ("count", "connections.count", "2", True),
    ("count", "connections.count", 2.0, True),
    ("count", "connections.count", 3, False),
    ("count", "connections.count", True, False),
    ("count", "connections.count", [2], False),
    ("number", "request[1].connection.idle_before_close", 0.05, True),
    ("number", "request[1].connection.idle_before_close", "0.2", False),
    ("number", "request[1].connection.idle_before_close", float("nan"), False),
    ("port", "request[2].connection.client_port", 40002, True),
    ("port", "request[2].connection.client_port", 40001, False),
    ("side", "request[1].connection.closed_by", " Server ", True),
    ("side", "request[1].connection.closed_by", "client", False),
    ("yes-no", "keeps: request[2].reused", "YES", True),
    ("yes-no", "keeps: request[2].reused", False, False),
])
def test_marks(report, kind, text, given, right):
    result = mark(question(text, kind), given, report)
    assert result.right is right
    assert result.score == (1.0 if right else 0.0)
    assert ("right" if right else "wrong") in result.evidence


def test_a_wrong_answer_is_marked_with_the_wire_quoted(report):
    result = mark(question("connections.count", "count", points=2), 1, report)
    assert (result.right, result.score, result.expected) == (False, 0.0, 2)
    assert result.evidence.startswith("wrong: answered 1, the wire shows 2: 2 connection(s): "
                                      "#1 from port 40001")
    missing = mark(question("connections.count", "count"), None, report)
    assert missing.evidence.startswith("no answer; the wire shows 2")
