"""The scenario model: what `lab.yaml` may say, validated on load.

This is the only place that knows the scenario's shape. Every error names the
file, the line and the field (``lab.yaml:14: engines[1].engine: ...``) so a
student can fix it without reading code; `ScenarioError` carries that line and
the CLI turns it into exit code 2 before anything starts. Each field is
described once, as a spec (type, bounds or choices, default, doc) in "the
field specs" below: the checker reads them, the model takes its defaults from
them, and `kalab.scenario_schema` makes them ``schema/scenario.schema.json``
(``python -m kalab.scenario_schema --write``), which every bundled scenario
names on its first line for editors. The spec classes, the hardened YAML
loader and the checker that walks the specs are `kalab.spec`'s.

A scenario is:

- ``name``: the start of its results folder (default: the file's name, with
  each character a name may not have made ``-``);
- ``port``: the TCP port the server listens on (default 5000);
- ``tls``: ``true`` serves HTTPS (`kalab.certs`): each engine with a
  certificate made for the run by its own CA, which the client trusts (and
  nothing else), the client writing its TLS key log into the engine's folder
  for the analysis; ``{version: "1.2"}`` or ``"1.3"`` makes the client offer
  that version alone (default ``false``: plain HTTP). An engine kind that
  cannot serve TLS (waitress, uWSGI here) is refused with it;
- ``app``: the WSGI app (default ``server.app:app``, the tutorial's; an
  engine may name its own): one of the project's apps, ``server.app:app``,
  ``server.plain_app:app`` or ``server.post_app:app`` (`kalab.apps`), or
  your own file, ``app: {file: my_app.py, attribute: app}``, relative to
  the scenario file's folder and inside it (symlinks resolved), a regular
  ``.py`` file holding any WSGI callable (served under the netns and local
  runtimes: `server.user_app`). The model keeps a project app as its
  ``module:attribute`` string and a file as an `AppFile` (absolute path,
  attribute);
- ``engines``: the servers to run (at once on the netns runtime, each in
  namespaces of its own; in turn elsewhere), each with its own ``expect`` list;
- ``sessions``: the clients, run concurrently, each a list of ``steps``;
- ``course`` (a lab's, optional): ``title``, ``teaches``, ``look_for`` and
  ``read_first`` (Markdown), ``params`` drawn per student (``{choose: [2,
  3, 4]}``, ``{between: [1.0, 3.0], step: 0.5}``) and ``questions`` (``id``,
  ``text``, ``answer: {query, type, tolerance, choices}``, ``points``,
  ``look``) whose answers are queries over the student's own run. Its
  specs, its model (`Course`, `Param`) and its rules are defined in
  `kalab.course.lab`, whose docstring is this reference's part for it.

Anywhere but in ``course.params``, a string may hold ``${EXPR}``: a
param's name or ``+ - * /`` and parentheses on params and numbers, nothing
else. It is replaced by the value before anything is checked, with the
values `load` and `parse` draw for their ``student`` (without one, the
params' defaults); a string that is exactly ``${EXPR}`` becomes the number
(``keep_alive: ${keep_alive}``). Every bound below applies to the values
substituted, and an error names the line of the ``${...}``. ``$${`` is a
literal ``${``. The model keeps the ``course``, the ``student`` and the
``params`` used.

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

Each session names its ``client:`` kind (default ``requests``) and takes
that kind's settings only; each engine names its ``engine:`` kind and takes
that kind's settings only. The kinds, and the settings each takes with
their types, bounds, defaults and docs, are defined in their own modules
(`kalab.kinds`: ``server/engines/KIND.py``, ``client/kinds/KIND.py``), which
this checker and the JSON Schema read (ENGINE_KIND_OPTIONS,
CLIENT_KIND_OPTIONS); a setting a kind does not take is refused, naming
those it does. A kind's rules between its settings are its own ``check``
(``session: false`` of requests refuses a ``close`` step and
``stale_check``; gunicorn's sync worker refuses ``keep_alive``). A client
that closes its connections itself (curl) refuses a ``close`` step.
``link`` sets impairments per direction (``server_to_client``,
``client_to_server`` and, with proxy engines only, ``upstream_to_proxy``:
what the engine behind the proxy sends it on the server's loopback:
``delay_ms``, ``jitter_ms``, ``loss_percent``, ``rate``, ``only: fin``),
applied with ``tc`` or the user-space delay line (``kalab.impairment``). A
proxy engine (nginx, haproxy) runs the engine its ``behind:`` names
(``behind: {engine: KIND, SETTING: VALUE}``, that kind's settings) on the
server's loopback at port + 1.

Requests are numbered from 1 in each session's step order; with several
sessions they are named ``SESSION.N``.

Scenarios come from strangers and the lab runs as root, so the file and
every value are bounded:

- the file: a regular file (not a FIFO, device or folder) of UTF-8, at
  most 1 MiB; one plain YAML document of mappings, lists, strings,
  numbers (``1e9`` too), true/false and null: no tags (``!!binary``,
  ``!!python/...``), no anchors or aliases, no timestamps, no duplicate
  keys, no control characters, nested at most 32 deep, at most 100,000
  values;
- names (NAME_PATTERN): scenario and engine names are letters, digits,
  ``.``, ``_`` and ``-``, not starting with ``.``, at most 64 characters,
  since they become folders; engine names are unique, ignoring case, and
  none is the name of a file every run writes (RUN_FILES: ``report.json``...);
  session names (SESSION_NAME_PATTERN) have no ``.``. `check_name` checks
  a name for code about to make it a folder;
- numbers are finite; a ``sleep`` or an ``at``, ``idle`` and ``within``,
  and an engine's timeouts are at most 3600 s, and so is a session's
  planned time (its sleeps and ``at`` steps, requests taking none);
  ``tcp_keepalive``'s ``idle`` and ``interval`` are whole seconds from 1
  to 3600 (Linux takes whole seconds) and its ``count`` 1 to 20; at
  most 16 engines, 100 sessions, 2000 steps a session, 100 expectations an
  engine, 32 headers a request;
- a path is ``/`` then visible ASCII (no spaces or controls), at most 2048
  characters; a header's name is an RFC 9110 token, its value has no CR,
  LF, NUL or other control but tab and only Latin-1 (what http.client
  sends); a body is Latin-1, at most 64 KiB; a claim is one line and a
  description has no controls but tabs and line breaks (both are printed);
- a lab (`kalab.course.lab`): at most 20 params of 2 to 50 choices or 1000
  steps, numbers within ±10^12; a ``${...}`` of at most 200 characters
  and ``+ - * /`` only (parsed with `ast` and walked against a whitelist,
  never ``eval``), every number on the way within ±10^12, at most 10,000
  in a file; at most 100 questions; a student ID is a name.
"""


