"""uWSGI speaking HTTP itself (--http11-socket), with Debian's python3 plugin."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from kalab.kinds import EngineKind, Launch, addr, whole_seconds
from kalab.spec import Scalar

if TYPE_CHECKING:
    from kalab.certs import ServerTls
    from kalab.scenario import Engine

PROJECT = Path(__file__).resolve().parents[2]  # the plugin's Python imports kalab and server here


class Uwsgi(EngineKind):
    name = "uwsgi"
    order = 70
    summary = "uWSGI speaking HTTP/1.1 itself (--http11-socket), Debian's python3 plugin"
    advertises = ("passes the app's own Connection and Keep-Alive headers through; an idle "
                  "kept-alive connection waits socket_timeout (default 4 s)")
    options = {
        "http11": Scalar("boolean", "true: --http11-socket (keeps connections alive); false: "
                         "--http-socket (closes after each response)", True),
        "socket_timeout": whole_seconds("uWSGI --socket-timeout: seconds a worker waits on "
                                        "a quiet socket, an idle kept-alive one too", 4),
        "threads": Scalar("integer", "uWSGI --threads in its one worker process (an idle "
                          "kept-alive connection holds one)", 4, 1, 1024),
    }

    # --http11-socket has no TLS (uWSGI's HTTPS is its HTTP router's, another process)
    serves_tls = False

    @classmethod
    def describe(cls, engine: Engine) -> str:
        socket = "--http11-socket" if engine.http11 else "--http-socket"
        return f"uwsgi {socket}, socket-timeout {engine.socket_timeout}s"

    @classmethod
    def plan(cls, engine: Engine, app: str, host: str, port: int, folder: Path,
             scratch: Path, tls: ServerTls | None = None) -> list[Launch]:
        socket = "--http11-socket" if engine.http11 else "--http-socket"
        return [Launch(["uwsgi", "--plugin", "python3", socket, addr(host, port),
                        "--master", "--processes", "1", "--threads", str(engine.threads),
                        "--socket-timeout", str(engine.socket_timeout),
                        "--pythonpath", str(PROJECT), "--module", app, "--need-app",
                        "--die-on-term", "--disable-logging"], host, port)]

    @classmethod
    def version(cls, engine: Engine) -> str:
        out = subprocess.run(["uwsgi", "--version"], capture_output=True, text=True).stdout
        return f"uWSGI {out.strip() or '?'} (python3 plugin)"


KIND = Uwsgi
