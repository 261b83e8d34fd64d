"""Engine kinds and client kinds: one module each, holding everything its kind needs.

As Mininet has a class per kind of Host or Link, the lab has a class per kind
of server engine (``server/engines/KIND.py``) and per kind of client
(``client/kinds/KIND.py``). Each module defines one subclass of `EngineKind`
or `ClientKind` and names it ``KIND``; the class holds, in one place:

- ``name``, as a scenario writes it (``engine: gunicorn``, ``client: httpx``),
  ``order`` (where it stands in lists), ``summary`` (one line) and
  ``advertises`` (what it is known to put on the wire about keep-alive);
- ``options``: the settings it takes, as `kalab.spec` specs (type, bounds,
  default, doc). The scenario checker and its JSON Schema read them from
  here, so a setting a kind does not take is refused naming the ones it does;
- ``check``: the rules between its settings that one spec cannot say;
- for an engine: ``describe`` (its settings in words), ``plan`` (the
  processes that serve the app, each a `Launch`), ``version``, ``ready``
  (its readiness check) and ``logs`` (where it writes its trouble), and
  ``serves_tls``: whether ``plan`` can serve HTTPS with the certificate it is
  given (`kalab.certs.ServerTls`; a scenario with ``tls`` refuses a kind that
  cannot);
- for a client: ``driver`` (what sends a session's requests and records
  what the client believed, over HTTPS with `kalab.certs.ClientTls`: the
  run's CA, the key log to write) and ``versions``.

Nothing else in the lab names a kind: the registry finds the modules
(`engine_kinds`, `client_kinds`) by listing the two packages, and adding a
kind is adding its module and its test (README: "Adding an engine").

Kind modules are imported by every role and by ``kalab check``: they import
their engine's or client's library only inside the methods that use it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from kalab.spec import Node, Scalar, ScenarioError, Spec

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from kalab.certs import ClientTls, ServerTls
    from kalab.scenario import Engine, Request, Session

MAX_SECONDS = 3600  # a sleep, an `at`, a session's planned time, an engine's timeout
ENGINE_PACKAGE = "server.engines"
CLIENT_PACKAGE = "client.kinds"


def seconds(doc: str, default: float | None = None, minimum: float = 0,
            maximum: float = MAX_SECONDS) -> Scalar:
    """A number of seconds, 0 to an hour unless told."""
    return Scalar("number", doc, default, minimum, maximum)


def whole_seconds(doc: str, default: int | None = None, minimum: int = 1,
                  maximum: int = MAX_SECONDS) -> Scalar:
    """Whole seconds, for engines that take no fractions (waitress, Apache, HAProxy's
    configuration is in ms but the lab keeps it to what people write)."""
    return Scalar("integer", doc, default, minimum, maximum)


def upstream_port(port: int) -> int:
    """Where the engine behind a proxy listens, on the server's loopback."""
    return port + 1


def addr(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


Fail = Callable[[Node, str, str], ScenarioError]  # (node, where, message) -> the error to raise


# ------------------------------------------------------------------- engines


@dataclass(frozen=True)
class Launch:
    """One process of an engine, and the address it must accept on before the next starts."""

    argv: list[str]
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict)  # beside the role's own environment
    # It serves HTTPS with a certificate of this CA: ready once a TLS handshake verifies.
    tls_ca: Path | None = None


class AbortStart(Exception):
    """The engine did not come up (it exited, or nothing accepted in time)."""


def wait_until_accepting(host: str, port: int, child: subprocess.Popen, timeout: float,
                         tls_ca: Path | None = None) -> None:
    """Connect until ``host:port`` accepts; `AbortStart` if ``child`` exits first or the
    time runs out. With ``tls_ca``, accepting means a TLS handshake that verifies
    against that CA (then a close_notify): a port that accepts and cannot serve TLS is
    not ready. From inside the server's network namespace the probe goes over
    loopback (or the server's own address) and stays off the capture in the netns and
    compose runtimes."""
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    context = None
    if tls_ca is not None:
        context = ssl.create_default_context(cafile=str(tls_ca))  # the chain and the name
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if child.poll() is not None:
            raise AbortStart(f"the engine exited with code {child.returncode} "
                             "before listening")
        try:
            # generous: an impaired link (a proxy's delayed upstream) answers late
            with socket.create_connection((probe_host, port), timeout=5) as sock:
                if context is not None:
                    with context.wrap_socket(sock, server_hostname=probe_host) as tls:
                        _say_goodbye(tls)
                return
        except OSError as exc:  # ssl.SSLError is one
            last = f" ({exc})" if isinstance(exc, ssl.SSLError) else ""
            if time.monotonic() > deadline:
                raise AbortStart(f"nothing accepts on {host}:{port} after {timeout:g} s"
                                 f"{last}") from None
            time.sleep(0.05)


