"""The lab language: a scenario's course: block, params drawn per student, ${} substitution."""

from __future__ import annotations

import json
from collections import Counter

import jsonschema
import pytest
from conftest import run_kalab

from kalab import scenario_schema
from kalab.course.lab import MAX_STEPS, Param, check_student, draw, evaluate
from kalab.course.query import Query
from kalab.course.questions import Question
from kalab.scenario import ScenarioError, document, load, parse

LAB = """\
name: tutorial-claims
course:
  title: The tutorial's claims, on the wire
  teaches: |
    gunicorn keeps an idle connection ${keep_alive} s.
  look_for: The FIN's sender.
  read_first: RFC 9112 section 9.6
  params:
    keep_alive: {choose: [2, 3, 4, 5]}
    gap: {between: [1.0, 3.0], step: 0.5}
    method: {choose: [get, head], default: head}
  questions:
    - id: connections
      text: How many TCP connections did the client open to Werkzeug?
      answer: {query: "werkzeug: connections.count", type: count}
      points: 2
      look: "Wireshark: tcp.flags.syn == 1 && tcp.flags.ack == 0"
    - id: idle
      text: How long was request 3's connection idle (keep-alive ${keep_alive} s)?
      answer: {query: "gthread: request[3].connection.idle_before_close", type: number,
               tolerance: 0.2}
    - id: story
      text: What happened to request 4?
      answer: {query: "request[4].story", type: choice,
               choices: [new, reused, replaced dropped connection, raced the FIN, unanswered]}
sessions:
  - steps:
      - get: /keep-alive
      - sleep: ${gap}
      - get: /keep-alive
      - sleep: ${keep_alive + 1}
      - get: /keep-alive
      - sleep: "${gap * 2 - 0.5}"
      - request: {method: "${method}", path: "/keep-alive?gap=${gap}"}
engines:
  - engine: werkzeug
  - name: gthread
    engine: gunicorn
    keep_alive: ${keep_alive}
    expect:
      - close: {request: 3, by: server, idle: "${keep_alive}", tolerance: 0.5}
        claim: the server closes ${keep_alive} s after the last response
"""


def line_of(text: str, marker: str) -> int:
    return text[:text.index(marker)].count("\n") + 1


def refused(text: str, student: str | None = None) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse(text, "lab.yaml", student)
    error = caught.value
    assert str(error).startswith("lab.yaml") and "\n" not in str(error)
    return error


def test_a_lab_loads_with_its_course_and_the_defaults_without_a_student():
    lab = parse(LAB, "lab.yaml")
    course = lab.course
    assert (lab.student, lab.params) == (None, {"keep_alive": 2, "gap": 1, "method": "head"})
    assert course.title == "The tutorial's claims, on the wire"
    assert course.teaches == "gunicorn keeps an idle connection 2 s.\n"
    assert (course.look_for, course.read_first) == ("The FIN's sender.", "RFC 9112 section 9.6")
    assert course.line == line_of(LAB, "  title:")  # a block mapping starts at its first key
    keep_alive, gap, method = course.params.values()
    assert keep_alive == Param("keep_alive", "choose", (2, 3, 4, 5), 2,
                               line_of(LAB, "    keep_alive: {"))
    assert (gap.kind, gap.values, gap.step, gap.high) == ("between", (1, 1.5, 2, 2.5, 3), 0.5, 3)
    assert (method.values, method.default) == (("get", "head"), "head")
    assert [p.describe() for p in course.params.values()] == ["4 choices", "5 steps",
                                                              "2 choices"]


def test_a_lab_s_questions_are_built_with_their_queries_parsed():
    connections, idle, story = parse(LAB, "lab.yaml").course.questions
    assert connections == Question(
        id="connections", text="How many TCP connections did the client open to Werkzeug?",
        query=Query("werkzeug: connections.count", "werkzeug", "connections", None, ("count",)),
        type="count", points=2, look="Wireshark: tcp.flags.syn == 1 && tcp.flags.ack == 0",
        line=line_of(LAB, "- id: connections"))
    assert idle.text == "How long was request 3's connection idle (keep-alive 2 s)?"
    assert (idle.type, idle.tolerance, idle.points) == ("number", 0.2, 1)
    assert idle.query.path == ("connection", "idle_before_close")
    assert story.choices[3] == "raced the FIN" and story.query.key == "4"
    assert parse(LAB, "lab.yaml").course.question("idle") == idle


