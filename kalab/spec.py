"""The spec language's machinery: field specs, a hardened YAML loader, and the checker.

`kalab.scenario` defines the scenario language with it, `kalab.course.lab` the
``course:`` block of a lab; both describe every field once, as a spec (type,
bounds or choices, default, doc): `Checker` walks a document against the
specs, the model takes its defaults from them (`field_default`, `get`), and
`kalab.scenario_schema` turns them into JSON Schema. Nothing here knows what
a scenario holds.

Documents come from strangers and the lab runs as root. `read_text` reads
only a regular file, at most MAX_FILE_BYTES, of UTF-8; `tree` builds the
document from the YAML parser's events in one loop, refusing tags, anchors,
aliases, duplicate keys, control characters and nesting past MAX_DEPTH
before they cost anything, and keeps each value's line and its text as
written (`Node`), so that every error is ``FILE:LINE: FIELD: message``
(`ScenarioError`), with the value shown as the user wrote it.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml


class ScenarioError(Exception):
    """Bad input in a scenario file (a lab is one too); ``str()`` is the one-line message
    for the user."""

    def __init__(self, file: str, line: int | None, where: str, message: str) -> None:
        self.file, self.line, self.where, self.message = file, line, where, message
        place = f"{file}:{line}" if line else file
        super().__init__(f"{place}: {where}: {message}" if where else f"{place}: {message}")


# Names become folders (an engine's under the results folder, the scenario's
# results folder itself, a student's) and parts of request refs: letters,
# digits, '.', '_' and '-', never starting with '.' (no '.', '..' or hidden
# folders), at most 64.
NAME_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}"
NAME_RULE = "letters, digits, '.', '_' and '-', not starting with '.', at most 64 characters"
ONE_LINE = r"[^\x00-\x1f\x7f-\x9f]*"  # no control characters: it is printed on a terminal
LINES = r"[^\x00-\x08\x0b-\x1f\x7f-\x9f]*"  # the same, with tabs and line breaks


# ------------------------------------------------------------ the field specs
#
# A document's fields are each described once, as one of these: the checker
# (`Checker.check`) and the JSON Schema (`kalab.scenario_schema`) both read
# them; what only a language's own checker can see (a reference to nothing, a
# time going back) it checks after them.


@dataclass(frozen=True)
class Scalar:
    """One value: its type, bounds or choices, default and what it means."""

    type: str  # "string" | "integer" | "number" | "boolean" | "text" (a string or a number,
    #            taken as written: a header value)
    doc: str
    default: Any = None  # None: unset when absent (or required: its Record says)
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] = ()
    pattern: str | None = None  # the whole string must match; re and JSON Schema read it alike
    max_length: int | None = None
    says: str = ""  # the pattern (or choices) in words, for the message when it fails
    exclusive_minimum: float | None = None  # the value must be above it (a step, points)


@dataclass(frozen=True)
class Record:
    """A mapping of known fields; with ``switch``, the value of that field (an engine's
    kind) adds its own fields from ``kinds``; ``switch_default`` is the kind when the
    field is absent (none: the field is required)."""

    doc: str
    fields: dict[str, Spec]
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()  # exactly one of these fields is present
    switch: str = ""
    kinds: dict[str, dict[str, Spec]] = field(default_factory=dict)
    switch_default: str = ""


@dataclass(frozen=True)
class ListOf:
    """A list of items of one spec."""

    item: Spec
    doc: str
    max_items: int
    min_items: int = 1


@dataclass(frozen=True)
class MapOf:
    """A mapping of free names (headers) to values."""

    key: Scalar
    value: Spec
    doc: str
    max_items: int


@dataclass(frozen=True)
class OneOf:
    """One of several shapes, told apart by the value's type (a string, a number, a
    list, a mapping): the first that takes it checks it."""

    options: tuple[Spec, ...]
    doc: str
    want: str  # the shapes in words, after "expected" in a message
    default: Any = None


Spec = Scalar | Record | ListOf | MapOf | OneOf


def field_default(record: Record, key: str) -> Any:
    """A field's default, from its spec: the model's defaults are the language's."""
    spec = record.fields[key]
    if not isinstance(spec, (Scalar, OneOf)):
        raise TypeError(f"{key} is a {type(spec).__name__}: it has no default")
    return spec.default


