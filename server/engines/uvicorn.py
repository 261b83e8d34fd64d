"""uvicorn serving the Flask app through asgiref's WSGI-to-ASGI adapter."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kalab.apps import WSGI_APP_VARIABLE
from kalab.kinds import EngineKind, Launch, whole_seconds

if TYPE_CHECKING:
    from kalab.certs import ServerTls
    from kalab.scenario import Engine


class Uvicorn(EngineKind):
    name = "uvicorn"
    order = 40
    summary = "uvicorn (h11) serving the WSGI app through asgiref's WsgiToAsgi"
    advertises = ("no Keep-Alive header; closes an idle connection with a FIN after "
                  "--timeout-keep-alive (default 5 s)")
    options = {
        # uvicorn's --timeout-keep-alive is a whole number of seconds
        "timeout_keep_alive": whole_seconds("uvicorn --timeout-keep-alive: seconds an idle "
                                            "connection is kept", 5),
    }
    loads_app_files = True  # server.asgi_app loads the file named in its environment

    @classmethod
    def describe(cls, engine: Engine) -> str:
        return f"uvicorn, timeout-keep-alive {engine.timeout_keep_alive}s (WSGI via asgiref)"

    @classmethod
    def plan(cls, engine: Engine, app: str, host: str, port: int, folder: Path,
             scratch: Path, tls: ServerTls | None = None) -> list[Launch]:
        # h11, not httptools: the same HTTP parser wherever the lab runs
        argv = [sys.executable, "-m", "uvicorn", "--host", host, "--port", str(port),
                "--http", "h11", "--timeout-keep-alive", str(engine.timeout_keep_alive),
                "--no-server-header"]
        if tls is not None:
            argv += ["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
        return [Launch([*argv, "server.asgi_app:app"], host, port, {WSGI_APP_VARIABLE: app},
                       tls_ca=tls and tls.ca)]

    @classmethod
    def version(cls, engine: Engine) -> str:
        from importlib import metadata  # only here: roles that never ask start faster

        return (f"uvicorn {metadata.version('uvicorn')} (h11 {metadata.version('h11')}, "
                f"asgiref {metadata.version('asgiref')})")


KIND = Uvicorn
