"""The scenario model: what `lab.yaml` may say, validated on load.

This is the only place that knows the scenario's shape. Every error names the
file, the line and the field (``lab.yaml:14: engines[1].engine: ...``) so a
student can fix it without reading code; `ScenarioError` carries that line and
the CLI turns it into exit code 2 before anything starts.

A scenario is:

- ``port``: the TCP port the server listens on (default 5000);
- ``app``: the WSGI app as ``module:attribute`` (default the tutorial's app;
  an engine may name its own);
- ``engines``: the servers to run in turn, each with its own ``expect`` list;
- ``sessions``: the clients, run concurrently, each a list of ``steps``.

Steps: ``get: PATH`` (shorthand), ``request: {method, path, headers, body}``,
``sleep: SECONDS`` (after the previous response), ``at: SECONDS`` (from the
session's start) and ``close`` (``session.close()``).

Expectations (per engine), each one mapping with one kind and an optional
``claim`` (the sentence reported when the wire refutes it):

- ``connections: N``: the scenario's requests travelled on N connections;
- ``same_connection: [1, 2, 3]``: these requests shared one connection;
- ``new_connection: [1, 4]``: each of these opened a connection of its own
  (it was the first request on it);
- ``close: {request: R | each, by: server|client|either, idle: S,
  tolerance: T}`` or ``within: S``: the connection that carried request R
  (``each``: every connection) was first closed (first FIN) by that side,
  ``idle`` seconds after its last response (± tolerance), or at most
  ``within`` seconds after it;
- ``status: CODE``: every request got this status; ``status: {request: R,
  is: CODE}``: request R did (a proxy's 502, say);
- ``story: {request: R, is: STORY}``: the request's fate, from the wire and
  the client together: ``new``, ``reused``, ``replaced dropped connection``,
  ``raced the FIN`` or ``unanswered``.

Sessions may set ``retries: N`` (urllib3 retries, idempotent methods only),
``http_version: "1.0"`` and ``stale_check: false`` (reuse a pooled
connection without urllib3's check that the server closed it). ``link``
sets impairments per direction (``server_to_client``, ``client_to_server``
and, with nginx engines only, ``upstream_to_proxy``: ``delay_ms``,
``jitter_ms``, ``loss_percent``, ``rate``, ``only: fin``), applied with
``tc`` or the user-space delay line (``kalab.impairment``). Engines:
``werkzeug`` (``threaded``), ``gunicorn`` (``worker``, ``keep_alive``,
``threads``, ``max_requests``), ``waitress`` (``channel_timeout``,
``cleanup_interval``, ``threads``) and ``nginx`` in front of gunicorn
(``keepalive_timeout``, ``keepalive_header``, ``upstream_keepalive``,
``upstream_keepalive_timeout``, and gunicorn's).

Requests are numbered from 1 in each session's step order; with several
sessions they are named ``SESSION.N``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_APP = "server.app:app"
ENGINE_KINDS = ("werkzeug", "gunicorn", "waitress", "nginx")
GUNICORN_WORKERS = ("sync", "gthread")
HTTP_VERSIONS = ("1.1", "1.0")
STORIES = ("new", "reused", "replaced dropped connection", "raced the FIN", "unanswered")
# Which settings each engine takes (nginx's upstream is a gunicorn, so it takes
# gunicorn's settings for it too).
ENGINE_OPTIONS = {
    "werkzeug": {"threaded"},
    "gunicorn": {"worker", "keep_alive", "threads", "max_requests"},
    "waitress": {"channel_timeout", "cleanup_interval", "threads"},
    "nginx": {"keepalive_timeout", "keepalive_header", "upstream_keepalive",
              "upstream_keepalive_timeout", "worker", "keep_alive", "threads", "max_requests"},
}
# upstream_to_proxy: nginx's upstream (gunicorn) to nginx, on the server's loopback.
LINK_DIRECTIONS = ("server_to_client", "client_to_server", "upstream_to_proxy")
LINK_ONLY = ("fin",)
CLOSERS = ("server", "client", "either")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class ScenarioError(Exception):
    """Bad scenario input; ``str()`` is the one-line message for the user."""

    def __init__(self, file: str, line: int | None, where: str, message: str) -> None:
        self.file, self.line, self.where, self.message = file, line, where, message
        place = f"{file}:{line}" if line else file
        super().__init__(f"{place}: {where}: {message}" if where else f"{place}: {message}")


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Request:
    """One HTTP request a session sends."""

    ref: str  # "3", or "session.3" with several sessions
    session: str
    number: int
    method: str = "GET"
    path: str = "/keep-alive"
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


@dataclass(frozen=True)
class Step:
    """One step of a session: exactly one of request, sleep, at or close."""

    kind: str  # "request" | "sleep" | "at" | "close"
    request: Request | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Session:
    name: str
    steps: tuple[Step, ...]
    retries: int = 0  # urllib3 Retry(total=N); requests' default is none
    http_version: str = "1.1"  # "1.0" makes the client speak HTTP/1.0
    # False: reuse a pooled connection without urllib3's check that the server
    # closed it, as clients without such a check do (the request races the FIN).
    stale_check: bool = True

    @property
    def requests(self) -> list[Request]:
        return [s.request for s in self.steps if s.request is not None]


@dataclass(frozen=True)
class Expectation:
    """One checkable statement about the wire, for one engine."""

    kind: str  # connections | same_connection | new_connection | close | status
    claim: str
    line: int
    count: int | None = None
    requests: tuple[str, ...] = ()  # request refs; ("each",) for close on every connection
    by: str = "either"
    idle: float | None = None
    tolerance: float = 0.5
    within: float | None = None
    status: int | None = None
    story: str | None = None


@dataclass(frozen=True)
class Engine:
    """One server engine, run in turn with the same sessions. Defaults are the engines' own."""

    name: str
    kind: str  # werkzeug | gunicorn | waitress | nginx (in front of gunicorn)
    threaded: bool = True  # werkzeug: False speaks HTTP/1.0, as app.run(threaded=False)
    worker: str = "gthread"  # gunicorn worker class
    keep_alive: float = 2.0  # gunicorn --keep-alive (its default is 2)
    threads: int = 4  # gunicorn gthread --threads, waitress threads
    max_requests: int = 0  # gunicorn --max-requests: restart a worker after N requests
    channel_timeout: float = 120.0  # waitress: idle connection timeout
    cleanup_interval: float = 30.0  # waitress: how often idle connections are checked
    keepalive_timeout: float = 75.0  # nginx keepalive_timeout (client side)
    keepalive_header: float | None = None  # nginx: the Keep-Alive: timeout=H it advertises
    upstream_keepalive: int = 0  # nginx upstream keepalive pool size (0: no pooling)
    upstream_keepalive_timeout: float = 60.0  # nginx: idle upstream connections kept
    app: str | None = None  # this engine's WSGI app, if not the scenario's
    expect: tuple[Expectation, ...] = ()

    def describe(self) -> str:
        if self.kind == "werkzeug":
            return f"werkzeug ({'threaded' if self.threaded else 'unthreaded'})"
        if self.kind == "waitress":
            return (f"waitress, channel_timeout {self.channel_timeout:g}s checked every "
                    f"{self.cleanup_interval:g}s")
        gunicorn = (f"gunicorn gthread, keep-alive {self.keep_alive:g}s"
                    if self.worker == "gthread" else "gunicorn sync")
        if self.max_requests:
            gunicorn += f", max-requests {self.max_requests}"
        if self.kind == "nginx":
            pool = (f"upstream pool {self.upstream_keepalive} for "
                    f"{self.upstream_keepalive_timeout:g}s" if self.upstream_keepalive
                    else "no upstream pool")
            return (f"nginx keepalive_timeout {self.keepalive_timeout:g}s, {pool}, "
                    f"in front of {gunicorn}")
        return gunicorn