def get(record: Record, fields: dict[str, Node], key: str) -> Any:
    """A checked field's value, or its spec's default."""
    return scalar_value(fields[key], record.fields[key]) if key in fields else \
        field_default(record, key)


# ---------------------------------------------- YAML with line numbers kept

# Scenarios come from strangers and the lab runs as root: the loader bounds
# what it reads before any YAML machinery sees it, and builds the tree from
# the parser's events itself, in one loop with no recursion, so that depth,
# size, tags, anchors and duplicate keys are refused before they cost anything.
MAX_FILE_BYTES = 1 << 20  # 1 MiB; the bundled scenarios are under 4 KiB
MAX_DEPTH = 32  # nested mappings and lists; a scenario needs 8
MAX_VALUES = 100_000  # nodes of the tree: keys' values, list items, mappings and lists
_YAML = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_YAML + name for name in ("str", "int", "float", "bool", "null")}
# What YAML allows unescaped in a document (YAML 1.1's printable set, as
# PyYAML's reader checks it); found first here, the error can name a line.
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# libyaml's parser is about twenty times faster than PyYAML's (a 1 MiB
# document in 0.15 s); both yield the same events, and neither recurses.
_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _PlainResolver(yaml.resolver.Resolver):
    """YAML 1.1's implicit types without timestamps, merge keys (``<<``) or ``=``."""


_PlainResolver.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag in _SCALAR_TAGS]
    for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()}
# YAML 1.2's floats without a dot (1e9), as editors and JSON read them.
_PlainResolver.add_implicit_resolver(
    _YAML + "float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789"))
_RESOLVER = _PlainResolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_CONSTRUCT = {tag: yaml.constructor.SafeConstructor.yaml_constructors[tag]
              for tag in _SCALAR_TAGS}


class Node:
    """A loaded YAML value, the line it started on (1-based) and, for a scalar, its text
    as written (``.nan``, ``1e9``, ``0x1F``: what messages show). A scalar whose
    ``${...}`` a lab's params replaced (`kalab.course.lab`) keeps what was written
    as ``source``, and its text is then the new value's."""

    __slots__ = ("value", "line", "text", "source")

    def __init__(self, value: Any, line: int, text: str | None = None,
                 source: str | None = None) -> None:
        self.value, self.line, self.text, self.source = value, line, text, source

    def shown(self) -> str:
        """The value for a message, as the user wrote it, on one short line."""
        if isinstance(self.value, dict):
            return "a mapping"
        if isinstance(self.value, list):
            return "a list"
        if self.source is not None:
            value = clip(repr(self.value)) if isinstance(self.value, str) else \
                clip(self.text or repr(self.value))
            return f"{value} (from {clip(repr(self.source))})"
        if isinstance(self.value, str):
            return clip(repr(self.value))
        if self.value is None:
            return "nothing" if not self.text else clip(self.text)
        return clip(self.text if self.text is not None else repr(self.value))

    def plain(self) -> Any:
        """The value as plain data: dicts, lists and scalars (nesting is bounded)."""
        if isinstance(self.value, dict):
            return {key: node.plain() for key, node in self.value.items()}
        if isinstance(self.value, list):
            return [node.plain() for node in self.value]
        return self.value


def clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def key_where(where: str, key: str) -> str:
    """``where.key``, with a key that is not a plain word quoted (it may hold anything)."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key):
        return f"{where}.{key}" if where else key
    return f"{where}[{clip(repr(key))}]"


class _Open:
    """A mapping or list being built: its node and, for a mapping, its last key, whether
    the next event is a key, and the line each key was on (for duplicates)."""

    __slots__ = ("node", "key", "want_key", "key_lines")

    def __init__(self, node: Node) -> None:
        self.node, self.key, self.want_key = node, "", isinstance(node.value, dict)
        self.key_lines: dict[str, int] = {}


def _where(stack: list[_Open]) -> str:
    """The path of the value being read: the open mappings' keys and lists' indexes."""
    where = ""
    for depth, frame in enumerate(stack):
        if isinstance(frame.node.value, dict):
            if not (frame.want_key and depth == len(stack) - 1):
                where = key_where(where, frame.key)
        else:
            # the list's last item holds the deeper frames; the innermost's next is new
            where += f"[{len(frame.node.value) - (depth < len(stack) - 1)}]"
    return where


def _tag(tag: str) -> str:
    """A tag as it is written: ``!!binary`` for the standard ones."""
    return clip("!!" + tag[len(_YAML):] if tag.startswith(_YAML) else tag)


def _scalar(event: yaml.ScalarEvent, line: int) -> Any:
    tag = event.tag or _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)
    node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    try:
        return _CONSTRUCT[tag](_CONSTRUCTOR, node)
    # !!int abc, !!bool maybe, more digits than int() takes; !!int "" (PyYAML reads its
    # first character unchecked)
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"{clip(repr(event.value))} is not a valid {_tag(tag)}") from None


def _too_big(file: str, line: int) -> ScenarioError:
    return ScenarioError(file, line, "", f"the file goes on past {MAX_FILE_BYTES} bytes "
                         "(1 MiB) here; a scenario is far smaller")


def tree(text: str, file: str) -> Node | None:
    """The document as a tree of Node, or None if it is empty; ScenarioError if it is
    not the plain YAML a scenario is (one document of mappings, lists and scalars)."""
    if len(text) > MAX_FILE_BYTES or (len(text) * 4 > MAX_FILE_BYTES and len(
            text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES):
        raise _too_big(file, text.count("\n", 0, MAX_FILE_BYTES) + 1)
    bad = _UNPRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - text.rfind("\n", 0, bad.start())
        code = ord(bad.group())
        kind = "control character" if code < 0x20 or 0x7F <= code <= 0x9F else "character"
        raise ScenarioError(file, line, "yaml", f"{kind} U+{code:04X} in column {column} "
                            "(YAML allows it only escaped, in double quotes)")
    stack: list[_Open] = []
    root: Node | None = None
    documents = values = 0
    line = 1

    def refuse(message: str) -> ScenarioError:
        return ScenarioError(file, line, _where(stack) or "yaml", message)

    try:
        for event in yaml.parse(text, Loader=_Parser):
            line = event.start_mark.line + 1 if event.start_mark else line
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise refuse("a second document ('---'): a scenario is one document")
                continue
            if isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent,
                                  yaml.DocumentEndEvent)):
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                stack.pop()
                continue
            if isinstance(event, yaml.AliasEvent):
                raise refuse(f"alias *{clip(event.anchor)}: anchors and aliases are not "
                             "supported; write the value out")
            if event.anchor is not None:
                raise refuse(f"anchor &{clip(event.anchor)}: anchors and aliases are not "
                             "supported; write the value out")
            parent = stack[-1] if stack else None
            if parent and parent.want_key:
                # A key: kept as written (`200:` and `on:` are the words 200 and on).
                if not isinstance(event, yaml.ScalarEvent) or \
                        event.tag not in (None, _YAML + "str"):
                    raise refuse("a key must be a plain word")
                key = event.value
                parent.key, parent.want_key = key, False
                if key in parent.key_lines:
                    raise refuse(f"duplicate key (also on line {parent.key_lines[key]})")
                parent.key_lines[key] = line
                continue
            values += 1
            if values > MAX_VALUES:
                raise refuse(f"more than {MAX_VALUES} values: a scenario is far smaller")
            if isinstance(event, yaml.ScalarEvent):
                if event.tag is not None and event.tag not in _SCALAR_TAGS:
                    raise refuse(f"tag {_tag(event.tag)} is not allowed (plain strings, "
                                 "numbers, true/false and null only)")
                try:
                    node = Node(_scalar(event, line), line, event.value)
                except ValueError as exc:
                    raise refuse(str(exc)) from None
            else:
                mapping = isinstance(event, yaml.MappingStartEvent)
                if event.tag is not None and event.tag != _YAML + ("map" if mapping else "seq"):
                    raise refuse(f"tag {_tag(event.tag)} is not allowed on a "
                                 f"{'mapping' if mapping else 'list'}")
                if len(stack) >= MAX_DEPTH:
                    raise refuse(f"exceeded the maximum nesting depth ({MAX_DEPTH} levels)")
                node = Node({} if mapping else [], line)
            if parent is None:
                root = node
            elif isinstance(parent.node.value, dict):
                parent.node.value[parent.key] = node
                parent.want_key = True
            else:
                parent.node.value.append(node)
            if not isinstance(event, yaml.ScalarEvent):
                stack.append(_Open(node))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        words = " ".join(str(exc.problem or exc.context).split())
        raise ScenarioError(file, mark.line + 1 if mark else line, "yaml", words) from None
    except yaml.YAMLError as exc:  # the reader's errors carry a position, not a line
        position = getattr(exc, "position", None)
        if isinstance(position, int):
            line = text.count("\n", 0, position) + 1
        words = " ".join(str(getattr(exc, "reason", None) or exc).split("\n")[0].split())
        raise ScenarioError(file, line, "yaml", words) from None
    return root


def read_text(path: str | os.PathLike[str]) -> str:
    """A document's text: a regular file of UTF-8, at most MAX_FILE_BYTES, its BOM
    dropped; ScenarioError (no line, or the line of a bad byte) otherwise."""
    file = str(path)
    data = _read(file)
    if len(data) > MAX_FILE_BYTES:
        raise _too_big(file, data.count(b"\n", 0, MAX_FILE_BYTES) + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ScenarioError(file, line, "", f"not UTF-8: byte 0x{data[exc.start]:02X} in "
                            f"column {column} (byte {exc.start} of the file)") from None
    return text.removeprefix("\ufeff")


def _read(file: str) -> bytes:
    """The file's bytes, at most MAX_FILE_BYTES + 1 of them, from a regular file only:
    a FIFO, a device (/dev/zero, /dev/urandom) or a folder is refused before a read."""
    try:
        # O_NONBLOCK: opening a FIFO no one writes to must not wait.
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ScenarioError(file, None, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ScenarioError(file, None, "", f"cannot read: {_file_kind(mode)}, not a "
                                "regular file")
        chunks: list[bytes] = []
        left = MAX_FILE_BYTES + 1  # one byte more tells a file that goes on past the limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise ScenarioError(file, None, "", f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


# --------------------------------------------------------------- validation



def fits(spec: Spec, value: Any) -> bool:
    """Whether ``value`` is of the spec's shape (its bounds aside)."""
    if isinstance(spec, (Record, MapOf)):
        return isinstance(value, dict)
    if isinstance(spec, ListOf):
        return isinstance(value, list)
    if isinstance(spec, OneOf):
        return any(fits(option, value) for option in spec.options)
    if isinstance(value, bool):
        return spec.type == "boolean"
    return {"string": isinstance(value, str), "integer": isinstance(value, int),
            "number": isinstance(value, (int, float)),
            "text": isinstance(value, (str, int, float))}.get(spec.type, False)