from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kalab.apps import ATTRIBUTE_PATTERN, PROJECT_APPS, AppFile
from kalab.certs import VERSIONS
from kalab.course import lab as course_lab
from kalab.course.lab import COURSE, Course, Param, Value
from kalab.kinds import (
    MAX_SECONDS,
    ClientKind,
    EngineKind,
    client_kind,
    client_kinds,
    default_client,
    engine_kind,
    engine_kinds,
    seconds,
    upstream_port,  # noqa: F401  (where a proxy's engine listens: the roles import it here)
)
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
    ScenarioError,
    Spec,
    clip,
    field_default,
    get,
    read_text,
    scalar_value,
    tree,
)
from kalab.sweep import SWEEP, SweepPlan
from kalab.sweep import build as build_sweep
from kalab.sweep import read_param as read_sweep_param

DEFAULT_APP = PROJECT_APPS[0]  # the tutorial's app
# The kinds, from their own modules (`kalab.kinds`): server/engines/, client/kinds/.
ENGINE_KIND_CLASSES = engine_kinds()
CLIENT_KIND_CLASSES = client_kinds()
ENGINE_KINDS = tuple(ENGINE_KIND_CLASSES)
CLIENT_KINDS = tuple(CLIENT_KIND_CLASSES)
DEFAULT_CLIENT = default_client()
STORIES = ("new", "reused", "replaced dropped connection", "raced the FIN", "unanswered")
# upstream_to_proxy: the engine behind a proxy to the proxy, on the server's loopback.
LINK_DIRECTIONS = ("server_to_client", "client_to_server", "upstream_to_proxy")
LINK_ONLY = ("fin",)
CLOSERS = ("server", "client", "either")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# A session's name is the SESSION of a request ref SESSION.N: no '.' in it.
SESSION_NAME_PATTERN = r"[A-Za-z0-9_-]{1,64}"
# An engine's folder sits beside the files every run writes: no engine may take their names.
RUN_FILES = frozenset(("report.json", "report.html", "report.md", "junit.xml", "summary.txt",
                       "observer.log", "server.log", "client.log", "compose.log",
                       "observer.done", "latest", "grading", "target.json"))

# Bounds a lab needs and nothing near what would hang a run or a machine
# (MAX_SECONDS: a sleep, an `at`, a session's planned time, an engine's timeout).
MAX_ENGINES = 16
MAX_SESSIONS = 100
MAX_STEPS = 2000  # per session
MAX_EXPECTATIONS = 100  # per engine
MAX_HEADERS = 32  # per request
MAX_BODY = 65_536  # characters
MAX_PATH = 2048  # characters



def check_name(name: str) -> str:
    """``name`` if it matches NAME_PATTERN (safe as one folder's name), else ValueError.

    For code that takes a name from a scenario, a report or a command line and
    is about to make it a folder: the scenario checker already refused others.
    """
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"not a name ({NAME_RULE}): {name!r}")
    return name


