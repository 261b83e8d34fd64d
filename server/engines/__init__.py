"""The engine kinds, one module each (`kalab.kinds.EngineKind`), and serving with any of them.

Every module here but those starting with ``_`` is a kind, found by
`kalab.kinds.engine_kinds`: ``werkzeug.py`` defines ``KIND = Werkzeug``, and
so on. This package's own functions only dispatch to the engine's kind.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from kalab.apps import APP_FILE_VARIABLE, FILE_SHIM, AppFile
from kalab.kinds import Launch

if TYPE_CHECKING:  # the scenario's module finds the kinds here: no import of it at load
    from kalab.certs import ServerTls
    from kalab.scenario import Engine


def plan(engine: Engine, app: str | AppFile, host: str, port: int, folder: Path,
         scratch: Path, tls: ServerTls | None = None) -> list[Launch]:
    """The processes that serve ``app`` on host:port with this engine, in start order.

    ``folder`` is the engine's shared folder (configuration, logs); ``scratch``
    a private one that lives as long as the engine (nginx's 0700 buffers). A
    user's app file reaches engines that import by module name through
    `server.user_app`, named in their environment; a proxy passes the app on to
    the engine behind it. With ``tls`` it serves HTTPS (a proxy on its front only).
    """
    kind = engine.kind_class
    if kind.proxy:
        return kind.plan(engine, app, host, port, folder, scratch, tls)  # type: ignore[arg-type]
    if isinstance(app, AppFile) and not kind.loads_app_files:
        return [replace(launch, env={**launch.env, APP_FILE_VARIABLE: str(app)})
                for launch in kind.plan(engine, FILE_SHIM, host, port, folder, scratch, tls)]
    return kind.plan(engine, str(app), host, port, folder, scratch, tls)


def version(engine: Engine) -> str:
    """The engine's version, as it reports it (a proxy's with the engine behind it)."""
    return engine.kind_class.version(engine)