def test_params_are_substituted_as_numbers_or_inside_strings():
    lab = parse(LAB, "lab.yaml", "s1234567")
    keep_alive, gap = lab.params["keep_alive"], lab.params["gap"]
    steps = lab.sessions[0].steps
    assert [s.seconds for s in steps if s.kind == "sleep"] == [gap, keep_alive + 1,
                                                              gap * 2 - 0.5]
    gthread = lab.engine("gthread")
    assert gthread.keep_alive == keep_alive and gthread.expect[0].idle == keep_alive
    assert gthread.expect[0].claim == f"the server closes {keep_alive} s after the last response"
    last = steps[-1].request
    assert last.method == lab.params["method"].upper()
    assert last.path == f"/keep-alive?gap={gap:g}"


def test_a_value_is_written_plainly_and_float_noise_is_rounded_off():
    text = ("sessions: [{steps: [get: '/${1 + 1.5}/${4 / 2}/${0.1 * 3}/${-(2)}', "
            "sleep: '${0.1 * 3}']}]\nengines: [{engine: werkzeug}]\n")
    scenario = parse(text)
    assert scenario.requests[0].path == "/2.5/2/0.3/-2"
    assert scenario.sessions[0].steps[1].seconds == 0.3
    # a scenario without a course: arithmetic works, names do not, nothing is recorded
    assert (scenario.course, scenario.student, scenario.params) == (None, None, {})
    error = refused(text.replace("1 + 1.5", "gap"))
    assert "unknown name 'gap' (params: none: the lab has no course.params)" in error.message


def test_a_literal_dollar_brace_is_written_twice():
    scenario = parse("sessions: [{steps: [request: {body: 'a $${x} b ${1 + 1}'}]}]\n"
                     "engines: [{engine: werkzeug}]\n")
    assert scenario.requests[0].body == "a ${x} b 2"


def test_a_substituted_value_is_bound_checked_at_the_line_it_was_written_on():
    text = LAB.replace("sleep: ${keep_alive + 1}", "sleep: ${keep_alive * 2000}")
    error = refused(text)
    assert (error.line, error.where) == (line_of(text, "keep_alive * 2000"),
                                         "sessions[0].steps[3].sleep")
    assert error.message == "must be <= 3600, got 4000 (from '${keep_alive * 2000}')"
    # only the students who draw a big value are refused: the bound holds for every draw
    text = LAB.replace("keep_alive: ${keep_alive}\n", "keep_alive: ${keep_alive * 900}\n")
    assert parse(text, "lab.yaml").engine("gthread").keep_alive == 1800
    students = [f"s{i}" for i in range(40)]
    outcomes = set()
    for student in students:
        try:
            outcomes.add(parse(text, "lab.yaml", student).engine("gthread").keep_alive)
        except ScenarioError as error:
            assert (error.line, error.where) == (line_of(text, "* 900"), "engines[1].keep_alive")
            assert error.message == "must be <= 3600, got 4500 (from '${keep_alive * 900}')"
            outcomes.add("refused")
    assert outcomes == {1800, 2700, 3600, "refused"}


def test_a_word_becomes_a_string_and_is_checked_as_one():
    text = LAB.replace("method: {choose: [get, head], default: head}",
                       "method: {choose: [get, trace], default: trace}")
    error = refused(text)
    assert error.where == "sessions[0].steps[6].request.method"
    assert "unknown value 'trace'" in error.message


