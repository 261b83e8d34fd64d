"""Hostile scenario files: each one loads or is refused cleanly, never a traceback.

Scenarios come from strangers and the lab runs as root. Whatever the file
holds, `load` returns a Scenario or raises ScenarioError whose message is one
line starting ``FILE:LINE: ``, and `kalab check` turns that into exit 2 and
that one line on stderr. The shapes below were found by fuzzing; each test
tallies what it tried for docs/reliability.md (tests/reliability.py).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import KALAB, ROOT, run_kalab
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import tally

from kalab import scenario_schema
from kalab.course import lab as lab_mod
from kalab.course.questions import ANSWER_TYPES
from kalab.scenario import (
    NAME_PATTERN,
    SCENARIO,
    ListOf,
    MapOf,
    Record,
    Scalar,
    ScenarioError,
    document,
    load,
    parse,
)

pytestmark = pytest.mark.reliability
AREA = "Scenario files"
# A document that loads: the hostile shapes below are put into it.
VALID = "sessions: [{steps: [get: /]}]\nengines: [{engine: werkzeug}]\n"


def refusal(path: Path) -> ScenarioError | str:
    """The ScenarioError that loading ``path`` raised, or what went wrong instead."""
    try:
        load(path)
    except ScenarioError as error:
        text = str(error)
        if "\n" in text or not re.match(rf"{re.escape(str(path))}:\d+: ", text):
            return f"not one line starting FILE:LINE: {text!r}"
        return error
    except Exception as exc:  # any other exception is what these tests look for
        return f"{type(exc).__name__}: {exc}"
    return "loaded"


def check_corpus(tmp_path: Path, tried: str, corpus: list[tuple[str, bytes, int, str]]) -> None:
    """Every case is refused on its line with its words; tallied as one kind of input."""
    wrong = []
    for name, data, line, words in corpus:
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(data)
        error = refusal(path)
        if isinstance(error, str):
            wrong.append(f"{name}: {error}")
        elif error.line != line or words not in error.message or "_Node" in error.message:
            wrong.append(f"{name}: expected line {line} and {words!r}, got {error}")
    tally(AREA, tried, len(corpus), len(corpus) - len(wrong))
    assert wrong == []


def nest(depth: int) -> bytes:
    return VALID.encode() + b"description: " + b"[" * depth + b"]" * depth + b"\n"


BILLION_LAUGHS = VALID + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)).replace(
    "l1: &l1 [*l0", "l1: &l1 [lol").replace(", *l0", ", lol")

YAML_SHAPES = [
    ("invalid-utf8", VALID.encode() + b"description: caf\xe9\n", 3, "not UTF-8: byte 0xE9"),
    ("utf8-cut-short", b"name: \xe2\x82\n" + VALID.encode(), 1, "not UTF-8"),
    ("binary-tag", VALID.encode() + b"description: !!binary aGk=\n", 3, "tag !!binary"),
    ("set-tag", VALID.encode() + b"description: !!set {a, b}\n", 3, "tag !!set"),
    ("omap-tag", VALID.encode() + b"description: !!omap [a: 1]\n", 3, "tag !!omap"),
    ("timestamp-tag", VALID.encode() + b"description: !!timestamp 2001-12-14\n", 3,
     "tag !!timestamp"),
    ("python-tag", VALID.encode() + b"description: !!python/object/apply:os.system [id]\n",
     3, "tag !!python/object/apply:os.system"),
    ("python-name-tag", b"engines: !!python/name:os.system\n", 1, "tag !!python/name"),
    ("local-tag", VALID.encode() + b"description: !mine x\n", 3, "tag !mine"),
    ("int-tag-on-words", b"port: !!int five\n" + VALID.encode(), 1, "'five' is not a valid !!int"),
    ("int-tag-on-nothing", b'port: !!int ""\n' + VALID.encode(), 1, "'' is not a valid !!int"),
    ("float-tag-on-nothing", VALID.encode() + b'description: !!float ""\n', 3,
     "'' is not a valid !!float"),
    ("anchor", b"sessions: &s [{steps: [get: /]}]\nengines: [{engine: werkzeug}]\n", 1,
     "anchors and aliases are not supported"),
    ("billion-laughs", BILLION_LAUGHS.encode(), 3, "anchors and aliases are not supported"),
    ("nested-1000", nest(1000), 3, "maximum nesting depth"),
    ("nested-100000", nest(100_000), 3, "maximum nesting depth"),
    ("nested-33-mappings", VALID.encode() + b"description:" + b"".join(
        b"\n" + b"  " * (i + 1) + b"k:" for i in range(40)) + b" 1\n", 35,
     "exceeded the maximum nesting depth (32 levels)"),
    ("duplicate-key", b"port: 5000\n" + VALID.encode() + b"port: 5001\n", 4,
     "duplicate key (also on line 1)"),
    ("duplicate-nested-key", b"sessions: [{steps: [get: /]}]\nengines:\n"
     b"  - engine: werkzeug\n    engine: gunicorn\n", 4, "duplicate key (also on line 3)"),
    ("control-character", VALID.encode() + b"description: bell\x07\n", 3,
     "control character U+0007 in column 18"),
    ("nul", VALID.encode() + b"\x00\n", 3, "control character U+0000"),
    ("escape-sequence", b"name: \x1b[2Jx\n" + VALID.encode(), 1, "control character U+001B"),
    ("two-documents", VALID.encode() + b"---\n" + VALID.encode(), 3, "a second document"),
    ("complex-key", VALID.encode() + b"? [a, b]\n: c\n", 3, "a key must be a plain word"),
    ("too-many-values", b"description: [" + b"0, " * 200_000 + b"]\n" + VALID.encode(), 1,
     "more than 100000 values"),
    ("unclosed-flow", b"engines: [{engine: werkzeug}\nsessions: []\n", 2, ""),
    ("bad-indent", VALID.encode() + b"  - nope\n x: 1\n", 3, ""),
]


def test_yaml_that_is_not_a_plain_document_is_refused_on_its_line(tmp_path):
    check_corpus(tmp_path, "YAML beyond plain data: tags, anchors and aliases, deep nesting, "
                 "duplicate keys, control characters, invalid UTF-8", YAML_SHAPES)


def test_yaml_syntax_errors_name_the_file_not_the_parser_s_stream(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_bytes(VALID.encode() + b"description: bell\x07\n")
    error = refusal(path)
    assert isinstance(error, ScenarioError), error
    assert "<unicode string>" not in str(error) and "position" not in str(error)


def test_a_file_past_one_mib_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as out:
        out.write(VALID.encode())
        out.write(b"# " + b"x" * 78 + b"\n")
        out.truncate(2 << 20)  # sparse: 2 MiB of NULs after a valid start
    error = refusal(path)
    assert isinstance(error, ScenarioError), error
    assert "goes on past 1048576 bytes" in error.message and error.line == 4
    tally(AREA, "a 2 MiB file", 1, 1)


def kalab_check(target: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([*KALAB, "check", target], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_files_that_are_not_regular_files_are_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    targets = {"/dev/zero": "a character device", "/dev/urandom": "a character device",
               str(fifo): "a FIFO", str(tmp_path): "a folder"}
    wrong = []
    for target, kind in targets.items():
        try:
            done = kalab_check(target)
        except subprocess.TimeoutExpired:
            wrong.append(f"{target}: still reading after 20 s")
            continue
        lines = done.stderr.splitlines()
        if done.returncode != 2 or lines != [f"kalab: {target}: cannot read: {kind}, "
                                             "not a regular file"]:
            wrong.append(f"{target}: exit {done.returncode}, stderr {done.stderr!r}")
    tally(AREA, "/dev/zero, /dev/urandom, a FIFO and a folder as the scenario", len(targets),
          len(targets) - len(wrong))
    assert wrong == []



def scenario(step: str = "sleep: 1", engine: str = "{engine: werkzeug}", more: str = "",
             session: str = "") -> bytes:
    """A valid scenario with one step, one engine, session fields and top-level lines
    put in: the hostile part goes in one of them."""
    return (f"sessions:\n  - steps:\n      - get: /\n      - {step}\n{session}"
            f"engines:\n  - {engine}\n{more}").encode()


def line_of(data: bytes, marker: str) -> int:
    return data[:data.index(marker.encode())].count(b"\n") + 1


def case(name: str, data: bytes, marker: str, words: str) -> tuple[str, bytes, int, str]:
    """A corpus case refused on the line where ``marker`` first is."""
    return name, data, line_of(data, marker), words


def many(template: str, count: int) -> str:
    return ", ".join(template.format(i=i) for i in range(count))


VALUES = [
    case("sleep-inf", scenario("sleep: .inf"), ".inf", "finite number from 0 to 3600, got .inf"),
    case("sleep-minus-inf", scenario("sleep: -.Inf"), ".Inf", "got -.Inf"),
    case("at-nan", scenario("at: .nan"), ".nan", "must be a finite number from 0 to 3600, got "
         ".nan"),
    case("sleep-1e9", scenario("sleep: 1e9"), "1e9", "must be <= 3600, got 1e9"),
    case("sleep-a-billion", scenario("sleep: 1_000_000_000"), "1_0", "must be <= 3600, got "
         "1_000_000_000"),
    case("sleep-huge-int", scenario("sleep: " + "9" * 4000), "9999", "must be <= 3600"),
    case("int-past-python-s-digit-limit", scenario("sleep: " + "9" * 5000), "9999",
         "is not a valid !!int"),
    case("at-past-an-hour", scenario("at: 3601"), "3601", "must be <= 3600, got 3601"),
    case("planned-time", scenario("sleep: 3000\n      - sleep: 0x3E8"), "0x3E8",
         "the session's planned time reaches 4000 s here, more than 3600 s"),
    case("at-back-in-time", scenario("at: 5\n      - at: 4.5"), "4.5",
         "goes back in time (4.5 < 5)"),
    case("delay-nan", scenario(more="link:\n  client_to_server: {delay_ms: .nan}\n"), ".nan",
         "got .nan"),
    case("jitter-negative", scenario(more="link:\n  server_to_client: {jitter_ms: -1}\n"),
         "-1", "must be >= 0, got -1"),
    case("loss-inf", scenario(more="link:\n  server_to_client: {loss_percent: .inf}\n"),
         ".inf", "got .inf"),
    case("rate-with-a-command", scenario(more="link:\n  server_to_client: {rate: '1mbit; "
                                         "reboot'}\n"), "rate", "a rate is a tc rate"),
    case("keep-alive-nan", scenario(engine="{engine: gunicorn, keep_alive: .nan}"), ".nan",
         "must be a finite number from 0 to 3600, got .nan"),
    case("threads-zero", scenario(engine="{engine: waitress, threads: 0}"), "threads",
         "must be >= 1, got 0"),
    case("channel-timeout-float", scenario(engine="{engine: waitress, channel_timeout: 2.5}"),
         "2.5", "expected a whole number, got 2.5"),
    case("port-inf", scenario(more="port: 1e400\n"), "1e400", "expected a whole number, got "
         "1e400"),
    case("port-zero", scenario(more="port: 0\n"), "port", "must be >= 1, got 0"),
    case("retries-many", scenario(session="    retries: 1000\n"), "1000", "must be <= 10"),
    case("tolerance-nan", scenario(engine="{engine: werkzeug, expect: [close: {request: 1, "
                                   "idle: 1, tolerance: .NaN}]}"), "{engine", "got .NaN"),
    case("within-huge", scenario(engine="{engine: werkzeug, expect: [close: {request: 1, "
                                 "within: 1e300}]}"), "{engine", "must be <= 3600, got 1e300"),
    case("connections-nan", scenario(engine="{engine: werkzeug, expect: [connections: .nan]}"),
         "{engine", "expected a whole number, got .nan"),
    case("status-600", scenario(engine="{engine: werkzeug, expect: [status: 600]}"), "{engine",
         "must be <= 599, got 600"),
    case("a-list-where-a-number-goes", scenario("sleep: [1, 2]"), "[1", "expected a number, "
         "got a list"),
    case("a-mapping-where-a-string-goes", scenario(engine="{engine: {kind: werkzeug}}"),
         "{engine", "expected a string, got a mapping"),
    case("a-list-where-true-goes", scenario(engine="{engine: werkzeug, threaded: [true]}"),
         "{engine", "expected true or false, got a list"),
    case("null-where-a-path-goes", scenario("get: ~"), "~", "expected a string, got ~"),
    case("a-number-where-steps-go", scenario(session="    name: 5\n"), "name: 5",
         "expected a string, got 5"),
    case("close-false", scenario("close: false"), "close", "write `- close` or `close: true`, "
         "got false"),
]
TEXT = [
    case("crlf-in-path", scenario('get: "/a\\r\\nX-Injected: 1"'), "get: \"", "a path starts "
         "with '/' and has only visible ASCII"),
    case("space-in-path", scenario('get: "/a b"'), "get: \"", "got '/a b'"),
    case("nul-in-path", scenario('request: {path: "/a\\0"}'), "request", "got '/a\\x00'"),
    case("path-without-slash", scenario("get: keep-alive"), "keep-alive", "a path starts with "
         "'/'"),
    case("path-too-long", scenario("get: /" + "a" * 5000), "get: /a", "has 5001 characters, "
         "more than the 2048 allowed"),
    case("crlf-in-header-name", scenario('request: {headers: {"X\\r\\nY": 1}}'), "request",
         "a header's name is a token"),
    case("space-in-header-name", scenario('request: {headers: {"X Y": 1}}'), "request",
         "a header's name is a token"),
    case("lf-in-header-value", scenario('request: {headers: {X: "a\\nb"}}'), "request",
         "a header's value has no CR, LF, NUL"),
    case("nul-in-header-value", scenario('request: {headers: {X: "a\\0"}}'), "request",
         "a header's value has no CR, LF, NUL"),
    case("header-value-beyond-latin-1", scenario('request: {headers: {X: "\\u20ac"}}'),
         "request", "only Latin-1 characters"),
    case("too-many-headers", scenario("request: {headers: {" + many("H{i}: v", 33) + "}}"),
         "request", "has 33 entries, more than the 32 allowed"),
    case("body-too-long", scenario("request: {body: " + "x" * 70_000 + "}"), "request",
         "has 70000 characters, more than the 65536 allowed"),
    case("escape-in-claim", scenario(engine='{engine: werkzeug, expect: [{claim: "\\e[2J", '
                                     'connections: 1}]}'), "{engine", "a claim is one line"),
    case("newline-in-claim", scenario(engine='{engine: werkzeug, expect: [{claim: "a\\nb", '
                                      'connections: 1}]}'), "{engine", "a claim is one line"),
    case("escape-in-description", scenario(more='description: "\\e]0;pwned\\a"\n'),
         "description", "a description has no control characters"),
    case("unknown-method", scenario("request: {method: Post}"), "request", "unknown value "
         "'Post'"),
]
NAMES = [
    case("engine-name-absolute", scenario(engine="{engine: werkzeug, name: /some/dir}"),
         "{engine", "a name is letters, digits, '.', '_' and '-', not starting with '.'"),
    case("engine-name-dotdot", scenario(engine="{engine: werkzeug, name: ..}"), "{engine",
         "got '..'"),
    case("engine-name-dot", scenario(engine="{engine: werkzeug, name: .}"), "{engine",
         "got '.'"),
    case("engine-name-empty", scenario(engine="{engine: werkzeug, name: ''}"), "{engine",
         "got ''"),
    case("engine-name-hidden", scenario(engine="{engine: werkzeug, name: .git}"), "{engine",
         "got '.git'"),
    case("engine-name-slash", scenario(engine="{engine: werkzeug, name: a/../../b}"), "{engine",
         "a name is"),
    case("engine-name-long", scenario(engine="{engine: werkzeug, name: " + "a" * 65 + "}"),
         "{engine", "has 65 characters, more than the 64 allowed"),
    case("engine-names-differing-in-case", scenario(
        engine="{engine: werkzeug, name: One}\n  - {engine: gunicorn, name: one}"),
        "gunicorn", "duplicate engine name 'one'"),
    case("scenario-name-with-slash", scenario(more="name: ../../etc\n"), "name: ..",
         "a name is"),
    case("scenario-name-absolute", scenario(more="name: /tmp/x\n"), "name: /", "a name is"),
    case("session-name-with-dot", scenario(session="    name: a.b\n"), "a.b",
         "a session's name is letters, digits, '_' and '-' (no '.')"),
]
COUNTS = [
    case("101-sessions", b"sessions: [" + many("{{steps: [get: /]}}", 101).encode()
         + b"]\nengines: [{engine: werkzeug}]\n", "sessions", "has 101 items, more than the "
         "100 allowed"),
    case("17-engines", scenario(engine=many("{{engine: werkzeug, name: e{i}}}", 17).replace(
        ", {", "\n  - {")), "{engine", "has 17 items, more than the 16 allowed"),
    case("2001-steps", b"sessions: [{steps: [" + many("get: /", 2001).encode()
         + b"]}]\nengines: [{engine: werkzeug}]\n", "steps", "has 2001 items, more than the "
         "2000 allowed"),
    case("101-expectations", scenario(engine="{engine: werkzeug, expect: ["
                                      + many("connections: 1", 101) + "]}"), "expect",
         "has 101 items, more than the 100 allowed"),
]


def test_values_out_of_bounds_are_refused_as_written(tmp_path):
    check_corpus(tmp_path, "numbers out of bounds (NaN, infinities, 1e9 s, huge integers) "
                 "and values of the wrong type", VALUES)


def test_paths_headers_and_text_with_control_characters_are_refused(tmp_path):
    check_corpus(tmp_path, "CR, LF, NUL and escapes in paths, headers, claims and "
                 "descriptions; oversized paths, headers and bodies", TEXT)


def test_names_that_are_not_safe_folder_names_are_refused(tmp_path):
    check_corpus(tmp_path, "scenario, engine and session names that are paths or not unique",
                 NAMES)


def test_more_sessions_engines_steps_or_expectations_than_a_lab_needs_are_refused(tmp_path):
    check_corpus(tmp_path, "more sessions, engines, steps or expectations than allowed", COUNTS)


def test_a_one_mib_document_is_checked_in_a_few_seconds(tmp_path):
    step = "      - get: /keep-alive\n      - sleep: 0\n"
    body = "sessions:\n  - steps:\n" + step * ((1 << 20) // len(step) - 2)
    path = tmp_path / "mib.yaml"
    path.write_text(body + "engines: [{engine: werkzeug}]\n")
    assert 1_000_000 < path.stat().st_size <= 1 << 20
    done = kalab_check(str(path), timeout=10)  # it took 20 s and 505 MB for 3.4 MB
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"kalab: {path}:")


def test_an_app_is_a_project_app_or_a_file_inside_the_scenario_s_folder(tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("app = None\n")
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "folder.py").mkdir()
    (folder / "notes.txt").write_text("app = None\n")
    (folder / "escape.py").symlink_to(outside)
    engine = "{engine: werkzeug, app: %s}"
    corpus = [
        ("os-system", engine % "'os:system'", "an app is one of the project's"),
        ("builtins-eval", engine % "'builtins:eval'", "an app is one of the project's"),
        ("project-module-other-attribute", engine % "'server.app:keep_alive'",
         "an app is one of the project's"),
        ("file-above", engine % "{file: ../outside.py}", "an app file is a relative path"),
        ("file-above-by-a-detour", engine % "{file: ok/../../outside.py}",
         "must be inside the scenario's folder"),
        ("file-absolute", engine % "{file: /etc/passwd.py}", "an app file is a relative path"),
        ("file-symlink-out", engine % "{file: escape.py}", "must be inside the scenario's folder"),
        ("file-missing", engine % "{file: absent.py}", "no such file"),
        ("file-a-folder", engine % "{file: folder.py}", "not a regular file"),
        ("file-not-python", engine % "{file: notes.txt}", "an app file is a relative path"),
        ("attribute-not-a-name", engine % "{file: ok.py, attribute: 'os.system'}",
         "an attribute is a Python name"),
        ("file-and-module", engine % "{file: ok.py, module: os}", "unknown field"),
    ]
    (folder / "ok.py").write_text("app = None\n")
    check_corpus(folder, "app: modules that are not the project's apps, files outside the "
                 "scenario's folder", [
                     case(name, scenario(engine=text), "{engine", words)
                     for name, text, words in corpus])


def test_compose_refuses_an_app_file_the_containers_cannot_see(tmp_path):
    (tmp_path / "mine.py").write_text("app = None\n")
    path = tmp_path / "lab.yaml"
    path.write_bytes(scenario(more="app: {file: mine.py}\n"))
    assert kalab_check(str(path)).returncode == 0
    done = subprocess.run([*KALAB, "run", str(path), "--runtime", "compose", "--results",
                           str(tmp_path / "results")], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "needs --runtime netns" in done.stderr
    assert not (tmp_path / "results").exists()


def lab(sleep: str = "${n}", text: str = "How many connections?",
        query: str = "connections.count", choose: str = "[1, 2, 3]", more: str = "",
        name: str = "fuzz-lab") -> bytes:
    """A lab that loads, with the hostile part put in a sleep, a question, a param or at
    the top."""
    return (f"name: {name}\ncourse:\n  title: a lab\n  params:\n    n: {{choose: {choose}}}\n"
            f"    w: {{choose: [get, head]}}\n  questions:\n    - id: q1\n      text: {text}\n"
            f"      answer: {{query: {json.dumps(query)}, type: count}}\nsessions:\n"
            f"  - steps:\n      - get: /\n      - sleep: {sleep}\n"
            f"engines:\n  - engine: werkzeug\n{more}").encode()


ONLY = "(only params, numbers, + - * /, parentheses and unary minus)"
EXPRESSIONS = [
    case("call", lab("${exec(n)}"), "exec", f"a call is not allowed {ONLY}"),
    case("import", lab("${__import__}"), "import", "unknown name '__import__' (params: n, w)"),
    case("import-call", lab("\"${__import__('os').system('id')}\""), "import", "\"'\" is not "
         "allowed"),
    case("builtins", lab("${__builtins__}"), "builtins", "unknown name '__builtins__'"),
    case("dunder-attribute", lab("${n.__class__}"), "class", "an attribute (.) is not allowed"),
    case("power-bomb", lab("${9**9**9**9}"), "9**", "** (a power) is not allowed"),
    case("product-bomb", lab("${" + " * ".join(["999999"] * 20) + "}"), "999999",
         "a number beyond ±1e+12"),
    case("long-integer", lab("${" + "9" * 190 + "}"), "999", "a number beyond ±1e+12"),
    case("infinity", lab("${1e999}"), "1e999", "a number beyond ±1e+12"),
    case("nan-by-arithmetic", lab("${1e308 * 10 - 1e308 * 10}"), "1e308",
         "a number beyond ±1e+12"),
    case("division-by-zero", lab("${n / (n - n)}"), "n / (", "division by zero"),
    case("unknown-name", lab("${os}"), "${os}", "unknown name 'os'"),
    case("escaped-nul", lab('"${\\0}"'), "sleep: \"", "'\\x00' is not allowed"),
    case("escaped-terminal-escape", lab('"${\\e]0;pwned\\a}"'), "sleep: \"",
         "'\\x1b' is not allowed"),
    case("nested", lab("${${n}}"), "${${", "a ${ without its } within 200 characters"),
    case("unclosed", lab("${n"), "sleep: ${n", "a ${ without its }"),
    case("too-long", lab("${" + "n + " * 60 + "n}"), "n + n", "a ${ without its }"),
    case("ten-thousand", lab(text="'" + "${n}" * 10_001 + "'"), "${n}${n}",
         "more than 10000 ${...} in the document"),
    case("a-word-for-a-number", lab("${w}"), "${w}", "expected a number, got 'get' "
         "(from '${w}')"),
    case("substituted-out-of-bounds", lab("${n * 4000}"), "4000", "must be <= 3600, got 4000 "
         "(from '${n * 4000}')"),
    case("in-the-lab-s-name", lab(name="lab-${n}"), "name", "a name is letters"),
    case("in-a-param", lab(choose="['${w}', b]"), "{choose", "a param's word is letters"),
    case("in-a-key", lab(more="'${n}': 1\n"), "'${n}'", "unknown field"),
    case("query-injection", lab(query="request[${n}].status; import os"), "query",
         "not a query"),
    case("query-engine-from-a-param", lab(query="${w}: connections.count"), "query",
         "no engine 'get' in the scenario"),
    case("question-text-with-an-escape", lab(text='"\\e]0;pwned\\a ${n}"'), "text:",
         "a question's text has no control characters"),
    case("param-a-keyword", lab(choose="[1, 2]}\n    None: {choose: [1, 2]"), "None",
         "'None' is a Python keyword"),
    case("choices-past-fifty", lab(choose=str(list(range(51)))), "{choose",
         "has 51 items, more than the 50 allowed"),
    case("steps-past-a-thousand", lab(choose="[1, 2]}\n    g: {between: [0, 1e6], step: 1"),
         "between", "makes 1000000 steps from 0 to 1000000, more than the 1000 allowed"),
]


def test_dollar_braces_that_are_not_arithmetic_on_params_are_refused(tmp_path):
    check_corpus(tmp_path, "${} expressions beyond arithmetic on params (calls, attributes, "
                 "__import__, powers, huge numbers, division by zero, escapes) and course "
                 "blocks out of bounds", EXPRESSIONS)


# ------------------------------------------------------------------ fuzzing
#
# Two kinds of generated input, each bounded to run in seconds: scenarios
# built from the language's own specs, with up to two values just out of
# their bounds and up to two anything at all (NaN, huge numbers, control
# characters, lists where scalars go), dumped as YAML; and the bundled
# scenarios' bytes, mutated. Every one must load or be refused cleanly, and
# whatever loads the JSON Schema must accept: the checker is never more
# lenient than the schema editors use.

HOSTILE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e9, 10**40, -1, 0, 3601]),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=12),  # any code point: controls, surrogates, CR, LF, NUL
    st.sampled_from(["", ".", "..", "/", "/etc/passwd", "a/b", "a\r\nb", "\x00", "\x1b[2J",
                     "close", "each", "1", "s1.1", "os:system", "server.app:app", "POST",
                     "Post", "gthread", "nginx", "1.0", "2001-12-14", "x" * 300]),
    st.booleans(), st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)


def _valid_scalar(spec: Scalar) -> st.SearchStrategy:
    if spec.choices:
        return st.sampled_from(spec.choices)
    if spec.type == "boolean":
        return st.booleans()
    low = spec.minimum if spec.minimum is not None else 0
    if spec.exclusive_minimum is not None:
        low = math.floor(spec.exclusive_minimum) + 1
    high = min(spec.maximum if spec.maximum is not None else 1000, 10_000)
    # small numbers often, so that request refs name requests that exist
    integers = st.integers(int(low), int(min(high, low + 2))) | st.integers(int(low), int(high))
    if spec.type == "integer":
        return integers
    if spec.type == "number":
        return integers | st.floats(spec.exclusive_minimum if spec.exclusive_minimum is not None
                                    else low, high,
                                    exclude_min=spec.exclusive_minimum is not None)
    if spec.pattern is None:
        return st.text(max_size=20)
    longest = min(40, spec.max_length or 40)
    return st.from_regex(spec.pattern, fullmatch=True).filter(lambda text: len(text) <= longest)


def edges(spec: Scalar) -> list:
    """Values just outside what the spec allows, or of no use to it."""
    edges: list = [None, [], {}]
    if spec.type != "text":  # a header value takes .nan as the text it is
        edges += [float("nan"), float("inf")]
    if spec.minimum is not None:
        edges += [spec.minimum - 1, spec.minimum - 0.5]
    if spec.exclusive_minimum is not None:
        edges += [spec.exclusive_minimum, spec.exclusive_minimum - 1]
    if spec.maximum is not None:
        edges += [spec.maximum + 1, spec.maximum + 0.5, spec.maximum * 1e6]
    if spec.max_length is not None:
        edges.append("a" * (spec.max_length + 1))
    edges += [str(choice).upper() + "x" for choice in spec.choices]
    return edges


def _kind_options(record: Record) -> st.SearchStrategy:
    def with_options(kind: str) -> st.SearchStrategy:
        required = {key: tree(record.fields[key]) for key in record.required
                    if key != record.switch}
        return st.fixed_dictionaries({record.switch: st.just(kind), **required}, optional={
            **{key: tree(spec) for key, spec in record.fields.items()
               if key != record.switch and key not in required},
            **{key: tree(spec) for key, spec in record.kinds[kind].items()}})
    return st.sampled_from(list(record.kinds)).flatmap(with_options)


def tree(spec) -> st.SearchStrategy:
    """Scenario-shaped data that a spec allows (what only the checker refuses, such as
    refs to no request, aside)."""
    if isinstance(spec, Scalar):
        return _valid_scalar(spec)
    if isinstance(spec, Record) and spec.switch:
        return _kind_options(spec)
    if isinstance(spec, Record):
        required = {key: tree(spec.fields[key]) for key in spec.required}
        optional = {key: tree(field) for key, field in spec.fields.items()
                    if key not in spec.required and key not in spec.one_of}
        if not spec.one_of:
            return st.fixed_dictionaries(required, optional=optional)
        return st.sampled_from(spec.one_of).flatmap(lambda key: st.fixed_dictionaries(
            {**required, key: tree(spec.fields[key])}, optional=optional))
    if isinstance(spec, ListOf):
        return st.lists(tree(spec.item), min_size=spec.min_items, max_size=2)
    if isinstance(spec, MapOf):
        return st.dictionaries(_valid_scalar(spec.key), tree(spec.value), max_size=2)
    return st.one_of([tree(option) for option in spec.options])


def _places(data, here=()) -> list[tuple]:
    """Every place in ``data``: key and index paths to each value."""
    places = [here]
    items = data.items() if isinstance(data, dict) else \
        enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        places += _places(value, (*here, key))
    return places


def _takes(spec, value) -> bool:
    if isinstance(spec, (Record, MapOf)):
        return isinstance(value, dict)
    if isinstance(spec, ListOf):
        return isinstance(value, list)
    if isinstance(spec, Scalar):
        return not isinstance(value, (dict, list)) and (
            isinstance(value, str) == (spec.type in ("string", "text")))
    return any(_takes(option, value) for option in spec.options)


def _leaves(spec, data, here=()) -> list[tuple[tuple, Scalar]]:
    """The place of each scalar in ``data`` (made from ``spec``), with its spec."""
    if isinstance(spec, Scalar):
        return [(here, spec)]
    if isinstance(spec, ListOf):
        return [leaf for i, item in enumerate(data) for leaf in
                _leaves(spec.item, item, (*here, i))]
    if isinstance(spec, MapOf):
        return [leaf for key, value in data.items() for leaf in
                _leaves(spec.value, value, (*here, key))]
    if isinstance(spec, Record):
        fields = {**spec.fields, **spec.kinds.get(data.get(spec.switch, spec.switch_default),
                                                  {})}
        return [leaf for key, value in data.items() for leaf in
                _leaves(fields[key], value, (*here, key))]
    option = next(option for option in spec.options if _takes(option, data))
    return _leaves(option, data, here)


def _put(data, place: tuple, value) -> None:
    *parents, last = place
    for key in parents:
        data = data[key]
    data[last] = value


@st.composite
def hostile_tree(draw) -> object:
    """A scenario from the specs as it is, or with one value just out of its bounds, or
    with one to three values replaced by anything at all, anywhere."""
    data = draw(tree(SCENARIO))
    for session in data["sessions"]:
        session["steps"].insert(0, {"get": "/"})  # most scenarios then have a request
    change = draw(st.sampled_from(["none", "one edge", "anything"]))
    if change == "one edge":
        place, spec = draw(st.sampled_from(_leaves(SCENARIO, data)))
        _put(data, place, draw(st.sampled_from(edges(spec))))
    elif change == "anything":
        for _ in range(draw(st.integers(1, 3))):
            _put(data, draw(st.sampled_from(_places(data)[1:])), draw(HOSTILE))
    return data


def schema_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        json.loads(scenario_schema.SCHEMA_FILE.read_text(encoding="utf-8")))


class Outcomes:
    """What a fuzz test tried and how much of it held, for the tally."""

    def __init__(self) -> None:
        self.tried = self.held = self.loaded = self.substituted = 0
        self.validator = schema_validator()

    def check(self, path: Path) -> None:
        """``path`` loads, and the schema accepts it, or is refused in one FILE:LINE: line."""
        self.tried += 1
        error = refusal(path)
        if error == "loaded":
            self.loaded += 1
            data = document(path.read_text(encoding="utf-8"), str(path))
            errors = [e.message for e in self.validator.iter_errors(data)]
            assert errors == [], f"kalab check accepts what the schema refuses: {errors}"
            self.substituted += "${" in path.read_text(encoding="utf-8")
        else:
            assert isinstance(error, ScenarioError), error
        self.held += 1


def fuzz(tmp_path: Path, tried: str, strategy: st.SearchStrategy, examples: int,
         write) -> Outcomes:
    outcomes = Outcomes()
    path = tmp_path / "fuzz.yaml"

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(strategy)
    def run(example) -> None:
        path.write_bytes(write(example))
        outcomes.check(path)

    try:
        run()
    finally:
        tally(AREA, tried, outcomes.tried, outcomes.held)
    return outcomes


def test_generated_scenarios_with_hostile_leaves_load_or_are_refused_cleanly(tmp_path):
    def write(data) -> bytes:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode(
            "utf-8", "surrogatepass")  # lone surrogates too: invalid UTF-8 for the loader

    outcomes = fuzz(tmp_path, "scenario trees from the specs with hostile leaves (NaN, "
                    "infinities, huge numbers, control characters, wrong types)",
                    hostile_tree(), 400, write)
    assert outcomes.loaded > 10, "the generator should make some scenarios that load"


BUNDLED_PATHS = [ROOT / "lab.yaml", *sorted((ROOT / "scenarios").glob("*.yaml"))]
BUNDLED = [path.read_bytes() for path in BUNDLED_PATHS]
SNIPPETS = [b"\x00", b"\xff", b"\xe2\x82", b"\r", b"\t", b"\x1b", b"!!binary ", b"!!set ",
            b"!!python/object/apply:os.system ", b"&a ", b"*a ", b"<<: ", b"[" * 40, b"{",
            b"]", b"- ", b": ", b"? ", b"---\n", b"...\n", b"%YAML 1.1\n", b"'", b'"', b"|",
            b".nan", b"-.inf", b"1e999", b"9" * 30, b"\n  ", b"#", b"\xef\xbb\xbf"]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(BUNDLED)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "flip", "cut"]))
        if action == "insert":
            data[at:at] = draw(st.sampled_from(SNIPPETS) | st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 20))]
        elif action == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[at:]
    return bytes(data)


def test_every_value_of_every_bundled_scenario_just_out_of_bounds_is_refused(tmp_path):
    # Exhaustive where fuzzing is thin: a scenario that loads, with one value changed
    # to each of its edges, must be refused, and is refused by the schema too.
    validator = schema_validator()
    tried, wrong = 0, []
    for bundled in BUNDLED_PATHS:
        if bundled.name.startswith("broken"):
            continue
        data = document(bundled.read_text(encoding="utf-8"), str(bundled))
        for place, spec in _leaves(SCENARIO, data):
            for edge in edges(spec):
                changed = copy.deepcopy(data)
                _put(changed, place, edge)
                tried += 1
                try:
                    parse(yaml.safe_dump(changed, sort_keys=False), str(bundled))
                    wrong.append(f"{bundled.name} {place} = {edge!r}: loaded")
                except ScenarioError as error:
                    if error.line is None or "\n" in str(error):
                        wrong.append(f"{bundled.name} {place} = {edge!r}: {error!r}")
                if edge == edge and validator.is_valid(changed):  # NaN passes any bound
                    wrong.append(f"{bundled.name} {place} = {edge!r}: the schema takes it")
    tally(AREA, "each value of each bundled scenario set just out of its bounds", tried,
          tried - len(wrong))
    assert tried > 1000 and wrong == []


def test_mutated_bundled_scenarios_load_or_are_refused_cleanly(tmp_path):
    fuzz(tmp_path, "the bundled scenarios with bytes inserted, deleted, flipped or cut",
         mutated(), 400, lambda data: data)


# Labs: a course: block with params and questions, and ${} put anywhere but in the
# params: arithmetic on params, or anything at all between the braces.
QUERIES = ["connections.count", "requests.count", "request[1].status", "request[1].reused",
           "request[1].connection.closed_by", "request[1].story", "connection[1].closed_by",
           "connection[1].idle_before_close", "connection[2].request_count",
           "werkzeug: connections.count", "request[s1.1].status", "request[9].status",
           "connection[0].closed_by", "connection[1].requests", "request[1]", "pcap.count",
           "request[1].status; import os", "${n}: connections.count", "request[${n}].status"]
HOSTILE_ATOMS = ["__import__", "__import__('os')", "open", "f(1)", "x.y", "9**9**9", "1e999",
                 "True", "None", "'a'", "\x00", "\x1b[2J", "lambda: 1", "[0]", "{}", "$", "${",
                 "}", "1/0", "n//2", "-" * 50 + "1", "(" * 30, "x if y else z", "9" * 40,
                 "1j", "0x1F", "1_000", ".5", "n.real", "__class__", "\u0661", "ｎ"]


def expressions(names: list[str], hostile: bool) -> st.SearchStrategy:
    """Arithmetic on params and numbers; or, ``hostile``, with anything among them."""
    atoms = st.one_of(st.sampled_from(names), st.integers(0, 100).map(str),
                      st.sampled_from(["0.5", "2.5", "1e3"]))
    operators = ["+", "-", "*", "/"]
    if hostile:
        atoms = atoms | st.integers(-10**13, 10**13).map(str) | st.floats().map(repr) | \
            st.sampled_from(HOSTILE_ATOMS)
        operators += ["**", "//", "%", ",", "and", "<"]
    return st.recursive(atoms, lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(operators), inner).map(" ".join),
        inner.map(lambda e: f"({e})"), inner.map(lambda e: f"-{e}")), max_leaves=6)


def dollar_text(spec: Scalar, names: list[str]) -> st.SearchStrategy:
    """A ${} for a value of ``spec``: one that may fit it (a number from the param n
    where a number goes, or inside a string), or anything written between ${ and }."""
    if spec.type in ("integer", "number"):
        fitting = st.sampled_from(["${n}", "${n + 1}", "${(n + 1) * 2}", "${n * 1}",
                                   "${n / 2}", "${-n}"])
    else:
        fitting = st.tuples(st.sampled_from(["a ", "/x/", "/", ""]), expressions(names, False),
                            st.sampled_from(["", " b", "/y"])).map(
            lambda t: f"{t[0]}${{{t[1]}}}{t[2]}")
    hostile = st.tuples(st.sampled_from(["", "a ", "/x/"]), st.sampled_from(["${", "$${"]),
                        expressions(names, True), st.sampled_from(["}", "", "}}", "} b"])).map(
        "".join)
    return st.one_of(fitting, fitting, hostile)


PARAM_VALUES = st.one_of(
    st.lists(st.integers(0, 50), min_size=2, max_size=5, unique=True).map(
        lambda values: {"choose": values}),
    st.lists(st.sampled_from(["get", "head", "post", "a.b", "x_1"]), min_size=2, max_size=4,
             unique=True).map(lambda values: {"choose": values}),
    st.tuples(st.integers(0, 20), st.integers(1, 20), st.sampled_from([0.5, 1, 2, 0.25])).map(
        lambda t: {"between": [t[0], t[0] + t[1]], "step": t[2]}),
    tree(lab_mod.PARAM))  # from the spec: often out of the checker's bounds


@st.composite
def question(draw) -> dict:
    """A question that fits its answer type, or, one time in four, one that may not."""
    kind = draw(st.sampled_from(ANSWER_TYPES))
    answer = {"query": draw(st.sampled_from(QUERIES)), "type": kind}
    loose = draw(st.integers(0, 3)) == 0
    if kind == "choice" or loose and draw(st.booleans()):
        # a copy each: a list dumped twice would be an anchor and its alias
        answer["choices"] = list(draw(st.sampled_from([("a", "b"), ("new", "reused"),
                                                       ("new", "New"), ("x",)] if loose else
                                                      [("a", "b"), ("new", "reused")])))
    if kind == "number" or loose and draw(st.booleans()):
        answer["tolerance"] = draw(st.sampled_from([0.2, 0, -1] if loose else [0.2, 1]))
    return {"id": draw(st.from_regex(lab_mod.QUESTION_ID_PATTERN, fullmatch=True)),
            "text": draw(st.sampled_from(["How many?", "Who closed it after ${n} s?"])),
            "answer": answer,
            "points": draw(st.sampled_from([1, 0.5, 0, 100, 101] if loose else [1, 2, 0.5]))}


@st.composite
def hostile_lab(draw) -> object:
    data = draw(tree(SCENARIO))
    for session in data["sessions"]:
        session["steps"].insert(0, {"get": "/"})
    data["name"] = "fuzz-lab"
    params = {"n": {"choose": [1, 2, 3]}, **draw(st.dictionaries(
        st.from_regex(lab_mod.PARAM_NAME_PATTERN, fullmatch=True), PARAM_VALUES, max_size=2))}
    data["course"] = {"title": "a lab", "params": params,
                      "questions": draw(st.lists(question(), max_size=3))}
    # a ${} where it fits, in each lab; then anywhere, fitting or not
    data["sessions"][0]["steps"] += [{"sleep": draw(st.sampled_from(["${n}", "${n / 2}",
                                                                     "${(n + 1) * 2}"]))},
                                     {"get": "/p/${n}?q=${n * 10}"}]
    # not the name: it draws the values, so it may not hold a ${} (the corpus tries it)
    places = [(place, spec) for place, spec in _leaves(SCENARIO, data)
              if place[:2] != ("course", "params") and place != ("name",)]
    for _ in range(draw(st.integers(0, 3))):
        place, spec = draw(st.sampled_from(places))
        _put(data, place, draw(dollar_text(spec, list(params))))
    return data


def test_generated_labs_with_dollar_braces_anywhere_load_or_are_refused_cleanly(tmp_path):
    def write(data) -> bytes:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()

    outcomes = fuzz(tmp_path, "labs from the specs (params, questions) with ${} of arithmetic "
                    "or of anything (calls, __import__, powers, escapes) in any value",
                    hostile_lab(), 400, write)
    assert outcomes.loaded > 10, "the generator should make some labs that load"
    assert outcomes.substituted > 10, "and some of them with ${} in them"


VALUES_OF = {"n": 3, "gap": 1.5, "big": 10**6}


def _combine(left: tuple, operator: str, right: tuple) -> tuple:
    # an operand that is an operation is parenthesized: its value is computed as one
    text = " ".join([f"({left[0]})" if " " in left[0] else left[0], operator,
                     f"({right[0]})" if " " in right[0] else right[0]])
    a, b = left[1], right[1]
    if a is None or b is None or (operator == "/" and b == 0):
        return text, None
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0}[operator]
    return text, value if abs(value) <= 10**12 else None


ARITHMETIC = st.recursive(
    st.one_of(st.integers(0, 1000).map(lambda i: (str(i), i)),
              st.sampled_from([0.5, 1.25, 0.1, 1e3, 2e-3]).map(lambda f: (repr(f), f)),
              st.sampled_from(sorted(VALUES_OF)).map(lambda n: (n, VALUES_OF[n]))),
    lambda inner: st.one_of(
        st.builds(_combine, inner, st.sampled_from("+-*/"), inner),
        inner.map(lambda p: (f"({p[0]})", p[1])),
        inner.map(lambda p: (f"-({p[0]})", None if p[1] is None else -p[1]))),
    max_leaves=8).filter(lambda p: len(p[0]) <= 200)


def test_dollar_brace_arithmetic_is_python_s_and_its_value_is_bound_checked(tmp_path):
    # The value of each ${} against Python's arithmetic on the same tree, bounded the
    # same way (±10^12 at every step, no division by zero); then as a sleep, which
    # must be refused where the value is not one (below 0, above 3600 s).
    tried = held = 0
    path = tmp_path / "lab.yaml"

    @settings(max_examples=300, deadline=None, database=None)
    @given(ARITHMETIC)
    def run(pair) -> None:
        nonlocal tried, held
        tried += 1
        text, expected = pair
        path.write_text("name: arithmetic\ncourse:\n  title: t\n  params:\n"
                        "    n: {choose: [3, 4]}\n    gap: {between: [1.5, 2], step: 0.5}\n"
                        "    big: {choose: [1000000, 2]}\n"
                        "sessions:\n  - steps:\n      - get: /\n"
                        f"      - sleep: ${{{text}}}\n"
                        "engines:\n  - engine: werkzeug\n    expect:\n"
                        f"      - {{connections: 1, claim: 'v=${{{text}}}'}}\n")
        error = refusal(path)
        if expected is None:
            assert isinstance(error, ScenarioError), error
            assert error.line == 11, error
            assert "division by zero" in error.message or "beyond ±1e+12" in error.message
        elif 0 <= expected <= 3600:
            scenario = load(path)
            assert math.isclose(scenario.sessions[0].steps[1].seconds, expected,
                                rel_tol=1e-9, abs_tol=1e-9)
            claim = scenario.engines[0].expect[0].claim
            assert math.isclose(float(claim.removeprefix("v=")), expected, rel_tol=1e-9,
                                abs_tol=1e-9)
        else:
            assert isinstance(error, ScenarioError), error
            assert error.line == 11 and error.where == "sessions[0].steps[1].sleep", error
            assert "must be >= 0" in error.message or "must be <= 3600" in error.message or \
                "the session's planned time" in error.message, error
            assert f"(from '${{{text}}}')" in error.message or len(text) > 40
        held += 1

    try:
        run()
    finally:
        tally(AREA, "${} arithmetic on params against Python's own, bound-checked as a sleep",
              tried, held)


def test_any_student_id_loads_the_lab_or_is_refused_in_one_line(tmp_path):
    text = lab().decode()
    tried = held = 0

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.text(max_size=80) | st.from_regex(NAME_PATTERN, fullmatch=True)
           | st.sampled_from(["..", ".", "../../etc/passwd", "a/b", "-rf", "${n}", "A" * 65]))
    def run(student) -> None:
        nonlocal tried, held
        tried += 1
        try:
            scenario = parse(text, "lab.yaml", student)
        except ScenarioError as error:
            assert not re.fullmatch(NAME_PATTERN, student)
            assert (error.line, error.where) == (None, "student")
            assert str(error).isprintable(), str(error)
        else:
            assert re.fullmatch(NAME_PATTERN, student) and scenario.student == student
            assert scenario.params["n"] in (1, 2, 3)
        held += 1

    try:
        run()
    finally:
        tally(AREA, "student IDs: any text, names, paths", tried, held)


def test_kalab_check_refuses_hostile_files_with_exit_2_and_one_line(tmp_path):
    # One of each kind above, through the real command line.
    sample = [YAML_SHAPES[0], YAML_SHAPES[2], YAML_SHAPES[12], YAML_SHAPES[15], VALUES[0],
              VALUES[2], VALUES[3], TEXT[0], TEXT[5], NAMES[0], NAMES[8], COUNTS[0],
              EXPRESSIONS[0], EXPRESSIONS[10]]
    big = tmp_path / "big.yaml"
    with open(big, "wb") as out:
        out.write(VALID.encode())
        out.truncate(2 << 20)
    wrong = []
    for name, data, _, _ in sample:
        (tmp_path / f"{name}.yaml").write_bytes(data)
    for path, line in [*((tmp_path / f"{name}.yaml", line) for name, _, line, _ in sample),
                       (big, 3)]:
        try:
            done = kalab_check(str(path))
        except subprocess.TimeoutExpired:
            wrong.append(f"{path.name}: still running after 20 s")
            continue
        lines = done.stderr.splitlines()
        if done.returncode != 2 or len(lines) != 1 or \
                not lines[0].startswith(f"kalab: {path}:{line}: "):
            wrong.append(f"{path.name}: exit {done.returncode}, stderr {done.stderr!r}")
    tally(AREA, "hostile files through `kalab check` (exit 2, one line naming file and line)",
          len(sample) + 1, len(sample) + 1 - len(wrong))
    assert wrong == []


def test_an_error_is_one_line_whatever_the_file_s_name_holds(tmp_path):
    # A name may hold a line break or a terminal's escape sequence: shown, not obeyed.
    path = tmp_path / "lab\nname\x1b[2J.yaml"
    path.write_text("engines: [\n")
    done = run_kalab("check", str(path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "\x1b" not in done.stderr
    assert done.stderr.startswith(f"kalab: {tmp_path}/lab\u240aname\u241b[2J.yaml:2: yaml:")
