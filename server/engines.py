"""Each engine as a command line, and its version, for the server role."""

from __future__ import annotations

import sys
from importlib import metadata

from kalab.scenario import Engine


def command(engine: Engine, app: str, host: str, port: int) -> list[str]:
    """The argv that serves ``app`` on host:port with this engine."""
    if engine.kind == "werkzeug":
        threading = "threaded" if engine.threaded else "unthreaded"
        return [sys.executable, "-m", "server.werkzeug_engine", app, host, str(port), threading]
    argv = [sys.executable, "-m", "gunicorn", "--bind", _bind(host, port), "--workers", "1",
            "--worker-class", engine.worker, "--access-logfile", "-", "--error-logfile", "-",
            "--log-level", "info"]
    if engine.worker == "gthread":
        argv += ["--threads", str(engine.threads), "--keep-alive", f"{engine.keep_alive:g}"]
    if _gunicorn_has_setting("control_socket_disable"):
        argv.append("--no-control-socket")  # gunicorn >= 24 opens one under $HOME otherwise
    return [*argv, app]


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _gunicorn_has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(setting.name == name for setting in KNOWN_SETTINGS)


def version(engine: Engine) -> str:
    if engine.kind == "werkzeug":
        return f"Werkzeug {metadata.version('werkzeug')} (Flask {metadata.version('flask')})"
    return f"gunicorn {metadata.version('gunicorn')}"
