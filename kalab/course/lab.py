"""A lab: a scenario with a ``course:`` block, its parameters drawn per student.

A lab file is a scenario (`kalab.scenario`, the one reference of the
language) with one more top-level field, described here with the same specs
(`kalab.spec`) so that `kalab check` and the JSON Schema cover it:

    course:
      title: The tutorial's claims, on the wire       # one line
      teaches: |                                       # Markdown, each at most 20,000
        ...                                            #   characters: what the lab teaches,
      look_for: ...                                    #   what to look for in the report and
      read_first: ...                                  #   in Wireshark, what to read first
      params:                                          # drawn per student (at most 20)
        keep_alive: {choose: [2, 3, 4, 5]}             # one of 2..50 numbers or words
        gap: {between: [1.0, 3.0], step: 0.5}          # low, low + step, ... up to high
      questions:                                       # at most 100
        - id: connections                              # a slug, unique in the lab
          text: How many TCP connections did the client open?
          answer: {query: "werkzeug: connections.count", type: count}
          points: 1                                    # above 0, at most 100 (default 1)
          look: "report.html, the Werkzeug column"

**Params.** ``{choose: [v1, v2, ...]}``: 2 to 50 distinct values, all numbers
or all words (letters, digits, ``.``, ``_``, ``-``, at most 32 characters).
``{between: [low, high], step: s}``: finite numbers, low below high, step
above 0, 1 to 1000 steps; the values are low, low + step, ... up to high.
``default`` (one of the values) is what a scenario loaded without a student
uses; without it, the first choice or low. A param's name is letters, digits
and ``_``, not starting with a digit, and not a Python keyword. A lab with
params must have a ``name``: a student's values are drawn from the sha256 of
the lab's name, the student's ID (lower-cased) and the param's name, so the
same ID always gets the same values and renaming the file changes nothing.
A student ID is a name (`kalab.spec.NAME_PATTERN`: letters, digits, ``.``,
``_``, ``-``, not starting with ``.``, at most 64 characters).

**Substitution.** Anywhere in the document but ``course.params``, a string
may hold ``${EXPR}``: a param's name, a number, or ``+ - * /``, parentheses
and unary minus on them; nothing else (no calls, no names but the params',
no ``**``), at most 200 characters, and every number on the way within
±10^12. A string that is exactly ``${EXPR}`` becomes its value, a number
or a word (``keep_alive: ${keep_alive}``, ``sleep: ${gap + 1}``); inside a
longer string the value is written plainly (``5``, ``2.5``). ``$${`` is a
literal ``${``. Substitution happens on the loaded tree before it is
checked, so every bound of the language holds for the substituted values,
and an error names the line the ``${...}`` is on (and what was written).
At most 10,000 ``${...}`` in a document.

**Questions.** ``answer.query`` is a query over the run's report
(`kalab.course.query`), checked on load: it must parse, an engine it names
must be one of the scenario's, a request it names must be one of the
sessions', a connection number must be one the run can have. ``type`` is
one of `kalab.course.questions.ANSWER_TYPES` and must fit the value the
query names (a ``count`` needs a whole number, ``yes-no`` a true/false
field...); ``choices`` (2 to 20, distinct ignoring case) go with ``choice``
only and it needs them; ``tolerance`` goes with ``number`` only.

The model: `Course` (with `Param` and `kalab.course.questions.Question`),
on `kalab.scenario.Scenario.course`; the values used are
``Scenario.params`` and the student ``Scenario.student``. `draw` gives a
student's values from a course's params without loading the file again.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import hashlib
import keyword
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kalab.course.query import CONNECTION_EXTRA, Query, QueryError
from kalab.course.query import parse as parse_query
from kalab.course.questions import ANSWER_TYPES, DEFAULT_TOLERANCE, Question
from kalab.report import Connection, HttpRequest
from kalab.spec import (
    LINES,
    NAME_PATTERN,
    NAME_RULE,
    ONE_LINE,
    Checker,
    ListOf,
    MapOf,
    Node,
    OneOf,
    Record,
    Scalar,
    clip,
    get,
    key_where,
)

Value = int | float | str  # a param's value: a number or a word

MAX_PARAMS = 20
MAX_CHOICES = 50
MAX_STEPS = 1000
MAX_QUESTIONS = 100
MAX_ANSWER_CHOICES = 20
MAX_POINTS = 100
MAX_TEXT = 20_000  # characters of teaching text (Markdown)
MAX_MAGNITUDE = 10**12  # a param's value, and every number an expression meets on the way
MAX_EXPRESSION = 200  # characters between ${ and }
MAX_SUBSTITUTIONS = 10_000  # ${...} in a document; a lab needs a few dozen

PARAM_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,31}"
WORD_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,31}"
QUESTION_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
STUDENT_PATTERN = NAME_PATTERN  # an ID may name a student's folder (worksheets, grades)


# ------------------------------------------------------------ the field specs

NUMBER = Scalar("number", "a number", minimum=-MAX_MAGNITUDE, maximum=MAX_MAGNITUDE)
WORD = Scalar("string", "a word", pattern=WORD_PATTERN, max_length=32,
              says="a param's word is letters, digits, '.', '_' and '-', not starting with "
              "'.', at most 32 characters")
VALUE = OneOf((NUMBER, WORD), "a number or a word", "a number or a word")
PARAM = Record("a value drawn per student: one of a list (choose), or a number in a range "
               "on a step (between, with step)", {
                   "choose": ListOf(VALUE, "the values a student may get: all numbers, or all "
                                    "words", MAX_CHOICES, min_items=2),
                   "between": ListOf(NUMBER, "[low, high]: the values are low, low + step, "
                                     "... up to high", 2, min_items=2),
                   "step": Scalar("number", "the step from low (with between)",
                                  maximum=MAX_MAGNITUDE, exclusive_minimum=0),
                   "default": dataclasses.replace(VALUE, doc="the value used without a "
                                                  "student (default: the first choice, or "
                                                  "low)"),
               }, one_of=("choose", "between"))
PARAM_NAME = Scalar("string", "a param's name, as ${NAME} uses it", pattern=PARAM_NAME_PATTERN,
                    max_length=32, says="a param's name is letters, digits and '_', not "
                    "starting with a digit, at most 32 characters")
PARAMS = MapOf(PARAM_NAME, PARAM, "values drawn per student from a hash of the student's ID "
               "and the lab's name; ${NAME} elsewhere in the file is replaced by them",
               MAX_PARAMS)
ANSWER = Record("how the right answer is computed from the student's own run", {
    "query": Scalar("string", "the value of the run's report that answers it, e.g. "
                    "request[3].connection.client_port (kalab.course.query)", pattern=ONE_LINE,
                    max_length=200, says="a query is one line without control characters"),
    "type": Scalar("string", "how the answer is read and marked", choices=ANSWER_TYPES),
    "tolerance": Scalar("number", "± around the right number (type number only)",
                        DEFAULT_TOLERANCE, 0, 3600),
    "choices": ListOf(Scalar("string", "a choice", pattern=ONE_LINE, max_length=100,
                             says="a choice is one line without control characters"),
                      "the choices (type choice only), marked ignoring case",
                      MAX_ANSWER_CHOICES, min_items=2),
}, required=("query", "type"))
QUESTION = Record("a question whose answer is computed from the student's own run", {
    "id": Scalar("string", "the question's slug, unique in the lab (answers are keyed by it)",
                 pattern=QUESTION_ID_PATTERN, max_length=64, says="a question's id is letters, "
                 "digits, '_' and '-', starting with a letter or digit, at most 64 characters"),
    "text": Scalar("string", "the question, as the student reads it (Markdown)",
                   pattern=LINES, max_length=2000, says="a question's text has no control "
                   "characters but tabs and line breaks"),
    "answer": ANSWER,
    "points": Scalar("number", "points for a right answer", 1, maximum=MAX_POINTS,
                     exclusive_minimum=0),
    "look": Scalar("string", "where to look: in the report, in Wireshark", "", pattern=LINES,
                   max_length=1000, says="look has no control characters but tabs and line "
                   "breaks"),
}, required=("id", "text", "answer"))


def _teaching(doc: str) -> Scalar:
    return Scalar("string", doc, "", pattern=LINES, max_length=MAX_TEXT,
                  says="a lab's text has no control characters but tabs and line breaks")


COURSE = Record("the lab's teaching: what it teaches, what to look for and read, params "
                "drawn per student, and questions answered from the student's own run", {
                    "title": Scalar("string", "the lab's title", pattern=ONE_LINE,
                                    max_length=200, says="a title is one line without "
                                    "control characters"),
                    "teaches": _teaching("what the lab teaches (Markdown)"),
                    "look_for": _teaching("what to look for in the report and in Wireshark "
                                          "(Markdown)"),
                    "read_first": _teaching("what to read before starting: links, RFC "
                                            "sections (Markdown)"),
                    "params": PARAMS,
                    "questions": ListOf(QUESTION, "the questions, in order", MAX_QUESTIONS,
                                        min_items=0),
                }, required=("title",))


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Param:
    """A value drawn per student: ``values`` are every value a student may get."""

    name: str
    kind: str  # "choose" | "between"
    values: tuple[Value, ...]  # in order; for between: low, low + step, ...
    default: Value
    line: int = 0
    step: float | None = None  # between only; its low is values[0]
    high: float | None = None  # between only: the upper bound (a value if on a step)

    def describe(self) -> str:
        """``4 choices`` or ``5 steps``: how many values a student may get."""
        return f"{len(self.values)} {'choices' if self.kind == 'choose' else 'steps'}"

    def draw(self, lab: str, student: str | None) -> Value:
        """This param's value for ``student`` in the lab named ``lab``; the default for
        None. A student ID's case does not matter."""
        if student is None:
            return self.default
        seed = f"kalab-param\0{lab}\0{check_student(student).lower()}\0{self.name}"
        digest = hashlib.sha256(seed.encode("utf-8")).digest()
        return self.values[int.from_bytes(digest[:8], "big") % len(self.values)]


