"""gunicorn, with its sync or gthread worker."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kalab.kinds import EngineKind, Fail, Launch, addr, seconds
from kalab.spec import Node, Scalar

if TYPE_CHECKING:
    from kalab.certs import ServerTls
    from kalab.scenario import Engine

WORKERS = ("sync", "gthread")


class Gunicorn(EngineKind):
    name = "gunicorn"
    order = 20
    summary = "gunicorn, one worker: sync (Connection: close) or gthread (keep-alive)"
    advertises = ("no Keep-Alive header (it drops the app's hop-by-hop headers); gthread "
                  "closes an idle connection with a FIN after --keep-alive (default 2 s)")
    options = {
        "worker": Scalar("string", "gunicorn's worker class: sync answers Connection: close, "
                         "gthread keeps connections alive", "gthread", choices=WORKERS),
        "keep_alive": seconds("gunicorn --keep-alive: seconds an idle connection is kept "
                              "(gthread only)", 2.0),
        "threads": Scalar("integer", "gunicorn --threads (gthread only)", 4, 1, 1024),
        "max_requests": Scalar("integer", "gunicorn --max-requests: restart the worker after "
                               "N requests (0: never)", 0, 0, 1024),
    }

    @classmethod
    def check(cls, options: Mapping[str, Any], fields: dict[str, Node], where: str,
              fail: Fail) -> None:
        if options.get("worker") == "sync":
            for key in ("keep_alive", "threads"):
                if key in fields:
                    raise fail(fields[key], f"{where}.{key}", "gunicorn's sync worker has no "
                               "keep-alive or threads; use gthread")

    @classmethod
    def default_name(cls, options: Mapping[str, Any]) -> str:
        return f"{cls.name}-{options['worker']}"

    @classmethod
    def describe(cls, engine: Engine) -> str:
        words = (f"gunicorn gthread, keep-alive {engine.keep_alive:g}s"
                 if engine.worker == "gthread" else "gunicorn sync")
        if engine.max_requests:
            words += f", max-requests {engine.max_requests}"
        return words

    @classmethod
    def plan(cls, engine: Engine, app: str, host: str, port: int, folder: Path,
             scratch: Path, tls: ServerTls | None = None) -> list[Launch]:
        argv = [sys.executable, "-m", "gunicorn", "--bind", addr(host, port), "--workers", "1",
                "--worker-class", engine.worker, "--access-logfile", "-", "--error-logfile",
                "-", "--log-level", "info"]
        if engine.worker == "gthread":
            argv += ["--threads", str(engine.threads), "--keep-alive", f"{engine.keep_alive:g}"]
        if engine.max_requests:
            argv += ["--max-requests", str(engine.max_requests)]
        if _has_setting("control_socket_disable"):
            argv.append("--no-control-socket")  # gunicorn >= 24 opens one under $HOME otherwise
        if tls is not None:
            argv += ["--certfile", str(tls.cert), "--keyfile", str(tls.key)]
        return [Launch([*argv, app], host, port, tls_ca=tls and tls.ca)]

    @classmethod
    def version(cls, engine: Engine) -> str:
        from importlib import metadata  # only here: roles that never ask start faster

        return f"gunicorn {metadata.version('gunicorn')}"


def _has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(setting.name == name for setting in KNOWN_SETTINGS)


KIND = Gunicorn
