"""What the proxies (nginx, HAProxy) share: an engine behind them, on the server's loopback."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kalab.apps import AppFile
from kalab.kinds import EngineKind, Fail, Launch, upstream_port
from kalab.spec import Node, Record, Scalar, Spec

if TYPE_CHECKING:
    from kalab.certs import ServerTls
    from kalab.scenario import Engine

UPSTREAM_HOST = "127.0.0.1"  # loopback only: the capture sees the client's side alone


class ProxyKind(EngineKind):
    """A proxy in front of another engine kind, which its ``behind`` option names (with
    that engine's own settings); the engine behind listens on the server's loopback at
    `upstream_port`, and ``link.upstream_to_proxy`` impairs what it sends back."""

    proxy = True
    own_options: ClassVar[dict[str, Spec]] = {}  # the proxy's own settings
    default_behind: ClassVar[str] = ""  # the kind behind it when behind is absent

    @classmethod
    def registered(cls, kinds: Mapping[str, type[EngineKind]]) -> None:
        # `behind` takes any kind that serves the app itself, with that kind's settings.
        served = {name: kind.options for name, kind in kinds.items() if not kind.proxy}
        behind = Record(f"the engine behind the proxy, on the server's loopback at port + 1, "
                        f"with its own settings (default: {cls.default_behind} with its "
                        "defaults)", {
            "engine": Scalar("string", "the kind of engine behind the proxy",
                             choices=tuple(served)),
        }, required=("engine",), switch="engine", kinds=served)
        cls.options = {**cls.own_options, "behind": behind}

    @classmethod
    def check(cls, options: Mapping[str, Any], fields: dict[str, Node], where: str,
              fail: Fail) -> None:
        if "behind" in fields:
            from kalab.kinds import engine_kind

            inner = fields["behind"].value
            given = options["behind"]
            engine_kind(given["engine"]).check(given, inner, f"{where}.behind", fail)

    @classmethod
    def behind(cls, engine: Engine) -> Engine:
        """The engine behind this one, as a model of its own (named after the proxy)."""
        from kalab.scenario import Engine

        settings = dict(engine.options.get("behind") or {"engine": cls.default_behind})
        kind = settings.pop("engine")
        return Engine(f"{engine.name}-upstream", kind, **settings)

    @classmethod
    def describe_proxy(cls, engine: Engine) -> str:
        raise NotImplementedError

    @classmethod
    def describe(cls, engine: Engine) -> str:
        return f"{cls.describe_proxy(engine)}, in front of {cls.behind(engine).describe()}"

    @classmethod
    def launch(cls, engine: Engine, host: str, port: int, upstream: int, folder: Path,
               scratch: Path, tls: ServerTls | None) -> list[Launch]:
        """The proxy's own processes (after the engine behind it is up), serving HTTPS
        with ``tls``."""
        raise NotImplementedError

    @classmethod
    def plan(cls, engine: Engine, app: str | AppFile, host: str, port: int,  # type: ignore[override]
             folder: Path, scratch: Path, tls: ServerTls | None = None) -> list[Launch]:
        from server.engines import plan

        # TLS ends at the proxy: the engine behind it speaks plain HTTP on loopback.
        behind = upstream_port(port)
        upstream = plan(cls.behind(engine), app, UPSTREAM_HOST, behind, folder, scratch)
        return [*upstream, *cls.launch(engine, host, port, behind, folder, scratch, tls)]

    @classmethod
    def proxy_version(cls) -> str:
        raise NotImplementedError

    @classmethod
    def version(cls, engine: Engine) -> str:
        behind = cls.behind(engine)
        return f"{cls.proxy_version()} in front of {behind.kind_class.version(behind)}"
