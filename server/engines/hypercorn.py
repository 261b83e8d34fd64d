"""Hypercorn serving the Flask app through asgiref's WSGI-to-ASGI adapter."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kalab.apps import WSGI_APP_VARIABLE
from kalab.kinds import EngineKind, Launch, addr, whole_seconds

if TYPE_CHECKING:
    from kalab.certs import ServerTls
    from kalab.scenario import Engine


class Hypercorn(EngineKind):
    name = "hypercorn"
    order = 50
    summary = "Hypercorn serving the WSGI app through asgiref's WsgiToAsgi"
    advertises = ("no Keep-Alive header; closes an idle connection after keep_alive_timeout "
                  "(default 5 s)")
    options = {
        # hypercorn's --keep-alive takes whole seconds
        "keep_alive_timeout": whole_seconds("Hypercorn keep_alive_timeout (--keep-alive): "
                                            "seconds an idle connection is kept", 5),
    }
    loads_app_files = True  # server.asgi_app loads the file named in its environment

    @classmethod
    def describe(cls, engine: Engine) -> str:
        return f"hypercorn, keep_alive_timeout {engine.keep_alive_timeout}s (WSGI via asgiref)"

    @classmethod
    def plan(cls, engine: Engine, app: str, host: str, port: int, folder: Path,
             scratch: Path, tls: ServerTls | None = None) -> list[Launch]:
        argv = [sys.executable, "-m", "hypercorn", "--bind", addr(host, port), "--workers",
                "1", "--keep-alive", str(engine.keep_alive_timeout), "--access-logfile", "-",
                "--error-logfile", "-"]
        if tls is not None:
            argv += ["--certfile", str(tls.cert), "--keyfile", str(tls.key)]
        return [Launch([*argv, "server.asgi_app:app"], host, port, {WSGI_APP_VARIABLE: app},
                       tls_ca=tls and tls.ca)]

    @classmethod
    def version(cls, engine: Engine) -> str:
        from importlib import metadata  # only here: roles that never ask start faster

        return (f"Hypercorn {metadata.version('hypercorn')} (h11 {metadata.version('h11')}, "
                f"asgiref {metadata.version('asgiref')})")


KIND = Hypercorn