def slug(text: str) -> str:
    """``text`` made a name: each character NAME_PATTERN does not allow becomes '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:64]
    return ("-" + name[1:] if name.startswith(".") else name) or "scenario"


# ------------------------------------------------------------ the field specs
#
# Every field of the language is described once, here: its type, bounds or
# choices, default and a one-line doc (`kalab.spec`). The checker (`Checker.check`) and the
# JSON Schema (`kalab.scenario_schema`, schema/scenario.schema.json) both read
# these; what only the checker can see (a request ref that names no request,
# an `at` going back in time, a session's planned time) it checks after them.


_seconds = seconds

# Each kind's own settings (its module's ``options``), by kind: the checker and the
# JSON Schema read them here.
ENGINE_KIND_OPTIONS: dict[str, dict[str, Spec]] = {
    name: kind.options for name, kind in ENGINE_KIND_CLASSES.items()}
CLIENT_KIND_OPTIONS: dict[str, dict[str, Spec]] = {
    name: kind.options for name, kind in CLIENT_KIND_CLASSES.items()}
# Which settings each kind takes, by name (for code that only needs the names).
ENGINE_OPTIONS: dict[str, frozenset[str]] = {
    kind: frozenset(options) for kind, options in ENGINE_KIND_OPTIONS.items()}
CLIENT_OPTIONS: dict[str, frozenset[str]] = {
    kind: frozenset(options) for kind, options in CLIENT_KIND_OPTIONS.items()}


def _default(spec: Spec) -> Any:
    return getattr(spec, "default", None)  # a record (behind:, tcp_keepalive:): none


# ------------------------------------------------------- the document's specs

NAME = Scalar("string", "a name: " + NAME_RULE, pattern=NAME_PATTERN, max_length=64,
              says=f"a name is {NAME_RULE}")
SESSION_NAME = Scalar("string", "the session's name (default s1, s2, ... by position): "
                      "letters, digits, '_' and '-', at most 64 characters; requests are "
                      "named SESSION.N after it", pattern=SESSION_NAME_PATTERN, max_length=64,
                      says="a session's name is letters, digits, '_' and '-' (no '.'), at "
                      "most 64 characters")
PATH = Scalar("string", "the request's path and query, e.g. /keep-alive", pattern=r"/[!-~]*",
              max_length=MAX_PATH, says="a path starts with '/' and has only visible ASCII "
              "characters (no spaces or control characters)")
# RFC 9110 token; a value is what http.client can send: no CR, LF, NUL or other
# controls but tab, and Latin-1 at most.
HEADER_NAME = Scalar("string", "a header's name (an RFC 9110 token)",
                     pattern=r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", max_length=256,
                     says="a header's name is a token: letters, digits and !#$%&'*+-.^_`|~")
HEADER_VALUE = Scalar("text", "a header's value, as written (a number too)",
                      pattern=r"[\t\x20-\x7e\xa0-\xff]*", max_length=8192,
                      says="a header's value has no CR, LF, NUL or other control characters "
                      "but tab, and only Latin-1 characters")
BODY = Scalar("string", "the request's body; http.client sends it as Latin-1",
              pattern=r"[\x00-\xff]*", max_length=MAX_BODY,
              says="a body has only Latin-1 characters (http.client sends it so)")
_REF = r"([A-Za-z0-9_-]{1,64}\.)?[1-9][0-9]{0,8}"
REF_NUMBER = Scalar("integer", "a request's number, from 1 in step order", minimum=1,
                    maximum=MAX_SESSIONS * MAX_STEPS)
REF_NAME = Scalar("string", "a request as SESSION.N (with several sessions), or its number",
                  pattern=_REF, max_length=80,
                  says="a request is its number, or SESSION.N with several sessions")
_REQUEST_WORDS = "(N, or SESSION.N with several sessions)"
REF = OneOf((REF_NUMBER, REF_NAME), "the request", f"a request {_REQUEST_WORDS}")
REFS = OneOf((REF_NUMBER, REF_NAME, ListOf(REF, "the requests", MAX_STEPS)), "the requests",
             f"a request or a list of requests {_REQUEST_WORDS}")
STATUS = Scalar("integer", "an HTTP status code", minimum=100, maximum=599)

REQUEST = Record("a request", {
    "method": Scalar("string", "the method, upper or lower case", "GET",
                     choices=HTTP_METHODS + tuple(m.lower() for m in HTTP_METHODS)),
    "path": dataclasses.replace(PATH, default="/keep-alive"),
    "headers": MapOf(HEADER_NAME, HEADER_VALUE, "headers to send, name: value", MAX_HEADERS),
    "body": BODY,
})
STEP_KINDS = ("get", "request", "sleep", "at", "close")
STEP = OneOf((
    Scalar("string", "close: session.close()", choices=("close",)),
    Record("one step: exactly one of get, request, sleep, at, close", {
        "get": dataclasses.replace(PATH, doc="GET this path"),
        "request": REQUEST,
        "sleep": _seconds("seconds to wait after the previous response"),
        "at": _seconds("seconds from the session's start to wait until"),
        "close": Scalar("boolean", "session.close()", choices=(True,),
                        says="write `- close` or `close: true`"),
    }, one_of=STEP_KINDS),
), "one step of the session", "a step (get, request, sleep, at or close)")
SESSION = Record("a client: one of the client kinds, running its steps", {
    "name": SESSION_NAME,
    "client": Scalar("string", "the kind of client (default " + DEFAULT_CLIENT + "): "
                     + "; ".join(f"{name}: {kind.summary}"
                                 for name, kind in CLIENT_KIND_CLASSES.items()),
                     DEFAULT_CLIENT, choices=CLIENT_KINDS),
    "steps": ListOf(STEP, "what the client does, in order", MAX_STEPS),
}, required=("steps",), switch="client", kinds=CLIENT_KIND_OPTIONS,
    switch_default=DEFAULT_CLIENT)

EXPECTATION_KINDS = ("connections", "same_connection", "new_connection", "close", "status",
                     "story")
REQUEST_IS = ("request", "is")
CLOSE = Record("how the connection of a request was first closed (its first FIN)", {
    "request": OneOf((REF_NUMBER, dataclasses.replace(
        REF_NAME, pattern="each|" + _REF, says="a request is its number, SESSION.N, or "
        "each (every connection)")), "the request whose connection it is, or each for "
        "every connection", f"a request {_REQUEST_WORDS} or each"),
    "by": Scalar("string", "the side that sent the first FIN", "either", choices=CLOSERS),
    "idle": _seconds("seconds after the connection's last response"),
    "tolerance": _seconds("± seconds around idle", 0.5, maximum=60),
    "within": _seconds("at most this many seconds after the last response"),
}, required=("request",))
EXPECTATION = Record("one checkable statement about the wire: exactly one of "
                     + ", ".join(EXPECTATION_KINDS) + ", and an optional claim", {
    "claim": Scalar("string", "the sentence reported if the wire refutes it",
                    pattern=ONE_LINE, max_length=1000,
                    says="a claim is one line without control characters"),
    "connections": Scalar("integer", "the scenario's requests travelled on N connections",
                          minimum=0, maximum=MAX_SESSIONS * MAX_STEPS),
    "same_connection": dataclasses.replace(REFS, doc="these requests shared one connection"),
    "new_connection": dataclasses.replace(REFS, doc="each of these requests opened a "
                                          "connection of its own"),
    "close": CLOSE,
    "status": OneOf((
        dataclasses.replace(STATUS, doc="every request got this status"),
        Record("request R got this status", {"request": REF, "is": STATUS},
               required=REQUEST_IS),
    ), "every request got this status, or request R did",
        "a status code, or {request: R, is: CODE}"),
    "story": Record("the request's fate, from the wire and the client together", {
        "request": REF,
        "is": Scalar("string", "the story", choices=STORIES),
    }, required=REQUEST_IS),
}, one_of=EXPECTATION_KINDS)

APP_FILE = Record("your own WSGI app, in a Python file", {
    "file": Scalar("string", "the .py file, relative to the scenario file's folder and inside "
                   "it", pattern=r"[A-Za-z0-9_][A-Za-z0-9_./-]*\.py", max_length=255,
                   says="an app file is a relative path to a .py file (letters, digits, '_', "
                   "'-', '.' and '/')"),
    "attribute": Scalar("string", "the WSGI callable's name in the file", "app",
                        pattern=ATTRIBUTE_PATTERN, says="an attribute is a Python name"),
}, required=("file",))
APP = OneOf((
    Scalar("string", "one of the project's apps, as module:attribute", choices=PROJECT_APPS,
           says="an app is one of the project's (" + ", ".join(PROJECT_APPS) + ") or your "
           "own file, as {file: my_app.py}"),
    APP_FILE,
), "the WSGI app to serve: one of the project's apps, or your own file",
    "one of the project's apps (" + ", ".join(PROJECT_APPS) + ") or {file: my_app.py}",
    DEFAULT_APP)
ENGINE = Record("a server engine, run in turn with the same sessions", {
    "engine": Scalar("string", "the kind of engine: " + "; ".join(
        f"{name}: {kind.summary}" for name, kind in ENGINE_KIND_CLASSES.items()),
        choices=ENGINE_KINDS),
    "name": dataclasses.replace(NAME, doc="the engine's name, its folder in the results "
                                "(default: the kind, or what the kind makes of its settings): "
                                + NAME_RULE),
    "app": dataclasses.replace(APP, default=None, doc="this engine's app, if not the "
                               "scenario's"),
    "expect": ListOf(EXPECTATION, "what the wire must show with this engine",
                     MAX_EXPECTATIONS, min_items=0),
}, required=("engine",), switch="engine", kinds=ENGINE_KIND_OPTIONS)

_DELAY = Scalar("number", "", 0.0, 0, 60_000)
LINK_IMPAIRMENT = Record("what one direction of the link suffers", {
    "delay_ms": dataclasses.replace(_DELAY, doc="milliseconds each packet is held"),
    "jitter_ms": dataclasses.replace(_DELAY, doc="± milliseconds around delay_ms"),
    "loss_percent": Scalar("number", "percent of packets dropped", 0.0, 0, 100),
    "rate": Scalar("string", "a tc rate such as 1mbit (not with only)",
                   pattern=r"[0-9]+(\.[0-9]+)?([kmg]?bit|[kmg]?bps)", max_length=16,
                   says="a rate is a tc rate such as 1mbit"),
    "only": Scalar("string", "impair only packets carrying a FIN", choices=LINK_ONLY),
})
LINK = Record("impairments per direction", {
    "server_to_client": dataclasses.replace(LINK_IMPAIRMENT, doc="the server's packets"),
    "client_to_server": dataclasses.replace(LINK_IMPAIRMENT, doc="the client's packets"),
    "upstream_to_proxy": dataclasses.replace(LINK_IMPAIRMENT, doc="the packets of the "
                                             "engine behind a proxy to the proxy, on the "
                                             "server's loopback (proxy engines only; no "
                                             "rate)"),
})
TLS = OneOf((
    Scalar("boolean", "true: HTTPS, with a certificate made for the run that the client "
           "trusts, and the client's key log for the analysis", False),
    Record("HTTPS, with the TLS version the client offers", {
        "version": Scalar("string", "the only TLS version the client offers (quote it: "
                          "\"1.3\"; tls: true offers 1.2 to 1.3, as negotiated)",
                          choices=VERSIONS),
    }, required=("version",)),
), "serve HTTPS: true, or {version: \"1.2\"} to choose the TLS version (default false)",
    "true, false or {version: \"1.2\" or \"1.3\"}", False)
SCENARIO = Record("a kalab scenario: engines to run, sessions (clients) to run "
                  "against each, and what the wire must show", {
    "name": dataclasses.replace(NAME, doc="the scenario's name, the start of its results "
                                "folder (default: the file's name, made a name): " + NAME_RULE),
    "description": Scalar("string", "what the scenario shows", "", pattern=LINES,
                          max_length=4096, says="a description has no control characters "
                          "but tabs and line breaks"),
    "app": APP,
    "port": Scalar("integer", "the TCP port the server listens on", 5000, 1, 65535),
    "tls": TLS,
    "engines": ListOf(ENGINE, "the servers to run (at once on netns), each with its own "
                      "expectations", MAX_ENGINES),
    "sessions": ListOf(SESSION, "the clients, run concurrently", MAX_SESSIONS),
    "link": LINK,
    "course": COURSE,
    "sweep": SWEEP,
}, required=("engines", "sessions"))


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Request:
    """One HTTP request a session sends."""

    ref: str  # "3", or "session.3" with several sessions
    session: str
    number: int
    method: str = field_default(REQUEST, "method")
    path: str = field_default(REQUEST, "path")
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


@dataclass(frozen=True)
class Step:
    """One step of a session: exactly one of request, sleep, at or close."""

    kind: str  # "request" | "sleep" | "at" | "close"
    request: Request | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class TcpKeepalive:
    """SO_KEEPALIVE and its timers for a session's sockets; None: the system's value."""

    idle: int | None = None  # TCP_KEEPIDLE, seconds
    interval: int | None = None  # TCP_KEEPINTVL, seconds
    count: int | None = None  # TCP_KEEPCNT


def _settings(kind: str, specs: dict[str, Spec], given: dict[str, Any]) -> dict[str, Any]:
    """Every setting of a kind: those given, the others their spec's default."""
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise TypeError(f"{kind} takes no {', '.join(unknown)} (it takes: "
                        f"{', '.join(specs) or 'nothing'})")
    return {key: given.get(key, _default(spec)) for key, spec in specs.items()}


