"""waitress, the pure-Python WSGI server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kalab.kinds import EngineKind, Launch, addr, whole_seconds
from kalab.spec import Scalar

if TYPE_CHECKING:
    from kalab.certs import ServerTls
    from kalab.scenario import Engine


class Waitress(EngineKind):
    name = "waitress"
    order = 30
    summary = "waitress: idle connections closed at channel_timeout, looked for every " \
              "cleanup_interval"
    advertises = ("no Keep-Alive header; a 500 to an app that sets Connection or Keep-Alive "
                  "(PEP 3333); an idle close up to cleanup_interval late")
    options = {
        # waitress takes whole seconds
        "channel_timeout": whole_seconds("waitress --channel-timeout: seconds an idle "
                                         "connection is kept", 120),
        "cleanup_interval": whole_seconds("waitress --cleanup-interval: how often, in "
                                          "seconds, idle connections are looked for", 30),
        "threads": Scalar("integer", "waitress --threads", 4, 1, 1024),
    }

    serves_tls = False  # waitress speaks plain HTTP only (TLS ends in a proxy in front of it)

    @classmethod
    def describe(cls, engine: Engine) -> str:
        return (f"waitress, channel_timeout {engine.channel_timeout:g}s checked every "
                f"{engine.cleanup_interval:g}s")

    @classmethod
    def plan(cls, engine: Engine, app: str, host: str, port: int, folder: Path,
             scratch: Path, tls: ServerTls | None = None) -> list[Launch]:
        return [Launch([sys.executable, "-m", "waitress", f"--listen={addr(host, port)}",
                        f"--threads={engine.threads}",
                        f"--channel-timeout={int(engine.channel_timeout)}",
                        f"--cleanup-interval={int(engine.cleanup_interval)}", app], host, port)]

    @classmethod
    def version(cls, engine: Engine) -> str:
        from importlib import metadata  # only here: roles that never ask start faster

        return f"waitress {metadata.version('waitress')}"


KIND = Waitress