def want(spec: Spec) -> str:
    if isinstance(spec, (Record, MapOf)):
        return "a mapping"
    if isinstance(spec, ListOf):
        return "a list"
    if isinstance(spec, OneOf):
        return spec.want
    if spec.type == "string" and len(spec.choices) == 1:
        return repr(spec.choices[0])
    return {"string": "a string", "integer": "a whole number", "number": "a number",
            "boolean": "true or false", "text": "a string"}[spec.type]


def _range(spec: Scalar) -> str:
    """A number's bounds in words: ' from 0 to 3600', ' above 0, at most 100'."""
    low = f" from {spec.minimum:g}" if spec.minimum is not None else \
        f" above {spec.exclusive_minimum:g}" if spec.exclusive_minimum is not None else ""
    if spec.maximum is None:
        return low
    return f"{low} to {spec.maximum:g}" if spec.minimum is not None else \
        f"{low}, at most {spec.maximum:g}" if low else f" at most {spec.maximum:g}"


def scalar_value(node: Node, spec: Scalar) -> Any:
    """A checked scalar's value; a "text" one as written (`1e3` stays "1e3")."""
    if spec.type == "text" and not isinstance(node.value, str):
        return node.text
    return node.value


class Checker:
    """Checks a line-annotated tree against specs; raises ScenarioError at the first
    problem. A language's checker extends it to build its model from the checked tree."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: Node, where: str, message: str) -> ScenarioError:
        return ScenarioError(self.file, node.line, where, message)

    # --- what the specs say, for any spec

    def check(self, spec: Spec, node: Node, where: str) -> None:
        if not fits(spec, node.value):
            raise self.fail(node, where, f"expected {want(spec)}, got {node.shown()}")
        if isinstance(spec, Scalar):
            self.scalar(spec, node, where)
        elif isinstance(spec, Record):
            self.record(spec, node, where)
        elif isinstance(spec, ListOf):
            items = node.value
            if len(items) < spec.min_items:
                raise self.fail(node, where, "must not be empty" if spec.min_items == 1 else
                                f"has {len(items)} item(s), fewer than the {spec.min_items} "
                                "needed")
            if len(items) > spec.max_items:
                raise self.fail(node, where, f"has {len(items)} items, more than the "
                                f"{spec.max_items} allowed")
            for i, item in enumerate(items):
                self.check(spec.item, item, f"{where}[{i}]")
        elif isinstance(spec, MapOf):
            if len(node.value) > spec.max_items:
                raise self.fail(node, where, f"has {len(node.value)} entries, more than the "
                                f"{spec.max_items} allowed")
            for key, value in node.value.items():
                here = key_where(where, key)
                self.scalar(spec.key, Node(key, value.line), here)
                self.check(spec.value, value, here)
        else:
            option = next(option for option in spec.options if fits(option, node.value))
            self.check(option, node, where)

    def scalar(self, spec: Scalar, node: Node, where: str) -> None:
        value = scalar_value(node, spec)
        if spec.type in ("integer", "number"):
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(node, where, f"must be a finite number{_range(spec)}, got "
                                f"{node.shown()}")
            if spec.minimum is not None and value < spec.minimum:
                raise self.fail(node, where, f"must be >= {spec.minimum:g}, got {node.shown()}")
            if spec.exclusive_minimum is not None and value <= spec.exclusive_minimum:
                raise self.fail(node, where, f"must be > {spec.exclusive_minimum:g}, got "
                                f"{node.shown()}")
            if spec.maximum is not None and value > spec.maximum:
                raise self.fail(node, where, f"must be <= {spec.maximum:g}, got {node.shown()}")
        if spec.choices and value not in spec.choices:
            raise self.fail(node, where, f"{spec.says}, got {node.shown()}" if spec.says else
                            f"unknown value {clip(repr(value))} (choose from: "
                            f"{', '.join(map(str, spec.choices))})")
        if isinstance(value, str):
            if spec.max_length is not None and len(value) > spec.max_length:
                raise self.fail(node, where, f"has {len(value)} characters, more than the "
                                f"{spec.max_length} allowed")
            if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
                raise self.fail(node, where, f"{spec.says}, got {node.shown()}")

    def record(self, spec: Record, node: Node, where: str) -> None:
        fields = node.value
        allowed = dict(spec.fields)
        kind = ""
        if spec.switch:
            here = key_where(where, spec.switch)
            if spec.switch in fields:
                self.check(spec.fields[spec.switch], fields[spec.switch], here)
                kind = fields[spec.switch].value
            elif spec.switch_default:
                kind = spec.switch_default
            else:
                raise self.fail(node, here, f"missing (one of: {', '.join(spec.kinds)})")
            allowed.update(spec.kinds[kind])
        for key, value in fields.items():
            if key not in allowed:
                if any(key in options for options in spec.kinds.values()):
                    own = sorted(spec.kinds[kind])
                    raise self.fail(value, key_where(where, key), f"does not apply to {kind} ("
                                    f"{kind} takes: {', '.join(own) if own else 'nothing'})")
                raise self.fail(value, key_where(where, key),
                                f"unknown field (allowed: {', '.join(sorted(allowed))})")
        for key in spec.required:
            if key not in fields:
                raise self.fail(node, key_where(where, key), f"missing: {allowed[key].doc}")
        if spec.one_of:
            present = [key for key in spec.one_of if key in fields]
            if len(present) != 1:
                raise self.fail(node, where, f"exactly one of {', '.join(spec.one_of)} "
                                f"(got {', '.join(present) or 'none'})")
        for key, value in fields.items():
            self.check(allowed[key], value, key_where(where, key))