class _Settings:
    """A kind's settings read as attributes (``engine.keep_alive``)."""

    def __getattr__(self, key: str) -> Any:
        options = self.__dict__.get("options") or {}
        if key in options:
            return options[key]
        kind = self.__dict__.get("kind") or self.__dict__.get("client")
        raise AttributeError(f"{type(self).__name__} of kind {kind!r} has no setting {key!r}")


@dataclass(frozen=True, init=False, eq=True)
class Session(_Settings):
    """One client session: its kind (``client``) and that kind's settings (``options``,
    every one, the defaults filled in), read as attributes too."""

    name: str
    steps: tuple[Step, ...]
    client: str
    options: dict[str, Any]

    def __init__(self, name: str, steps: tuple[Step, ...], client: str | None = None,
                 options: dict[str, Any] | None = None, **settings: Any) -> None:
        client = client or DEFAULT_CLIENT
        full = _settings(client, client_kind(client).options, {**(options or {}), **settings})
        for key, value in (("name", name), ("steps", tuple(steps)), ("client", client),
                           ("options", full)):
            object.__setattr__(self, key, value)

    __hash__ = None  # type: ignore[assignment]  # its settings are a dict

    @property
    def kind_class(self) -> type[ClientKind]:
        return client_kind(self.client)

    @property
    def requests(self) -> list[Request]:
        return [s.request for s in self.steps if s.request is not None]

    @property
    def planned_time(self) -> float:
        """Seconds from the session's start to its last step, if requests took no time."""
        planned = 0.0
        for step in self.steps:
            if step.kind == "sleep":
                planned += step.seconds
            elif step.kind == "at":
                planned = max(planned, step.seconds)
        return planned

    # The settings several kinds share, with what a kind without them does.
    @property
    def retries(self) -> int:
        """Retries of the client's own (urllib3 Retry(total=N)); 0 for a client without."""
        return self.options.get("retries") or 0

    @property
    def use_session(self) -> bool:
        """The scenario's ``session``. False: a Session per request, closed after it, as
        requests.get() does: every request on a new connection, which the client closes."""
        return self.options.get("session", True)

    @property
    def tcp_keepalive(self) -> TcpKeepalive | None:
        """SO_KEEPALIVE's timers; None: no SO_KEEPALIVE."""
        value = self.options.get("tcp_keepalive")
        return None if value is None else TcpKeepalive(**value)


