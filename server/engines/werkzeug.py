"""Werkzeug's development server, as the tutorial's ``app.run()`` starts it."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kalab.kinds import EngineKind, Launch
from kalab.spec import Scalar

if TYPE_CHECKING:
    from kalab.certs import ServerTls
    from kalab.scenario import Engine


class Werkzeug(EngineKind):
    name = "werkzeug"
    order = 10
    summary = "Werkzeug's development server, as app.run() starts it"
    advertises = ("Connection: close after every response since Werkzeug 2.1.2 (beside the "
                  "app's own keep-alive headers), and a FIN about 10 ms later")
    options = {
        "threaded": Scalar("boolean", "app.run(threaded=...): false serves one request at a "
                           "time and speaks HTTP/1.0", True),
    }
    loads_app_files = True  # server.werkzeug_engine loads either

    @classmethod
    def describe(cls, engine: Engine) -> str:
        return f"werkzeug ({'threaded' if engine.threaded else 'unthreaded'})"

    @classmethod
    def default_name(cls, options: Mapping[str, Any]) -> str:
        return cls.name

    @classmethod
    def plan(cls, engine: Engine, app: str, host: str, port: int, folder: Path,
             scratch: Path, tls: ServerTls | None = None) -> list[Launch]:
        threading = "threaded" if engine.threaded else "unthreaded"
        # app.run(ssl_context=(cert, key)) with a certificate
        certificate = [str(tls.cert), str(tls.key)] if tls is not None else []
        return [Launch([sys.executable, "-m", "server.werkzeug_engine", app, host, str(port),
                        threading, *certificate], host, port, tls_ca=tls and tls.ca)]

    @classmethod
    def version(cls, engine: Engine) -> str:
        from importlib import metadata  # only here: roles that never ask start faster

        return f"Werkzeug {metadata.version('werkzeug')} (Flask {metadata.version('flask')})"


KIND = Werkzeug