@dataclass(frozen=True)
class Course:
    """A lab's ``course:`` block."""

    title: str
    teaches: str = ""
    look_for: str = ""
    read_first: str = ""
    params: dict[str, Param] = field(default_factory=dict)
    questions: tuple[Question, ...] = ()
    line: int = 0

    def question(self, id: str) -> Question:
        for question in self.questions:
            if question.id == id:
                return question
        raise KeyError(id)


def check_student(student: str) -> str:
    """``student`` if it is a student ID (STUDENT_PATTERN), else ValueError."""
    if not isinstance(student, str) or not re.fullmatch(STUDENT_PATTERN, student):
        raise ValueError(f"not a student ID ({NAME_RULE}): {clip(repr(student))}")
    return student


def draw(params: Mapping[str, Param], lab: str, student: str | None) -> dict[str, Value]:
    """Every param's value for ``student`` (the defaults for None) in the lab named ``lab``
    (`kalab.scenario.Scenario.name`); ValueError for an ID that is not one."""
    return {name: param.draw(lab, student) for name, param in params.items()}


# ------------------------------------------------------- params, from the tree


def _plain(number: float) -> int | float:
    """A number as a lab shows it: float noise rounded off (0.1 * 3 is 0.3), and a
    whole number an int (2.0 is 2)."""
    if isinstance(number, float):
        number = float(f"{number:.12g}")
        if number.is_integer():
            return int(number)
    return number