@dataclass(frozen=True)
class Expectation:
    """One checkable statement about the wire, for one engine."""

    kind: str  # connections | same_connection | new_connection | close | status
    claim: str
    line: int
    count: int | None = None
    requests: tuple[str, ...] = ()  # request refs; ("each",) for close on every connection
    by: str = field_default(CLOSE, "by")
    idle: float | None = None
    tolerance: float = field_default(CLOSE, "tolerance")
    within: float | None = None
    status: int | None = None
    story: str | None = None


@dataclass(frozen=True, init=False, eq=True)
class Engine(_Settings):
    """One server engine, run in turn with the same sessions: its kind and that kind's
    settings (``options``, every one, the defaults filled in, which are the engines'
    own), read as attributes too (``engine.keep_alive``)."""

    name: str
    kind: str  # a name of `kalab.kinds.engine_kinds`
    options: dict[str, Any]
    app: str | AppFile | None  # this engine's WSGI app, if not the scenario's
    expect: tuple[Expectation, ...]

    def __init__(self, name: str, kind: str, app: str | AppFile | None = None,
                 expect: tuple[Expectation, ...] = (), options: dict[str, Any] | None = None,
                 **settings: Any) -> None:
        full = _settings(kind, engine_kind(kind).options, {**(options or {}), **settings})
        for key, value in (("name", name), ("kind", kind), ("options", full), ("app", app),
                           ("expect", tuple(expect))):
            object.__setattr__(self, key, value)

    __hash__ = None  # type: ignore[assignment]  # its settings are a dict

    @property
    def kind_class(self) -> type[EngineKind]:
        return engine_kind(self.kind)

    def describe(self) -> str:
        return self.kind_class.describe(self)