@dataclass(frozen=True)
class LinkImpairment:
    """What one direction of a link suffers (netem's words: `kalab.impairment` applies it)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0
    rate: str | None = None  # e.g. "1mbit"
    # "fin": impair only packets carrying a FIN (a FIN slow to arrive widens
    # the race at the keep-alive edge without slowing anything else)
    only: str | None = None

    def words(self, rate: bool = True) -> list[str]:
        args: list[str] = []
        if self.delay_ms or self.jitter_ms:
            args += ["delay", f"{self.delay_ms:g}ms"]
            if self.jitter_ms:
                args.append(f"{self.jitter_ms:g}ms")
        if self.loss_percent:
            args += ["loss", f"{self.loss_percent:g}%"]
        if self.rate and rate:
            args += ["rate", self.rate]
        return args


def upstream_port(port: int) -> int:
    """Where an nginx engine's gunicorn listens, on the server's loopback."""
    return port + 1


@dataclass(frozen=True)
class Scenario:
    file: str
    name: str
    description: str
    app: str
    port: int
    engines: tuple[Engine, ...]
    sessions: tuple[Session, ...]
    link: dict[str, LinkImpairment] = field(default_factory=dict)  # direction -> impairment

    def engine(self, name: str) -> Engine:
        for engine in self.engines:
            if engine.name == name:
                return engine
        raise KeyError(name)

    @property
    def requests(self) -> list[Request]:
        return [r for s in self.sessions for r in s.requests]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
_RESOLVER = _PlainResolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_CONSTRUCT = {tag: yaml.constructor.SafeConstructor.yaml_constructors[tag]
              for tag in _SCALAR_TAGS}


class _Node:
    """A loaded YAML value, the line it started on (1-based) and, for a scalar, its text
    as written (``.nan``, ``1e9``, ``0x1F``: what messages show)."""

    __slots__ = ("value", "line", "text")

    def __init__(self, value: Any, line: int, text: str | None = None) -> None:
        self.value, self.line, self.text = value, line, text

    def shown(self) -> str:
        """The value for a message, as the user wrote it, on one short line."""
        if isinstance(self.value, dict):
            return "a mapping"
        if isinstance(self.value, list):
            return "a list"
        if isinstance(self.value, str):
            return _clip(repr(self.value))
        if self.value is None:
            return "nothing" if not self.text else _clip(self.text)
        return _clip(self.text if self.text is not None else repr(self.value))


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _key_where(where: str, key: str) -> str:
    """``where.key``, with a key that is not a plain word quoted (it may hold anything)."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key):
        return f"{where}.{key}" if where else key
    return f"{where}[{_clip(repr(key))}]"