def written(value: Value) -> str:
    """A param's value written plainly, as ${} writes it into a string: 5, 2.5, a word."""
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) \
        else str(value)


def params_node(root: Node) -> Node | None:
    """The ``course.params`` node of a document, if it is where it should be."""
    course = root.value.get("course") if isinstance(root.value, dict) else None
    if course is None or not isinstance(course.value, dict):
        return None
    return course.value.get("params")


def read_params(checker: Checker, node: Node) -> dict[str, Param]:
    """The params of a ``course.params`` node, checked."""
    checker.check(PARAMS, node, "course.params")
    params = {}
    for name, spec in node.value.items():
        params[name] = param(checker, name, spec, key_where("course.params", name))
    return params


def param(checker: Checker, name: str, node: Node, where: str) -> Param:
    """The param ``name`` of a node already checked against `PARAM`'s choose, between and
    step (a sweep's too, `kalab.sweep`): its values, checked; ``where`` names it."""
    fields = node.value
    if keyword.iskeyword(name):
        raise checker.fail(node, where, f"{name!r} is a Python keyword: ${{{name}}} could "
                           "not name it; choose another name")
    if "choose" in fields:
        if "step" in fields:
            raise checker.fail(fields["step"], f"{where}.step", "goes with between, not choose")
        values = tuple(_plain(item.value) if not isinstance(item.value, str) else item.value
                       for item in fields["choose"].value)
        if len({isinstance(value, str) for value in values}) > 1:
            raise checker.fail(fields["choose"], f"{where}.choose", "all numbers or all "
                               "words: ${} does arithmetic on numbers only")
        seen: set[Value] = set()
        for item, value in zip(fields["choose"].value, values, strict=True):
            if value in seen:
                raise checker.fail(item, f"{where}.choose", f"{written(value)} is there "
                                   "twice: each value once")
            seen.add(value)
        return _with_default(checker, Param(name, "choose", values, values[0], node.line),
                             fields, where)
    low, high = (item.value for item in fields["between"].value)
    here = f"{where}.between"
    if "step" not in fields:
        raise checker.fail(node, f"{where}.step", "missing: between needs a step")
    step = fields["step"].value
    if not low < high:
        raise checker.fail(fields["between"], here, f"low must be below high, got "
                           f"[{written(_plain(low))}, {written(_plain(high))}]")
    steps = (high - low) / step
    if steps > MAX_STEPS + 1e-9:
        raise checker.fail(fields["step"], f"{where}.step", f"makes {steps:.0f} steps from "
                           f"{written(_plain(low))} to {written(_plain(high))}, more than "
                           f"the {MAX_STEPS} allowed")
    if steps < 1 - 1e-9:
        raise checker.fail(fields["step"], f"{where}.step", "is more than high - low: a "
                           "student could get one value only")
    count = math.floor(steps + 1e-9) + 1
    values = tuple(_plain(low + k * step) for k in range(count))
    param = Param(name, "between", values, values[0], node.line, _plain(step), _plain(high))
    return _with_default(checker, param, fields, where)