def test_drawing_is_deterministic_and_spreads_over_the_values():
    assert parse(LAB, "lab.yaml", "alice").params == parse(LAB, "lab.yaml", "alice").params
    # the case of an ID does not matter: students type theirs as they like
    assert parse(LAB, "lab.yaml", "ALICE").params == parse(LAB, "lab.yaml", "alice").params
    params = parse(LAB, "lab.yaml").course.params
    drawn = [draw(params, "tutorial-claims", f"student-{i:03d}") for i in range(300)]
    for name, param in params.items():
        counts = Counter(d[name] for d in drawn)
        assert set(counts) == set(param.values), name  # every value is drawn by someone
        assert max(counts.values()) < 300 * 0.75, (name, counts)
    # another lab's name draws differently for the same students
    other = [draw(params, "another-lab", f"student-{i:03d}") for i in range(300)]
    assert sum(a != b for a, b in zip(drawn, other, strict=True)) > 150
    assert draw(params, "tutorial-claims", None) == {"keep_alive": 2, "gap": 1,
                                                     "method": "head"}


def test_a_lab_with_params_must_name_itself():
    error = refused(LAB.replace("name: tutorial-claims\n", ""))
    assert (error.line, error.where) == (1, "name")
    assert "a lab with params needs a name" in error.message
    # the name draws the values: it cannot depend on them
    error = refused(LAB.replace("name: tutorial-claims", "name: lab-${gap}"))
    assert (error.line, error.where) == (1, "name")
    assert error.message.startswith("a name is letters") and "got 'lab-${gap}'" in error.message


@pytest.mark.parametrize("student", ["", ".", "..", "../etc", "a/b", "a b", "x" * 65,
                                     ".hidden", "é", "a\nb", "a\x00", "${gap}", "-" * 65])
def test_a_student_id_that_is_not_a_name_is_refused(student):
    error = refused(LAB, student)
    assert (error.line, error.where) == (None, "student")
    assert error.message.startswith("not a student ID (letters, digits")
    assert "\n" not in error.message and "\x00" not in error.message
    with pytest.raises(ValueError, match="not a student ID"):
        check_student(student)
    with pytest.raises(ValueError, match="not a student ID"):
        draw(parse(LAB, "lab.yaml").course.params, "tutorial-claims", student)


@pytest.mark.parametrize("student", ["a", "s1234567", "Jane.Doe_2-x", "x" * 64, "-a", "0"])
def test_a_student_id_is_a_name(student):
    assert parse(LAB, "lab.yaml", student).student == student


EXPRESSIONS = [
    ("call", "f(1)", "a call is not allowed"),
    ("call-of-a-param", "gap(1)", "a call is not allowed"),
    ("attribute", "gap.real", "an attribute (.) is not allowed"),
    ("dunder-attribute", "(1).__class__", "an attribute (.) is not allowed"),
    ("import-name", "__import__", "unknown name '__import__'"),
    ("import-call", "__import__('os')", "\"'\" is not allowed"),
    ("builtins", "__builtins__", "unknown name '__builtins__'"),
    ("huge-exponent", "9**9**9", "** (a power) is not allowed"),
    ("exponent", "2**10", "** (a power) is not allowed"),
    ("huge-product", "999999*999999*999999", "a number beyond ±1e+12"),
    ("huge-constant", "1" + "0" * 150, "a number beyond ±1e+12"),
    ("infinity", "1e999", "a number beyond ±1e+12"),
    ("division-by-zero", "1/0", "division by zero"),
    ("division-by-a-zero-difference", "gap/(keep_alive-keep_alive)", "division by zero"),
    ("floor-division", "gap//2", "// (floor division) is not allowed"),
    ("unknown-name", "keepalive + 1", "unknown name 'keepalive' (params: keep_alive, gap, "
     "method)"),
    ("arithmetic-on-a-word", "method + 1", "'head' is a word: arithmetic takes numbers"),
    ("minus-a-word", "-method", "'head' is a word"),
    ("comparison", "gap in keep_alive", "a comparison is not allowed"),
    ("boolean", "True", "True is not allowed"),
    ("none", "None", "None is not allowed"),
    ("not", "not gap", "not is not allowed"),
    ("if-else", "gap if gap else 1", "if/else is not allowed"),
    ("and", "gap and 1", "and/or is not allowed"),
    ("lambda", "lambda: 1", "':' is not allowed"),
    ("subscript", "gap[0]", "'[' is not allowed"),
    ("string", "'a'", "\"'\" is not allowed"),
    ("modulo", "gap % 2", "'%' is not allowed"),
    ("fullwidth-letter", "ｇap", "'ｇ' is not allowed"),
    ("nul", "\x00", "'\\x00' is not allowed"),
    ("escape", "\x1b[2J", "'\\x1b' is not allowed"),
    ("tuple", "(1)(2)", "a call is not allowed"),
    ("empty", "", "empty: name a param or write arithmetic"),
    ("spaces", "   ", "empty"),
    ("syntax", "1 +", "not an expression"),
    ("two-numbers", "1 2", "not an expression"),
    ("deep-parentheses", "(" * 99 + "1" + ")" * 99, None),
]


