"""Hostile scenario files: each one loads or is refused cleanly, never a traceback.

Scenarios come from strangers and the lab runs as root. Whatever the file
holds, `load` returns a Scenario or raises ScenarioError whose message is one
line starting ``FILE:LINE: ``, and `kalab check` turns that into exit 2 and
that one line on stderr. The shapes below were found by fuzzing; each test
tallies what it tried for docs/reliability.md (tests/reliability.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import KALAB, ROOT
from reliability import tally

from kalab.scenario import ScenarioError, load

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
    except Exception as exc:  # noqa: BLE001 - any other exception is what this catches
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
        elif error.line != line or words not in error.message:
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