@dataclass(frozen=True)
class LinkImpairment:
    """What one direction of a link suffers (netem's words: `kalab.impairment` applies it)."""

    delay_ms: float = field_default(LINK_IMPAIRMENT, "delay_ms")
    jitter_ms: float = field_default(LINK_IMPAIRMENT, "jitter_ms")
    loss_percent: float = field_default(LINK_IMPAIRMENT, "loss_percent")
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


@dataclass(frozen=True)
class Tls:
    """``tls:``: HTTPS, with the one TLS version the client offers (None: 1.2 to 1.3)."""

    version: str | None = None


@dataclass(frozen=True)
class Scenario:
    file: str
    name: str
    description: str
    app: str | AppFile  # a project app's module:attribute, or a user's file
    port: int
    engines: tuple[Engine, ...]
    sessions: tuple[Session, ...]
    link: dict[str, LinkImpairment] = field(default_factory=dict)  # direction -> impairment
    course: Course | None = None  # a lab's course: block (`kalab.course.lab`)
    student: str | None = None  # whose params these are; None: the defaults
    params: dict[str, Value] = field(default_factory=dict)  # each param's value, as used
    tls: Tls | None = None  # None: plain HTTP
    sweep: SweepPlan | None = None  # a sweep's plan (`kalab.sweep`)
    point: int | None = None  # the sweep's point this load is at (from 0); None: the first

    def engine(self, name: str) -> Engine:
        for engine in self.engines:
            if engine.name == name:
                return engine
        raise KeyError(name)

    @property
    def requests(self) -> list[Request]:
        return [r for s in self.sessions for r in s.requests]


# --------------------------------------------------------------- validation