@pytest.mark.parametrize(("expression", "words"), [e[1:] for e in EXPRESSIONS],
                         ids=[e[0] for e in EXPRESSIONS])
def test_an_expression_is_arithmetic_on_params_and_nothing_else(expression, words):
    values = {"keep_alive": 2, "gap": 1.5, "method": "head"}
    if words is None:
        assert evaluate(expression, values) == 1
        return
    with pytest.raises(ValueError) as caught:
        evaluate(expression, values)
    assert words in str(caught.value)
    # and in a lab: refused at the line of the ${...}, quoted safely
    text = LAB.replace('"${gap * 2 - 0.5}"', json.dumps("${" + expression + "}"))
    error = refused(text)
    assert (error.line, error.where) == (line_of(text, "sleep: \"${"),
                                         "sessions[0].steps[5].sleep")
    assert words in error.message and "\x00" not in str(error) and "\x1b" not in str(error)


@pytest.mark.parametrize(("expression", "value"), [
    ("gap", 1.5), ("keep_alive", 2), ("method", "head"), ("-gap", -1.5), ("+gap", 1.5),
    ("keep_alive * (gap + 1) / 5", 1), ("1_000 + 0x10", 1016), ("1e3 / 8", 125),
    ("((keep_alive))", 2), ("2 - -1", 3), ("10 / 4", 2.5), ("1 / 3", 0.333333333333)])
def test_an_expression_has_the_value_arithmetic_gives(expression, value):
    assert evaluate(expression, {"keep_alive": 2, "gap": 1.5, "method": "head"}) == value


def test_a_dollar_brace_without_its_brace_is_refused():
    error = refused(LAB.replace("sleep: ${gap}", "sleep: ${gap"))
    assert "a ${ without its } within 200 characters (write $${ for a literal ${)" in \
        error.message
    long = "${" + "1 + " * 60 + "1}"
    assert "without its }" in refused(LAB.replace("sleep: ${gap}", f"sleep: {long}")).message


def test_more_substitutions_than_a_lab_needs_are_refused():
    text = LAB.replace("look_for: The FIN's sender.",
                       "look_for: '" + "${gap}" * 10_001 + "'")
    error = refused(text)
    assert (error.line, error.where) == (line_of(text, "look_for"), "course.look_for")
    assert "more than 10000 ${...}" in error.message


def case(name: str, old: str, new: str, marker: str, where: str, words: str) -> tuple:
    assert old in LAB, old
    return name, LAB.replace(old, new, 1), marker, where, words