class _Open:
    """A mapping or list being built: its node and, for a mapping, its last key, whether
    the next event is a key, and the line each key was on (for duplicates)."""

    __slots__ = ("node", "key", "want_key", "key_lines")

    def __init__(self, node: _Node) -> None:
        self.node, self.key, self.want_key = node, "", isinstance(node.value, dict)
        self.key_lines: dict[str, int] = {}


def _where(stack: list[_Open]) -> str:
    """The path of the value being read: the open mappings' keys and lists' indexes."""
    where = ""
    for depth, frame in enumerate(stack):
        if isinstance(frame.node.value, dict):
            if not (frame.want_key and depth == len(stack) - 1):
                where = _key_where(where, frame.key)
        else:
            # the list's last item holds the deeper frames; the innermost's next is new
            where += f"[{len(frame.node.value) - (depth < len(stack) - 1)}]"
    return where


def _tag(tag: str) -> str:
    """A tag as it is written: ``!!binary`` for the standard ones."""
    return _clip("!!" + tag[len(_YAML):] if tag.startswith(_YAML) else tag)


def _scalar(event: yaml.ScalarEvent, line: int) -> Any:
    tag = event.tag or _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)
    node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    try:
        return _CONSTRUCT[tag](_CONSTRUCTOR, node)
    except (ValueError, KeyError):  # !!int abc, !!bool maybe, more digits than int() takes
        raise ValueError(f"{_clip(repr(event.value))} is not a valid {_tag(tag)}") from None


def _too_big(file: str, line: int) -> ScenarioError:
    return ScenarioError(file, line, "", f"the file goes on past {MAX_FILE_BYTES} bytes "
                         "(1 MiB) here; a scenario is far smaller")