def _say_goodbye(tls: ssl.SSLSocket) -> None:
    """Send close_notify; the engine's own may not come (it is not waited for long)."""
    tls.settimeout(1)
    try:
        tls.unwrap()
    except OSError:
        pass


class EngineKind:
    """One kind of server engine. Subclass it in ``server/engines/KIND.py`` as ``KIND``."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 100
    summary: ClassVar[str] = ""
    advertises: ClassVar[str] = ""  # what the wire shows of its keep-alive, in a line
    options: ClassVar[dict[str, Spec]] = {}
    # A proxy runs the engine its `behind` option names on the server's loopback, at
    # upstream_port(port), and listens itself on the scenario's port.
    proxy: ClassVar[bool] = False
    # Whether `plan` serves HTTPS when given a certificate (a proxy: on its own front).
    serves_tls: ClassVar[bool] = True
    # Files in the engine's folder where it writes errors and warnings (server.log, the
    # engine's standard output and error, is always read).
    logs: ClassVar[tuple[str, ...]] = ()
    # How it loads a user's app file: True if `plan` takes the file's path itself;
    # False: it imports `kalab.apps.FILE_SHIM`, which loads the file named in its
    # environment.
    loads_app_files: ClassVar[bool] = False

    @classmethod
    def registered(cls, kinds: Mapping[str, type[EngineKind]]) -> None:
        """Called once every kind is found (a proxy takes the others behind it)."""

    @classmethod
    def default_name(cls, options: Mapping[str, Any]) -> str:
        """The engine's name when the scenario gives none (its folder in the results)."""
        return cls.name

    @classmethod
    def check(cls, options: Mapping[str, Any], fields: dict[str, Node], where: str,
              fail: Fail) -> None:
        """Refuse settings that make no sense together; ``fields`` are as written."""

    @classmethod
    def describe(cls, engine: Engine) -> str:
        """The engine and its settings in words (the report's description)."""
        return cls.name

    @classmethod
    def plan(cls, engine: Engine, app: str, host: str, port: int, folder: Path,
             scratch: Path, tls: ServerTls | None = None) -> list[Launch]:
        """The processes that serve ``app`` (``module:attribute``, or the file's path for
        a kind that `loads_app_files`) on host:port, in start order. ``folder`` is the
        engine's shared folder (configuration, logs), ``scratch`` a private one; with
        ``tls`` (only a kind that `serves_tls` is given one) it serves HTTPS with that
        certificate, and its `Launch` names the CA (``tls_ca``) for the readiness check."""
        raise NotImplementedError

    @classmethod
    def version(cls, engine: Engine) -> str:
        """The engine's version, as it reports it."""
        raise NotImplementedError

    @classmethod
    def ready(cls, launch: Launch, child: subprocess.Popen, timeout: float) -> None:
        """Return once ``launch`` serves; `AbortStart` if it cannot. By default: its port
        accepts a connection (over HTTPS: a verified TLS handshake)."""
        wait_until_accepting(launch.host, launch.port, child, timeout, launch.tls_ca)


# ------------------------------------------------------------------- clients


@dataclass
class RequestRecord:
    """What the client believed about one request (the report's `client` of a request).

    ``new_connection`` and ``replaced_dropped`` are the client's own beliefs, read
    from its own events by its kind; None where the client cannot tell (the story
    then claims nothing the client did not say).
    """

    ref: str  # the scenario's request reference
    session: str
    method: str
    path: str
    planned_at: float  # when the scenario said to send it
    sent_at: float  # just before the client was asked to send it
    finished_at: float  # when the client returned or raised
    client: str = ""  # the client's kind
    local_port: int | None = None  # the socket the client used, when it could be seen
    status: int | None = None
    response_connection: str | None = None
    response_keep_alive: str | None = None
    error: str | None = None  # the exception the client raised, e.g. ConnectionError
    error_cause: str | None = None  # the root cause, e.g. RemoteDisconnected
    new_connection: bool | None = None  # the client opened a connection for it
    replaced_dropped: bool | None = None  # it found its pooled connection closed, and replaced it
    events: list[str] = field(default_factory=list)  # the client's own words while it ran