class _Checker(Checker):
    """Checks the tree against the scenario's specs (`Checker`), then builds the model
    from it and checks what the specs cannot say."""

    def scenario(self, root: Node, student: str | None = None,
                 point: int | None = None) -> Scenario:
        if student is not None:
            try:
                course_lab.check_student(student)
            except ValueError as exc:
                raise ScenarioError(self.file, None, "student", str(exc)) from None
        params, values = self._draw(root, student)
        swept = self._sweep_param(root, params, point)
        if swept is not None:
            values = {swept.name: swept.values[point or 0]}
        course_lab.substitute(self, root, values)
        self.check(SCENARIO, root, "")
        top = root.value
        port = get(SCENARIO, top, "port")
        app = self._app(top["app"], "app") if "app" in top else DEFAULT_APP
        # A name from the file is made one; a name the scenario gives is checked.
        name = top["name"].value if "name" in top else slug(Path(self.file).stem)
        description = get(SCENARIO, top, "description")
        sessions = self._sessions(top["sessions"])
        refs = {r.ref: r for s in sessions for r in s.requests}
        engines = tuple(self._engine(node, f"engines[{i}]", refs)
                        for i, node in enumerate(top["engines"].value))
        seen: dict[str, int] = {}
        for i, engine in enumerate(engines):
            if engine.name.casefold() in RUN_FILES:
                raise self.fail(top["engines"].value[i], f"engines[{i}].name",
                                f"{engine.name!r} is the name of a file every run writes: "
                                "choose another")
            # casefold: the names are folders, and some file systems ignore case
            if seen.setdefault(engine.name.casefold(), i) != i:
                raise self.fail(top["engines"].value[i], f"engines[{i}].name",
                                f"duplicate engine name {engine.name!r}: give each a name")
        link = self._link(top["link"]) if "link" in top else {}
        proxies = [e.kind for e in engines if e.kind_class.proxy]
        if port == 65535 and proxies:
            raise self.fail(top["port"], "port", f"{proxies[0]} engines need port + 1 for "
                            "the engine behind them: choose a port below 65535")
        if "upstream_to_proxy" in link:
            upstream = top["link"].value["upstream_to_proxy"]
            if len(proxies) != len(engines):
                raise self.fail(upstream, "link.upstream_to_proxy",
                                "only proxy engines (" + ", ".join(
                                    k for k, c in ENGINE_KIND_CLASSES.items() if c.proxy)
                                + ") have an upstream: every engine must be one")
            if link["upstream_to_proxy"].rate:
                raise self.fail(upstream, "link.upstream_to_proxy.rate",
                                "not on the upstream (a rate would slow all of the loopback)")
        sweep = None
        if swept is not None:
            for i, engine in enumerate(engines):
                if engine.expect:
                    node = top["engines"].value[i].value["expect"]
                    raise self.fail(node, f"engines[{i}].expect", "a sweep's claims are about "
                                    "shares of trials: write them in sweep.expect")
            firsts = {s.requests[0].ref for s in sessions if s.requests}
            sweep = build_sweep(self, top["sweep"], swept, refs, firsts,
                                tuple(e.name for e in engines))
        course = None
        if "course" in top:
            # at most a connection per try: a request and each of its retries
            most = sum(len(s.requests) * (1 + s.retries) for s in sessions)
            course = course_lab.build_course(self, top["course"], params,
                                             tuple(e.name for e in engines), tuple(refs), most)
        tls = self._tls(top["tls"]) if "tls" in top else None
        if tls is not None:
            for i, engine in enumerate(engines):
                if not engine.kind_class.serves_tls:
                    can = ", ".join(k for k, c in ENGINE_KIND_CLASSES.items() if c.serves_tls)
                    node = top["engines"].value[i]
                    raise self.fail(node.value["engine"], f"engines[{i}].engine",
                                    f"{engine.kind} cannot serve TLS, and the scenario says "
                                    f"tls (the engines that can: {can})")
        return Scenario(self.file, name, description, app, port, engines, tuple(sessions), link,
                        course, student, values, tls, sweep, point)

    def _sweep_param(self, root: Node, params: dict[str, Param],
                     point: int | None) -> Param | None:
        """The sweep's param, read before the rest as a lab's params are; ``point`` must be
        one of its points."""
        top = root.value if isinstance(root.value, dict) else {}
        if "sweep" not in top:
            if point is not None:
                raise ScenarioError(self.file, None, "sweep", "a sweep point was given, but "
                                    "the scenario has no sweep:")
            return None
        if params:
            raise self.fail(top["sweep"], "sweep", "a sweep cannot go with a lab's "
                            "course.params: one or the other")
        swept = read_sweep_param(self, top["sweep"])
        if point is not None and not 0 <= point < len(swept.values):
            raise ScenarioError(self.file, None, "sweep", f"no point {point}: the sweep has "
                                f"{len(swept.values)} (0 to {len(swept.values) - 1})")
        return swept

    def _tls(self, node: Node) -> Tls | None:
        if node.value is False:
            return None
        if node.value is True:
            return Tls()
        return Tls(node.value["version"].value)

    def _draw(self, root: Node,
              student: str | None) -> tuple[dict[str, Param], dict[str, Value]]:
        """A lab's params and their values for ``student`` (their defaults for None), read
        before the rest of the tree: ``${...}`` anywhere else is replaced by the values."""
        node = course_lab.params_node(root)
        params = course_lab.read_params(self, node) if node is not None else {}
        if not params:
            return {}, {}
        top = root.value
        if "name" not in top:
            raise self.fail(root, "name", "missing: a lab with params needs a name, since "
                            "each student's values are drawn from it (the file's name may "
                            "change)")
        self.check(SCENARIO.fields["name"], top["name"], "name")
        return params, course_lab.draw(params, top["name"].value, student)

    def _app(self, node: Node, where: str) -> str | AppFile:
        if isinstance(node.value, str):
            return node.value
        fields = node.value
        folder = Path(os.path.abspath(self.file)).parent.resolve()
        path = (folder / fields["file"].value).resolve()
        here = f"{where}.file"
        if not path.is_relative_to(folder):
            raise self.fail(fields["file"], here, f"must be inside the scenario's folder "
                            f"({folder}), and is {path}")
        if not path.is_file():
            raise self.fail(fields["file"], here, f"no such file: {path}" if not path.exists()
                            else f"not a regular file: {path}")
        return AppFile(str(path), get(APP_FILE, fields, "attribute"))

    def _link(self, node: Node) -> dict[str, LinkImpairment]:
        link = {}
        for direction, value in node.value.items():
            spec = value.value
            if "only" in spec and "rate" in spec:
                raise self.fail(spec["only"], f"link.{direction}.only",
                                "not with rate (a rate shapes every packet)")
            link[direction] = LinkImpairment(**{key: v.value for key, v in spec.items()})
        return link

    def _sessions(self, node: Node) -> list[Session]:
        items = node.value
        several = len(items) > 1
        sessions: list[Session] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            where = f"sessions[{i}]"
            fields = item.value
            name = fields["name"].value if "name" in fields else f"s{i + 1}"
            if name in seen:
                raise self.fail(item, f"{where}.name", f"name {name!r} must be unique")
            seen.add(name)
            steps = self._steps(fields["steps"], f"{where}.steps", name, several)
            if not any(s.kind == "request" for s in steps):
                raise self.fail(fields["steps"], f"{where}.steps", "has no request")
            kind = client_kind(fields["client"].value if "client" in fields
                               else DEFAULT_CLIENT)
            options = self._options(kind.options, fields)
            if not kind.closes:
                for j, step in enumerate(fields["steps"].value):
                    if step.value == "close" or (isinstance(step.value, dict)
                                                 and "close" in step.value):
                        raise self.fail(step, f"{where}.steps[{j}]", f"nothing to close with "
                                        f"client: {kind.name} (it closes its connections "
                                        "itself)")
            kind.check(options, fields, where, self.fail)
            sessions.append(Session(name, tuple(steps), kind.name, options))
        return sessions

    def _options(self, specs: dict[str, Spec], fields: dict[str, Node]) -> dict[str, Any]:
        """A kind's settings as written (checked already): scalars as their values, a
        record's as plain data; the model fills in the defaults."""
        return {key: scalar_value(fields[key], spec) if isinstance(spec, Scalar)
                else fields[key].plain() for key, spec in specs.items() if key in fields}

    def _steps(self, node: Node, where: str, session: str, several: bool) -> list[Step]:
        steps: list[Step] = []
        number = 0
        last_at = 0.0
        planned = 0.0  # seconds from the session's start, if requests took no time
        for i, item in enumerate(node.value):
            here = f"{where}[{i}]"
            if not isinstance(item.value, dict):  # `- close`
                steps.append(Step("close"))
                continue
            ((kind, value),) = item.value.items()
            if kind in ("get", "request"):
                number += 1
                ref = f"{session}.{number}" if several else str(number)
                steps.append(Step("request", self._request(kind, value, ref, session, number)))
            elif kind == "close":
                steps.append(Step("close"))
            else:
                seconds = value.value
                if kind == "at":
                    if seconds < last_at:
                        raise self.fail(value, f"{here}.at", f"goes back in time "
                                        f"({value.text} < {last_at:g})")
                    last_at = seconds
                planned = planned + seconds if kind == "sleep" else max(planned, seconds)
                if planned > MAX_SECONDS:
                    raise self.fail(value, f"{here}.{kind}", f"the session's planned time "
                                    f"reaches {planned:g} s here, more than {MAX_SECONDS} s")
                steps.append(Step(kind, seconds=seconds))
        return steps

    def _request(self, kind: str, node: Node, ref: str, session: str,
                 number: int) -> Request:
        if kind == "get":
            return Request(ref, session, number, "GET", node.value)
        fields = node.value
        method = get(REQUEST, fields, "method").upper()
        path = get(REQUEST, fields, "path")
        headers = {key: scalar_value(value, HEADER_VALUE)
                   for key, value in fields["headers"].value.items()} \
            if "headers" in fields else {}
        body = get(REQUEST, fields, "body")
        return Request(ref, session, number, method, path, headers, body)

    def _engine(self, node: Node, where: str, refs: dict[str, Request]) -> Engine:
        fields = node.value
        kind = engine_kind(fields["engine"].value)
        given = self._options(kind.options, fields)
        kind.check(given, fields, where, self.fail)
        app = self._app(fields["app"], f"{where}.app") if "app" in fields else None
        expect = tuple(self._expectation(n, f"{where}.expect[{i}]", refs) for i, n in
                       enumerate(fields["expect"].value)) if "expect" in fields else ()
        engine = Engine("", kind.name, app, expect, given)
        name = fields["name"].value if "name" in fields else kind.default_name(engine.options)
        return dataclasses.replace(engine, name=name)

    def _refs(self, node: Node, where: str, refs: dict[str, Request]) -> tuple[str, ...]:
        out = []
        for item in node.value if isinstance(node.value, list) else [node]:
            ref = str(item.value)
            if ref not in refs:
                known = ", ".join(refs) if len(refs) <= 20 else \
                    ", ".join(list(refs)[:20]) + ", ..."
                raise self.fail(item, where, f"no request {clip(repr(ref))} in the sessions "
                                f"(known: {known})")
            out.append(ref)
        return tuple(out)

    def _expectation(self, node: Node, where: str, refs: dict[str, Request]) -> Expectation:
        fields = node.value
        (kind,) = [k for k in EXPECTATION_KINDS if k in fields]
        value = fields[kind]
        here = f"{where}.{kind}"
        claim = get(EXPECTATION, fields, "claim") or ""
        if kind == "connections":
            count = value.value
            return Expectation(kind, claim or f"the requests use {count} connection(s)",
                               node.line, count=count)
        if kind == "status" and not isinstance(value.value, dict):
            status = value.value
            return Expectation(kind, claim or f"every request gets status {status}",
                               node.line, status=status)
        if kind in ("status", "story"):
            (request,) = self._refs(value.value["request"], f"{here}.request", refs)
            outcome = value.value["is"].value
            if kind == "status":
                return Expectation(kind, claim or f"request {request} gets status {outcome}",
                                   node.line, requests=(request,), status=outcome)
            return Expectation(kind, claim or f"request {request}: {outcome}", node.line,
                               requests=(request,), story=outcome)
        if kind in ("same_connection", "new_connection"):
            requests = self._refs(value, here, refs)
            default = (f"requests {', '.join(requests)} share one connection"
                       if kind == "same_connection" else
                       f"requests {', '.join(requests)} each open a new connection")
            return Expectation(kind, claim or default, node.line, requests=requests)
        close = value.value
        requests = ("each",) if close["request"].value == "each" else \
            self._refs(close["request"], f"{here}.request", refs)
        by, idle = get(CLOSE, close, "by"), get(CLOSE, close, "idle")
        within, tolerance = get(CLOSE, close, "within"), get(CLOSE, close, "tolerance")
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