def _tree(text: str, file: str) -> _Node | None:
    """The document as a tree of _Node, or None if it is empty; ScenarioError if it is
    not the plain YAML a scenario is (one document of mappings, lists and scalars)."""
    if len(text) > MAX_FILE_BYTES or (len(text) * 4 > MAX_FILE_BYTES and len(
            text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES):
        raise _too_big(file, text.count("\n", 0, MAX_FILE_BYTES) + 1)
    bad = _UNPRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - text.rfind("\n", 0, bad.start())
        raise ScenarioError(file, line, "yaml", f"control character U+{ord(bad.group()):04X} "
                            f"in column {column} (YAML allows it only escaped, in double "
                            "quotes)")
    stack: list[_Open] = []
    root: _Node | None = None
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
                raise refuse(f"alias *{_clip(event.anchor)}: anchors and aliases are not "
                             "supported; write the value out")
            if event.anchor is not None:
                raise refuse(f"anchor &{_clip(event.anchor)}: anchors and aliases are not "
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
                    node = _Node(_scalar(event, line), line, event.value)
                except ValueError as exc:
                    raise refuse(str(exc)) from None
            else:
                mapping = isinstance(event, yaml.MappingStartEvent)
                if event.tag is not None and event.tag != _YAML + ("map" if mapping else "seq"):
                    raise refuse(f"tag {_tag(event.tag)} is not allowed on a "
                                 f"{'mapping' if mapping else 'list'}")
                if len(stack) >= MAX_DEPTH:
                    raise refuse(f"exceeded the maximum nesting depth ({MAX_DEPTH} levels)")
                node = _Node({} if mapping else [], line)
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


# --------------------------------------------------------------- validation


class _Checker:
    """Turns the line-annotated tree into the model, or raises ScenarioError."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: _Node | None, where: str, message: str) -> ScenarioError:
        return ScenarioError(self.file, node.line if node else None, where, message)

    def mapping(self, node: _Node, where: str, allowed: set[str]) -> dict[str, _Node]:
        if not isinstance(node.value, dict):
            raise self.fail(node, where, f"expected a mapping, got {_kind(node.value)}")
        for key, value in node.value.items():
            if key not in allowed:
                raise self.fail(value, f"{where}.{key}" if where else key,
                                f"unknown field (allowed: {', '.join(sorted(allowed))})")
        return node.value

    def number(self, node: _Node, where: str, minimum: float = 0.0,
               integer: bool = False, maximum: float | None = None) -> float:
        value = node.value
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            want = "a whole number" if integer else "a number"
            raise self.fail(node, where, f"expected {want}, got {_kind(value)} {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum:g} to {maximum:g}" if maximum is not None else f">= {minimum:g}"
            raise self.fail(node, where, f"must be {bound}, got {value!r}")
        return value

    def string(self, node: _Node, where: str, choices: tuple[str, ...] = ()) -> str:
        if not isinstance(node.value, str):
            raise self.fail(node, where, f"expected a string, got {_kind(node.value)}")
        if choices and node.value not in choices:
            raise self.fail(node, where,
                            f"unknown value {node.value!r} (choose from: {', '.join(choices)})")
        return node.value

    def boolean(self, node: _Node, where: str) -> bool:
        if not isinstance(node.value, bool):
            raise self.fail(node, where, f"expected true or false, got {node.value!r}")
        return node.value

    def sequence(self, node: _Node, where: str, nonempty: bool = True) -> list[_Node]:
        if not isinstance(node.value, list):
            raise self.fail(node, where, f"expected a list, got {_kind(node.value)}")
        if nonempty and not node.value:
            raise self.fail(node, where, "must not be empty")
        return node.value

    # --- the document

    def scenario(self, root: _Node) -> Scenario:
        top = self.mapping(root, "", {"name", "description", "app", "port",
                                      "engines", "sessions", "link"})
        for required in ("engines", "sessions"):
            if required not in top:
                raise self.fail(root, required, "missing (a scenario needs engines and sessions)")
        port = int(self.number(top["port"], "port", 1, True, 65535)) if "port" in top else 5000
        app = self.string(top["app"], "app") if "app" in top else DEFAULT_APP
        if ":" not in app:
            raise self.fail(top["app"], "app", "expected module:attribute, e.g. server.app:app")
        name = self.string(top["name"], "name") if "name" in top else Path(self.file).stem
        description = self.string(top["description"], "description") \
            if "description" in top else ""

        sessions = self._sessions(top["sessions"])
        refs = {r.ref: r for s in sessions for r in s.requests}
        engines = tuple(self._engine(n, f"engines[{i}]", refs)
                        for i, n in enumerate(self.sequence(top["engines"], "engines")))
        names = [e.name for e in engines]
        for i, engine_name in enumerate(names):
            if names.index(engine_name) != i:
                node = top["engines"].value[i]
                raise self.fail(node, f"engines[{i}].name",
                                f"duplicate engine name {engine_name!r}: give each a name")
        link = self._link(top["link"]) if "link" in top else {}
        if port == 65535 and any(e.kind == "nginx" for e in engines):
            raise self.fail(top["port"], "port", "nginx engines need port + 1 for gunicorn "
                            "behind them: choose a port below 65535")
        if "upstream_to_proxy" in link and any(e.kind != "nginx" for e in engines):
            raise self.fail(top["link"].value["upstream_to_proxy"], "link.upstream_to_proxy",
                            "only nginx engines have an upstream: every engine must be nginx")
        if "upstream_to_proxy" in link and link["upstream_to_proxy"].rate:
            raise self.fail(top["link"].value["upstream_to_proxy"],
                            "link.upstream_to_proxy.rate",
                            "not on the upstream (a rate would slow all of the loopback)")
        return Scenario(self.file, name, description, app, port, engines, tuple(sessions), link)

    def _link(self, node: _Node) -> dict[str, LinkImpairment]:
        fields = self.mapping(node, "link", set(LINK_DIRECTIONS))
        link = {}
        for direction, value in fields.items():
            where = f"link.{direction}"
            spec = self.mapping(value, where,
                                {"delay_ms", "jitter_ms", "loss_percent", "rate", "only"})
            numbers = {key: self.number(spec[key], f"{where}.{key}", 0, False,
                                        100 if key == "loss_percent" else 60_000)
                       for key in ("delay_ms", "jitter_ms", "loss_percent") if key in spec}
            rate = None
            if "rate" in spec:
                rate = self.string(spec["rate"], f"{where}.rate")
                if not re.fullmatch(r"[0-9]+(\.[0-9]+)?([kmg]?bit|[kmg]?bps)", rate):
                    raise self.fail(spec["rate"], f"{where}.rate",
                                    f"expected a tc rate such as 1mbit, got {rate!r}")
            only = self.string(spec["only"], f"{where}.only", LINK_ONLY) \
                if "only" in spec else None
            if only and rate:
                raise self.fail(spec["only"], f"{where}.only",
                                "not with rate (a rate shapes every packet)")
            link[direction] = LinkImpairment(rate=rate, only=only, **numbers)
        return link

    def _sessions(self, node: _Node) -> list[Session]:
        items = self.sequence(node, "sessions")
        several = len(items) > 1
        sessions: list[Session] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            where = f"sessions[{i}]"
            fields = self.mapping(item, where, {"name", "steps", "retries", "http_version",
                                                "stale_check"})
            name = self.string(fields["name"], f"{where}.name") if "name" in fields else f"s{i + 1}"
            if name in seen or "." in name:
                raise self.fail(item, f"{where}.name",
                                f"name {name!r} must be unique, without dots")
            seen.add(name)
            if "steps" not in fields:
                raise self.fail(item, f"{where}.steps", "missing")
            steps = self._steps(fields["steps"], f"{where}.steps", name, several)
            if not any(s.kind == "request" for s in steps):
                raise self.fail(fields["steps"], f"{where}.steps", "has no request")
            retries = int(self.number(fields["retries"], f"{where}.retries", 0, True, 10)) \
                if "retries" in fields else 0
            version = "1.1"
            if "http_version" in fields:
                version = self.string(fields["http_version"], f"{where}.http_version",
                                      HTTP_VERSIONS)
            stale_check = self.boolean(fields["stale_check"], f"{where}.stale_check") \
                if "stale_check" in fields else True
            sessions.append(Session(name, tuple(steps), retries, version, stale_check))
        return sessions

    def _steps(self, node: _Node, where: str, session: str, several: bool) -> list[Step]:
        steps: list[Step] = []
        number = 0
        last_at = 0.0
        for i, item in enumerate(self.sequence(node, where)):
            here = f"{where}[{i}]"
            if item.value == "close":
                steps.append(Step("close"))
                continue
            fields = self.mapping(item, here, {"get", "request", "sleep", "at", "close"})
            if len(fields) != 1:
                raise self.fail(item, here, "a step is exactly one of get, request, sleep, "
                                            f"at, close; got {', '.join(fields)}")
            (kind, value), = fields.items()
            if kind in ("get", "request"):
                number += 1
                ref = f"{session}.{number}" if several else str(number)
                steps.append(Step("request", self._request(kind, value, f"{here}.{kind}",
                                                           ref, session, number)))
            elif kind == "sleep":
                steps.append(Step("sleep", seconds=self.number(value, f"{here}.sleep")))
            elif kind == "at":
                seconds = self.number(value, f"{here}.at")
                if seconds < last_at:
                    raise self.fail(value, f"{here}.at",
                                    f"goes back in time ({seconds:g} < {last_at:g})")
                last_at = seconds
                steps.append(Step("at", seconds=seconds))
            else:
                if value.value is not True:
                    raise self.fail(value, f"{here}.close", "write `- close` or `close: true`")
                steps.append(Step("close"))
        return steps

    def _request(self, kind: str, node: _Node, where: str, ref: str, session: str,
                 number: int) -> Request:
        if kind == "get":
            path = self.string(node, where)
            if not path.startswith("/"):
                raise self.fail(node, where, f"a path starts with '/', got {path!r}")
            return Request(ref, session, number, "GET", path)
        fields = self.mapping(node, where, {"method", "path", "headers", "body"})
        method = self.string(fields["method"], f"{where}.method").upper() \
            if "method" in fields else "GET"
        if method not in HTTP_METHODS:
            raise self.fail(fields["method"], f"{where}.method",
                            f"unknown method {method!r} (choose from: {', '.join(HTTP_METHODS)})")
        path = self.string(fields["path"], f"{where}.path") if "path" in fields else "/keep-alive"
        if not path.startswith("/"):
            raise self.fail(fields["path"], f"{where}.path", f"a path starts with '/': {path!r}")
        headers: dict[str, str] = {}
        if "headers" in fields:
            raw = fields["headers"]
            if not isinstance(raw.value, dict):
                raise self.fail(raw, f"{where}.headers", "expected a mapping of name: value")
            for key, value in raw.value.items():
                if not isinstance(value.value, (str, int, float)) or isinstance(value.value, bool):
                    raise self.fail(value, f"{where}.headers.{key}", "expected a string value")
                headers[key] = str(value.value)
        body = self.string(fields["body"], f"{where}.body") if "body" in fields else None
        return Request(ref, session, number, method, path, headers, body)

    def _engine(self, node: _Node, where: str, refs: dict[str, Request]) -> Engine:
        every_option = set().union(*ENGINE_OPTIONS.values())
        fields = self.mapping(node, where, {"name", "engine", "expect", "app"} | every_option)
        if "engine" not in fields:
            raise self.fail(node, f"{where}.engine", f"missing (one of: {', '.join(ENGINE_KINDS)})")
        kind = self.string(fields["engine"], f"{where}.engine", ENGINE_KINDS)
        for key in sorted(every_option & fields.keys()):
            if key not in ENGINE_OPTIONS[kind]:
                raise self.fail(fields[key], f"{where}.{key}", f"does not apply to {kind}")
        options: dict[str, Any] = {}
        for key in ENGINE_OPTIONS[kind] & fields.keys():
            value, here = fields[key], f"{where}.{key}"
            if key == "threaded":
                options[key] = self.boolean(value, here)
            elif key == "worker":
                options[key] = self.string(value, here, GUNICORN_WORKERS)
            elif key in ("threads", "upstream_keepalive", "max_requests"):
                low = 1 if key == "threads" else 0
                options[key] = int(self.number(value, here, low, True, 1024))
            elif key in ("channel_timeout", "cleanup_interval"):  # waitress takes whole seconds
                options[key] = int(self.number(value, here, 1, True, 3600))
            else:
                options[key] = self.number(value, here, 0, False, 3600)
        if options.get("worker") == "sync" and ("keep_alive" in options or "threads" in options):
            key = "keep_alive" if "keep_alive" in options else "threads"
            raise self.fail(fields[key], f"{where}.{key}",
                            "gunicorn's sync worker has no keep-alive or threads; use gthread")
        if "app" in fields:
            options["app"] = self.string(fields["app"], f"{where}.app")
            if ":" not in options["app"]:
                raise self.fail(fields["app"], f"{where}.app",
                                "expected module:attribute, e.g. server.plain_app:app")
        worker = options.get("worker", "gthread")
        default_name = f"gunicorn-{worker}" if kind == "gunicorn" else kind
        name = self.string(fields["name"], f"{where}.name") if "name" in fields else default_name
        expect = ()
        if "expect" in fields:
            expect = tuple(self._expectation(n, f"{where}.expect[{i}]", refs) for i, n in
                           enumerate(self.sequence(fields["expect"], f"{where}.expect", False)))
        return Engine(name=name, kind=kind, expect=expect, **options)

    def _refs(self, node: _Node, where: str, refs: dict[str, Request]) -> tuple[str, ...]:
        values = [node] if not isinstance(node.value, list) else self.sequence(node, where)
        out = []
        for item in values:
            ref = str(item.value)
            if isinstance(item.value, bool) or ref not in refs:
                known = ", ".join(refs)
                raise self.fail(item, where, f"no request {ref!r} in the sessions (known: {known})")
            out.append(ref)
        return tuple(out)

    def _request_is(self, node: _Node, where: str,
                    refs: dict[str, Request]) -> tuple[str, _Node]:
        """``{request: R, is: X}``: the request R names, and X's node for the caller to check."""
        spec = self.mapping(node, where, {"request", "is"})
        for key in ("request", "is"):
            if key not in spec:
                raise self.fail(node, f"{where}.{key}", "missing")
        return self._refs(spec["request"], f"{where}.request", refs)[0], spec["is"]

    def _expectation(self, node: _Node, where: str, refs: dict[str, Request]) -> Expectation:
        kinds = ("connections", "same_connection", "new_connection", "close", "status", "story")
        fields = self.mapping(node, where, set(kinds) | {"claim"})
        present = [k for k in kinds if k in fields]
        if len(present) != 1:
            raise self.fail(node, where, f"an expectation has exactly one of {', '.join(kinds)}")
        kind = present[0]
        value = fields[kind]
        here = f"{where}.{kind}"
        claim = self.string(fields["claim"], f"{where}.claim") if "claim" in fields else ""
        if kind == "connections":
            count = int(self.number(value, here, 0, True))
            return Expectation(kind, claim or f"the requests use {count} connection(s)",
                               node.line, count=count)
        if kind == "status":
            if not isinstance(value.value, dict):
                status = int(self.number(value, here, 100, True, 599))
                return Expectation(kind, claim or f"every request gets status {status}",
                                   node.line, status=status)
            request, is_node = self._request_is(value, here, refs)
            status = int(self.number(is_node, f"{here}.is", 100, True, 599))
            return Expectation(kind, claim or f"request {request} gets status {status}",
                               node.line, requests=(request,), status=status)
        if kind == "story":
            request, is_node = self._request_is(value, here, refs)
            story = self.string(is_node, f"{here}.is", STORIES)
            return Expectation(kind, claim or f"request {request}: {story}", node.line,
                               requests=(request,), story=story)
        if kind in ("same_connection", "new_connection"):
            requests = self._refs(value, here, refs)
            default = (f"requests {', '.join(requests)} share one connection"
                       if kind == "same_connection" else
                       f"requests {', '.join(requests)} each open a new connection")
            return Expectation(kind, claim or default, node.line, requests=requests)
        close = self.mapping(value, here, {"request", "by", "idle", "tolerance", "within"})
        if "request" not in close:
            raise self.fail(value, f"{here}.request", "missing (a request number, or each)")
        requests = ("each",) if close["request"].value == "each" else \
            self._refs(close["request"], f"{here}.request", refs)
        by = self.string(close["by"], f"{here}.by", CLOSERS) if "by" in close else "either"
        idle = self.number(close["idle"], f"{here}.idle") if "idle" in close else None
        within = self.number(close["within"], f"{here}.within") if "within" in close else None
        tolerance = self.number(close["tolerance"], f"{here}.tolerance") \
            if "tolerance" in close else 0.5
        if idle is not None and within is not None:
            raise self.fail(value, here, "give idle (with tolerance) or within, not both")
        target = "every connection" if requests == ("each",) else \
            f"the connection of request {requests[0]}"
        words = f"{target} is closed first by the {by}" if by != "either" else \
            f"{target} is closed"
        if idle is not None:
            words += f" {idle:g} s (±{tolerance:g}) after its last response"
        elif within is not None:
            words += f" within {within:g} s of its last response"
        return Expectation("close", claim or words, node.line, requests=requests, by=by,
                           idle=idle, tolerance=tolerance, within=within)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return type(value).__name__


def load(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate a scenario file; raise ScenarioError on any problem."""
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
    return parse(text.removeprefix("\ufeff"), file)


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


def parse(text: str, file: str = "<scenario>") -> Scenario:
    """Validate a scenario's text; ``file`` names it in errors."""
    root = _tree(text, file)
    if root is None:
        raise ScenarioError(file, 1, "", "the file is empty")
    return _Checker(file).scenario(root)