def _with_default(checker: Checker, param: Param, fields: dict[str, Node],
                  where: str) -> Param:
    if "default" not in fields:
        return param
    node = fields["default"]
    default = node.value if isinstance(node.value, str) else _plain(node.value)
    if default not in param.values:
        shown = ", ".join(map(written, param.values[:10])) + \
            (", ..." if len(param.values) > 10 else "")
        raise checker.fail(node, f"{where}.default", f"{written(default)} is not one of "
                           f"the values ({shown})")
    return dataclasses.replace(param, default=default)


# ------------------------------------------------------------- substitution

# `$${` is a literal `${`; `${EXPR}` an expression; a `${` left over has no `}`.
_EXPR = rf"\$\{{([^{{}}]{{0,{MAX_EXPRESSION}}})\}}"
_TOKEN = re.compile(rf"\$\$\{{|{_EXPR}|\$\{{")
_WHOLE = re.compile(_EXPR)
_EXPRESSION_CHARACTERS = re.compile(r"[A-Za-z0-9_.+\-*/() ]*")
_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
              ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
# What a refused expression holds, in the words of the message.
_REFUSED = {ast.Call: "a call", ast.Attribute: "an attribute (.)", ast.Pow: "** (a power)",
            ast.FloorDiv: "// (floor division)", ast.Compare: "a comparison",
            ast.BoolOp: "and/or", ast.Not: "not", ast.IfExp: "if/else",
            ast.Tuple: "a tuple"}