P = "    keep_alive: {choose: [2, 3, 4, 5]}"
G = "    gap: {between: [1.0, 3.0], step: 0.5}"
Q = '      answer: {query: "werkzeug: connections.count", type: count}'
REFUSALS = [
    # questions
    case("bad-query", Q, Q.replace("connections.count", "connections.total"), "werkzeug",
         "course.questions[0].answer.query", "connections has one field, count"),
    case("query-not-a-query", Q, Q.replace("connections.count", "os.system('id')"),
         "werkzeug", "course.questions[0].answer.query", "not a query"),
    case("query-no-such-field", "request[4].story", "request[4].stroy", "request[4]",
         "course.questions[2].answer.query", "HttpRequest has no field 'stroy'"),
    case("query-field-twice", "request[4].story", "request[4].story.story", "request[4]",
         "course.questions[2].answer.query", "'story' is a value: nothing follows it"),
    case("query-unknown-engine", Q, Q.replace("werkzeug:", "tomcat:"), "tomcat",
         "course.questions[0].answer.query",
         "no engine 'tomcat' in the scenario (engines: werkzeug, gthread)"),
    case("query-engine-by-kind-not-name", Q, Q.replace("werkzeug:", "gunicorn:"), "gunicorn:",
         "course.questions[0].answer.query", "no engine 'gunicorn'"),
    case("query-unknown-request", "request[4].story", "request[9].story", "request[9]",
         "course.questions[2].answer.query", "no request '9' in the sessions (known: 1, 2, "
         "3, 4)"),
    case("query-session-request-in-one-session", "request[4].story", "request[s1.4].story",
         "request[s1", "course.questions[2].answer.query", "no request 's1.4'"),
    case("query-connection-zero", "request[4].story", "connection[0].closed_by", "connection[",
         "course.questions[2].answer.query", "connection[0]: the run can have connections 1 "
         "to 4"),
    case("query-connection-beyond", "request[4].story", "connection[5].closed_by",
         "connection[", "course.questions[2].answer.query", "connections 1 to 4"),
    case("choice-without-choices", "type: choice,\n               choices: [new, reused, "
         "replaced dropped connection, raced the FIN, unanswered]", "type: choice", "request[4]",
         "course.questions[2].answer.choices", "missing: a choice question lists its choices"),
    case("choices-without-choice", Q, Q.replace("count}", "count, choices: [a, b]}"),
         "werkzeug", "course.questions[0].answer.choices", "go with type choice, not count"),
    case("tolerance-on-a-count", Q, Q.replace("count}", "count, tolerance: 1}"), "werkzeug",
         "course.questions[0].answer.tolerance", "goes with type number, not count"),
    case("tolerance-on-a-choice", "type: choice,", "type: choice, tolerance: 1,", "request[4]",
         "course.questions[2].answer.tolerance", "goes with type number, not choice"),
    case("choices-twice", "[new, reused,", "[new, ' New',", "choices: [new",
         "course.questions[2].answer.choices[1]", "' New' is there twice"),
    case("one-choice", "[new, reused, replaced dropped connection, raced the FIN, unanswered]",
         "[new]", "choices: [new]", "course.questions[2].answer.choices",
         "has 1 item(s), fewer than the 2 needed"),
    case("count-of-a-number", Q, Q.replace("werkzeug: connections.count",
                                           "request[1].connection.idle_before_close"),
         "idle_before_close", "course.questions[0].answer.type",
         "idle_before_close is a number, and a count answer reads a whole number"),
    case("yes-no-of-a-status", Q, Q.replace("werkzeug: connections.count", "request[1].status")
         .replace("count}", "yes-no}"), "request[1]", "course.questions[0].answer.type",
         "status is a whole number, and a yes-no answer reads true or false"),
    case("a-list-answers-nothing", Q, Q.replace("werkzeug: connections.count",
                                                "connection[1].requests"), "connection[1]",
         "course.questions[0].answer.type", "requests is a list"),
    case("unknown-type", Q, Q.replace("count}", "essay}"), "werkzeug",
         "course.questions[0].answer.type", "unknown value 'essay'"),
    case("duplicate-id", "- id: idle", "- id: Connections", "- id: Conn",
         "course.questions[1].id", "'Connections' is the id of course.questions[0] too"),
    case("id-not-a-slug", "- id: idle", "- id: ../idle", "- id: ..", "course.questions[1].id",
         "a question's id is letters, digits"),
    case("points-zero", "points: 2", "points: 0", "points", "course.questions[0].points",
         "must be > 0, got 0"),
    case("points-negative", "points: 2", "points: -1", "points", "course.questions[0].points",
         "must be > 0, got -1"),
    case("points-many", "points: 2", "points: 1e9", "points", "course.questions[0].points",
         "must be <= 100, got 1e9"),
    case("points-nan", "points: 2", "points: .nan", "points", "course.questions[0].points",
         "must be a finite number above 0, at most 100, got .nan"),
    case("question-text-with-escape", "text: What happened to request 4?",
         'text: "\\e[2JWhat happened to request 4?"', "\\e[2J", "course.questions[2].text",
         "a question's text has no control characters"),
    case("no-title", "  title: The tutorial's claims, on the wire\n", "", "  teaches:",
         "course.title",
         "missing: the lab's title"),
    case("title-two-lines", "title: The tutorial's claims, on the wire",
         'title: "a\\nb"', "title", "course.title", "a title is one line"),
    case("teaching-too-long", "look_for: The FIN's sender.", "look_for: " + "x" * 20_001,
         "look_for", "course.look_for", "has 20001 characters, more than the 20000 allowed"),
    case("unknown-course-field", "  look_for:", "  solutions: no\n  look_for:", "solutions",
         "course.solutions", "unknown field"),
    # params
    case("one-choice-param", P, P.replace("[2, 3, 4, 5]", "[2]"), "keep_alive: {",
         "course.params.keep_alive.choose", "has 1 item(s), fewer than the 2 needed"),
    case("too-many-choices", P, P.replace("[2, 3, 4, 5]", str(list(range(51)))), "keep_alive: {",
         "course.params.keep_alive.choose", "has 51 items, more than the 50 allowed"),
    case("choice-nan", P, P.replace("[2, 3, 4, 5]", "[2, .nan]"), "keep_alive: {",
         "course.params.keep_alive.choose[1]", "must be a finite number from -1e+12 to 1e+12, "
         "got .nan"),
    case("choice-huge", P, P.replace("[2, 3, 4, 5]", "[2, 1e300]"), "keep_alive: {",
         "course.params.keep_alive.choose[1]", "must be <= 1e+12, got 1e300"),
    case("choice-twice", P, P.replace("[2, 3, 4, 5]", "[2, 3, 2.0]"), "keep_alive: {",
         "course.params.keep_alive.choose", "2 is there twice"),
    case("choices-mixed", P, P.replace("[2, 3, 4, 5]", "[2, fast]"), "keep_alive: {",
         "course.params.keep_alive.choose", "all numbers or all words"),
    case("choice-a-path", P, P.replace("[2, 3, 4, 5]", "[a, ../b]"), "keep_alive: {",
         "course.params.keep_alive.choose[1]", "a param's word is letters, digits"),
    case("choice-a-bool", P, P.replace("[2, 3, 4, 5]", "[true, false]"), "keep_alive: {",
         "course.params.keep_alive.choose[0]", "expected a number or a word, got true"),
    case("choice-a-dollar-brace", P, P.replace("[2, 3, 4, 5]", "['${gap}', 2]"),
         "keep_alive: {", "course.params.keep_alive.choose[0]", "a param's word is letters"),
    case("choose-with-step", P, P.replace("]}", "], step: 1}"), "keep_alive: {",
         "course.params.keep_alive.step", "goes with between, not choose"),
    case("default-not-a-choice", P, P.replace("]}", "], default: 7}"), "keep_alive: {",
         "course.params.keep_alive.default", "7 is not one of the values (2, 3, 4, 5)"),
    case("choose-and-between", P, P.replace("]}", "], between: [1, 2]}"), "keep_alive: {",
         "course.params.keep_alive", "exactly one of choose, between"),
    case("step-zero", G, G.replace("0.5}", "0}"), "gap: {", "course.params.gap.step",
         "must be > 0, got 0"),
    case("step-negative", G, G.replace("0.5}", "-0.5}"), "gap: {", "course.params.gap.step",
         "must be > 0, got -0.5"),
    case("step-nan", G, G.replace("0.5}", ".nan}"), "gap: {", "course.params.gap.step",
         "must be a finite number above 0, at most 1e+12, got .nan"),
    case("too-many-steps", G, G.replace("0.5}", "0.001}"), "gap: {", "course.params.gap.step",
         f"makes 2000 steps from 1 to 3, more than the {MAX_STEPS} allowed"),
    case("tiny-step", G, G.replace("0.5}", "5e-324}"), "gap: {", "course.params.gap.step",
         "more than the 1000 allowed"),
    case("step-past-the-range", G, G.replace("0.5}", "5}"), "gap: {", "course.params.gap.step",
         "is more than high - low"),
    case("between-backwards", G, G.replace("[1.0, 3.0]", "[3.0, 1.0]"), "gap: {",
         "course.params.gap.between", "low must be below high, got [3, 1]"),
    case("between-one-value", G, G.replace("[1.0, 3.0]", "[1.0, 1.0]"), "gap: {",
         "course.params.gap.between", "low must be below high"),
    case("between-infinite", G, G.replace("3.0]", ".inf]"), "gap: {",
         "course.params.gap.between[1]", "got .inf"),
    case("between-three", G, G.replace("3.0]", "3.0, 4.0]"), "gap: {",
         "course.params.gap.between", "has 3 items, more than the 2 allowed"),
    case("between-without-step", G, G.replace(", step: 0.5", ""), "gap: {",
         "course.params.gap.step", "missing: between needs a step"),
    case("between-words", G, G.replace("[1.0, 3.0]", "[a, b]"), "gap: {",
         "course.params.gap.between[0]", "expected a number, got 'a'"),
    case("default-off-the-steps", G, G.replace("0.5}", "0.5, default: 1.7}"), "gap: {",
         "course.params.gap.default", "1.7 is not one of the values (1, 1.5, 2, 2.5, 3)"),
    case("param-a-keyword", P, P.replace("keep_alive", "lambda"), "lambda",
         "course.params.lambda", "'lambda' is a Python keyword"),
    case("param-name-not-a-name", P, P.replace("keep_alive", "keep-alive"), "keep-alive",
         "course.params.keep-alive", "a param's name is letters, digits and '_'"),
    case("param-a-dollar-brace", P, P.replace("{choose: [2, 3, 4, 5]}", "'${gap}'"),
         "keep_alive: '", "course.params.keep_alive", "expected a mapping, got '${gap}'"),
    case("too-many-params", P, "\n".join(f"    p{i}: {{choose: [1, 2]}}" for i in range(21)),
         "    p0:", "course.params", "has 23 entries, more than the 20 allowed"),
    case("unknown-param-field", P, P.replace("]}", "], weights: [1, 1]}"), "keep_alive: {",
         "course.params.keep_alive.weights", "unknown field"),
]