def load(path: str | os.PathLike[str], student: str | None = None,
         point: int | None = None) -> Scenario:
    """Read and validate a scenario file, a lab's with ``student``'s params (without one,
    their defaults), a sweep's at ``point`` (without one, the first); raise ScenarioError
    on any problem."""
    return parse(read_text(path), str(path), student, point)


def document(text: str, file: str = "<scenario>") -> Any:
    """The document as plain data, as the loader reads it (what the JSON Schema is
    checked against); ScenarioError if it is not a plain YAML document at all."""
    root = tree(text, file)
    return root.plain() if root is not None else None


def parse(text: str, file: str = "<scenario>", student: str | None = None,
          point: int | None = None) -> Scenario:
    """Validate a scenario's text, a lab's with ``student``'s params (without one, their
    defaults), a sweep's at ``point`` (from 0; without one, the first); ``file`` names
    it in errors."""
    root = tree(text, file)
    if root is None:
        raise ScenarioError(file, 1, "", "the file is empty")
    return _Checker(file).scenario(root, student, point)


def expectations(node: Node, where: str, scenario: Scenario, file: str) -> list[Expectation]:
    """Expectations written elsewhere about ``scenario`` (a student's predictions), checked
    against the language and the scenario's requests; ScenarioError names ``file``."""
    checker = _Checker(file)
    checker.check(ListOf(EXPECTATION, "predictions", MAX_EXPECTATIONS, min_items=0), node,
                  where)
    refs = {request.ref: request for request in scenario.requests}
    return [checker._expectation(item, f"{where}[{i}]", refs)
            for i, item in enumerate(node.value)]