@dataclass
class CloseRecord:
    session: str
    at: float
    explicit: bool  # a `close` step, rather than the end of the session


class Driver:
    """Sends one session's requests for a client kind, and closes its pool; ``closes``
    are the times it closed connections as a session (a pool, a process that ended)."""

    closes: list[CloseRecord]

    def __init__(self) -> None:
        self.closes = []

    def send(self, request: Request, planned_at: float) -> RequestRecord:
        raise NotImplementedError

    def send_many(self, requests: list[Request], planned_at: float) -> list[RequestRecord]:
        """Requests that follow one another without a pause; one by one, unless the
        client sends them together (curl: one invocation)."""
        return [self.send(request, planned_at if i == 0 else time.time())
                for i, request in enumerate(requests)]

    def close(self, explicit: bool) -> None:
        """A ``close`` step (``explicit``) or the session's end: close the pool, and
        note it in ``closes``."""


class ClientKind:
    """One kind of client. Subclass it in ``client/kinds/KIND.py`` as ``KIND``."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 100
    summary: ClassVar[str] = ""
    advertises: ClassVar[str] = ""  # what it is known to do with idle connections, in a line
    options: ClassVar[dict[str, Spec]] = {}
    # Whether a `close` step means something (a pool the session can close).
    closes: ClassVar[bool] = True
    # Whether the client can tell it replaced a connection the server dropped: a kind
    # that cannot records None, and the story claims nothing for it.
    tells_replaced_dropped: ClassVar[bool] = True

    @classmethod
    def check(cls, options: Mapping[str, Any], fields: dict[str, Node], where: str,
              fail: Fail) -> None:
        """Refuse settings (or steps, in ``fields["steps"]``) that make no sense together."""

    @classmethod
    def driver(cls, session: Session, base_url: str, epoch: Callable[[float], float],
               tls: ClientTls | None = None) -> Driver:
        """What sends ``session``'s requests to ``base_url``; ``epoch`` turns the
        session's monotonic times into epoch seconds. With ``tls`` (an ``https://`` URL)
        it trusts ``tls.ca`` alone, offers ``tls.version`` if one is set, and writes
        its TLS secrets to ``tls.keylog``."""
        raise NotImplementedError

    @classmethod
    def versions(cls) -> dict[str, str]:
        """The client's libraries and tools, and their versions."""
        return {}


# ------------------------------------------------------------------ registry


def _discover(package: str, base: type) -> dict[str, Any]:
    module = importlib.import_module(package)
    found = []
    for info in pkgutil.iter_modules(module.__path__):
        if info.name.startswith("_"):
            continue
        kind = getattr(importlib.import_module(f"{package}.{info.name}"), "KIND", None)
        if not (isinstance(kind, type) and issubclass(kind, base) and kind.name):
            raise ImportError(f"{package}.{info.name} defines no KIND (a {base.__name__} "
                              "with a name)")
        found.append(kind)
    found.sort(key=lambda kind: (kind.order, kind.name))
    kinds = {kind.name: kind for kind in found}
    if len(kinds) != len(found):
        raise ImportError(f"two kinds in {package} have the same name")
    for kind in found:
        if hasattr(kind, "registered"):
            kind.registered(kinds)
    return kinds


@functools.cache
def engine_kinds() -> dict[str, type[EngineKind]]:
    """Every engine kind, by name, in their order: the modules of ``server/engines/``."""
    return _discover(ENGINE_PACKAGE, EngineKind)


@functools.cache
def client_kinds() -> dict[str, type[ClientKind]]:
    """Every client kind, by name, in their order: the modules of ``client/kinds/``."""
    return _discover(CLIENT_PACKAGE, ClientKind)


def engine_kind(name: str) -> type[EngineKind]:
    return engine_kinds()[name]


def client_kind(name: str) -> type[ClientKind]:
    return client_kinds()[name]


def default_client() -> str:
    """The client a session gets without a ``client:``: the first in order."""
    return next(iter(client_kinds()))