@pytest.mark.parametrize(("text", "marker", "where", "words"), [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_a_bad_course_block_is_refused_at_its_line(text, marker, where, words):
    error = refused(text)
    assert (error.line, error.where) == (line_of(text, marker), where), str(error)
    assert words in error.message, str(error)


def test_a_lab_file_matches_the_scenario_schema_as_written():
    # editors check lab files against the schema: a ${} stands for any scalar
    validator = jsonschema.Draft202012Validator(
        json.loads(scenario_schema.SCHEMA_FILE.read_text(encoding="utf-8")))
    assert [e.message for e in validator.iter_errors(document(LAB))] == []
    bad = document(LAB.replace("{choose: [2, 3, 4, 5]}", "{choose: ['${gap}', 3]}"))
    assert not validator.is_valid(bad), "a param is never a ${}"


def test_load_reads_the_student_s_lab_from_a_file(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(LAB)
    assert load(path, "alice").params == parse(LAB, "x.yaml", "alice").params
    assert load(path).student is None


def test_kalab_check_counts_a_lab_s_questions_and_params_and_shows_a_student_s(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(LAB)
    done = run_kalab("check", str(path), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"{path}: ok: 2 engine(s) (werkzeug, gthread), 4 request(s) in 1 "
                           "session(s), 1 expectation(s), 3 question(s), params keep_alive "
                           "(4 choices), gap (5 steps), method (2 choices)\n")
    done = run_kalab("check", str(path), "--student", "alice", timeout=60)
    values = parse(LAB, "lab.yaml", "alice").params
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == (
        f"student alice: keep_alive = {values['keep_alive']}, gap = {values['gap']:g}, "
        f"method = {values['method']}")
    done = run_kalab("check", str(path), "--student", "../etc", timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"kalab: {path}: student: not a student ID (letters, digits, '.', " \
        "'_' and '-', not starting with '.', at most 64 characters): '../etc'\n"
    done = run_kalab("check", "lab.yaml", "--student", "bob", timeout=60)
    assert done.returncode == 0 and done.stdout.splitlines()[1] == "student bob: no params to draw"