ONLY = "only params, numbers, + - * /, parentheses and unary minus"


def substitute(checker: Checker, root: Node, values: Mapping[str, Value]) -> None:
    """Replace every ``${EXPR}`` in the tree's strings with its value, in place;
    ScenarioError at the first that is not an expression. The params themselves, read
    first, can hold none: a word has no ``$`` (`read_params` refused it)."""
    count = 0

    def walk(node: Node, where: str) -> None:
        nonlocal count
        if isinstance(node.value, dict):
            for key, value in node.value.items():
                walk(value, key_where(where, key))
        elif isinstance(node.value, list):
            for i, item in enumerate(node.value):
                walk(item, f"{where}[{i}]")
        elif isinstance(node.value, str) and "${" in node.value:
            count += node.value.count("${")
            if count > MAX_SUBSTITUTIONS:
                raise checker.fail(node, where or "yaml", f"more than {MAX_SUBSTITUTIONS} "
                                   "${...} in the document: a lab is far smaller")
            _substitute_scalar(checker, node, where or "yaml", values)

    walk(root, "")


def _substitute_scalar(checker: Checker, node: Node, where: str,
                       values: Mapping[str, Value]) -> None:
    source = node.value

    def value_of(expression: str) -> Value:
        try:
            return evaluate(expression, values)
        except ValueError as exc:
            # repr: a double-quoted YAML string may hold escaped control characters
            raise checker.fail(node, where, f"{clip(repr('${' + expression + '}'), 50)}: "
                               f"{exc}") from None

    whole = _WHOLE.fullmatch(source)
    if whole:
        value: Value = value_of(whole[1])
        node.value = value
    else:
        parts, at = [], 0
        for match in _TOKEN.finditer(source):
            parts.append(source[at:match.start()])
            if match[0] == "$${":
                parts.append("${")
            elif match[1] is None:
                raise checker.fail(node, where, f"a ${{ without its }} within "
                                   f"{MAX_EXPRESSION} characters (write $${{ for a literal "
                                   f"${{): {clip(repr(source[match.start():]), 40)}")
            else:
                parts.append(written(value_of(match[1])))
            at = match.end()
        parts.append(source[at:])
        node.value = "".join(parts)
    node.text, node.source = written(node.value), source


def evaluate(expression: str, values: Mapping[str, Value]) -> Value:
    """The value of one ``${...}``'s expression with the params' ``values``; ValueError
    saying why when it is not one (``eval`` is never used: the tree is walked)."""
    text = expression.strip()
    if not text:
        raise ValueError(f"empty: name a param or write arithmetic ({ONLY})")
    if _EXPRESSION_CHARACTERS.fullmatch(text) is None:
        character = next(c for c in text if not _EXPRESSION_CHARACTERS.fullmatch(c))
        raise ValueError(f"{character!r} is not allowed ({ONLY})")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(f"not an expression ({ONLY})") from None
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant,
                                 ast.Name, ast.Load, ast.Add, ast.Sub, ast.Mult, ast.Div,
                                 ast.USub, ast.UAdd)):
            what = next((words for kind, words in _REFUSED.items() if isinstance(node, kind)),
                        type(node).__name__)
            raise ValueError(f"{what} is not allowed ({ONLY})")
    result = _value(tree.body, values)
    return result if isinstance(result, str) else _plain(result)


def _value(node: ast.expr, values: Mapping[str, Value]) -> Value:
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):  # True, None, 'text', 1j
            raise ValueError(f"{clip(repr(node.value), 20)} is not allowed ({ONLY})")
        return _bounded(node.value)
    if isinstance(node, ast.Name):
        if node.id not in values:
            known = ", ".join(values) if values else "none: the lab has no course.params"
            raise ValueError(f"unknown name {node.id!r} (params: {known})")
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        operand = _number(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else operand
    assert isinstance(node, ast.BinOp)  # the walk in `evaluate` let nothing else through
    left, right = _number(node.left, values), _number(node.right, values)
    if isinstance(node.op, ast.Div) and right == 0:
        raise ValueError("division by zero")
    return _bounded(_OPERATORS[type(node.op)](left, right))


def _number(node: ast.expr, values: Mapping[str, Value]) -> int | float:
    value = _value(node, values)
    if isinstance(value, str):
        raise ValueError(f"{value!r} is a word: arithmetic takes numbers")
    return value


def _bounded(number: int | float) -> int | float:
    # Bounded at every step: no huge integers, no infinities, no NaN on the way.
    if not (isinstance(number, int) or math.isfinite(number)) or abs(number) > MAX_MAGNITUDE:
        raise ValueError(f"a number beyond ±{MAX_MAGNITUDE:g}")
    return number


# ---------------------------------------------------- the course, from the tree

# The kinds of value an answer type reads (see `_kind`).
_TYPE_TAKES = {"count": ("whole",), "port": ("whole",), "number": ("whole", "number"),
               "side": ("text",), "yes-no": ("yes-no",),
               "choice": ("text", "whole", "number", "yes-no")}
_KIND_WORDS = {"whole": "a whole number", "number": "a number", "text": "text",
               "yes-no": "true or false", "list": "a list"}


def build_course(checker: Checker, node: Node, params: dict[str, Param],
                 engines: tuple[str, ...], refs: tuple[str, ...],
                 most_connections: int) -> Course:
    """The `Course` of a checked ``course:`` node; what the specs cannot say is checked
    here: questions against the scenario's ``engines``, request ``refs`` and the most
    connections its requests (with retries) can open."""
    fields = node.value
    questions: list[Question] = []
    seen: dict[str, int] = {}
    items = fields["questions"].value if "questions" in fields else []
    for i, item in enumerate(items):
        where = f"course.questions[{i}]"
        question = _question(checker, item, where, engines, refs, most_connections)
        if seen.setdefault(question.id.casefold(), i) != i:
            raise checker.fail(item.value["id"], f"{where}.id", f"{question.id!r} is the id "
                               f"of course.questions[{seen[question.id.casefold()]}] too: "
                               "each question has its own")
        questions.append(question)
    return Course(title=fields["title"].value, teaches=get(COURSE, fields, "teaches"),
                  look_for=get(COURSE, fields, "look_for"),
                  read_first=get(COURSE, fields, "read_first"), params=params,
                  questions=tuple(questions), line=node.line)


def _question(checker: Checker, node: Node, where: str, engines: tuple[str, ...],
              refs: tuple[str, ...], most_connections: int) -> Question:
    fields = node.value
    answer = fields["answer"].value
    here = f"{where}.answer"
    kind = answer["type"].value
    query = _query(checker, answer["query"], f"{here}.query", engines, refs,
                   most_connections)
    if kind == "choice" and "choices" not in answer:
        raise checker.fail(fields["answer"], f"{here}.choices", "missing: a choice "
                           "question lists its choices")
    if kind != "choice" and "choices" in answer:
        raise checker.fail(answer["choices"], f"{here}.choices", f"go with type choice, "
                           f"not {kind}")
    if kind != "number" and "tolerance" in answer:
        raise checker.fail(answer["tolerance"], f"{here}.tolerance", f"goes with type "
                           f"number, not {kind} (a {kind} is right exactly)")
    choices = tuple(item.value for item in answer["choices"].value) \
        if "choices" in answer else ()
    folded = [choice.strip().casefold() for choice in choices]
    for j, choice in enumerate(folded):
        if choice in folded[:j]:
            raise checker.fail(answer["choices"].value[j], f"{here}.choices[{j}]",
                               f"{clip(repr(choices[j]))} is there twice (choices are "
                               "marked ignoring case and spaces)")
    value_kind = _kind(query)
    if value_kind not in _TYPE_TAKES[kind]:
        raise checker.fail(answer["type"], f"{here}.type", f"{query.path[-1]} is "
                           f"{_KIND_WORDS[value_kind]}, and a {kind} answer reads "
                           + " or ".join(_KIND_WORDS[k] for k in _TYPE_TAKES[kind]))
    return Question(id=fields["id"].value, text=fields["text"].value, query=query,
                    type=kind, points=_plain(get(QUESTION, fields, "points")),
                    tolerance=get(ANSWER, answer, "tolerance"), choices=choices,
                    look=get(QUESTION, fields, "look"), line=node.line)


def _query(checker: Checker, node: Node, where: str, engines: tuple[str, ...],
           refs: tuple[str, ...], most_connections: int) -> Query:
    try:
        query = parse_query(node.value)
    except QueryError as exc:
        raise checker.fail(node, where, str(exc)) from None
    if query.engine is not None and query.engine not in engines:
        raise checker.fail(node, where, f"no engine {query.engine!r} in the scenario "
                           f"(engines: {', '.join(engines)})")
    if query.subject == "request" and query.key not in refs:
        known = ", ".join(refs[:20]) + (", ..." if len(refs) > 20 else "")
        raise checker.fail(node, where, f"no request {clip(repr(query.key))} in the "
                           f"sessions (known: {known})")
    if query.subject == "connection" and not 1 <= int(query.key) <= most_connections:
        raise checker.fail(node, where, f"connection[{query.key}]: the run can have "
                           f"connections 1 to {most_connections} (one per request and retry "
                           "at most)")
    return query


def _kind(query: Query) -> str:
    """What the query's value is: a whole number, a number, text, true or false, or a
    list (which no answer type reads), from the report's own field types."""
    if query.subject in ("connections", "requests"):
        return "whole"
    record: type = HttpRequest if query.subject == "request" else Connection
    path = query.path
    if record is HttpRequest and path[0] == "connection":
        if len(path) == 1:
            return "whole"  # the connection's number
        record, path = Connection, path[1:]
    if path[0] in CONNECTION_EXTRA:
        return "whole"
    hint = typing.get_type_hints(record)[path[0]]
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        return "text"  # a named value (`closed_by`'s side): its plain string
    return {bool: "yes-no", int: "whole", float: "number", str: "text"}.get(hint, "list")


COURSE_DIR = Path(__file__).resolve().parents[2] / "course"  # the project's own course
LAB_FILE = "lab.yaml"


def locate(lab: str | Path) -> Path:
    """A lab file from what a user typed: its path, its folder, or a lab's name in the
    project's course (``05-idle-gap``); FileNotFoundError says where it looked."""
    path = Path(lab)
    if path.is_dir():
        path = path / LAB_FILE
    if path.is_file():
        return path
    named = course_lab(str(lab))
    if named is not None:
        return named
    raise FileNotFoundError(f"{lab}: no such lab file, lab folder or lab in {COURSE_DIR}")


def course_lab(name: str) -> Path | None:
    """The file of the project's course lab called ``name`` (``05-idle-gap``); None when
    there is none (a name is never a path: ``..`` or ``a/b`` names no lab)."""
    named = COURSE_DIR / name / LAB_FILE
    return named if re.fullmatch(NAME_PATTERN, name) and named.is_file() else None


def reference_run(lab_file: Path) -> Path:
    """Where a lab's reference run lives: ``reference/`` beside its file."""
    return lab_file.parent / "reference"
