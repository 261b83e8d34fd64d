"""Each engine as the processes that serve it, and its version, for the server role."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

from kalab.apps import APP_FILE_VARIABLE, FILE_SHIM, AppFile
from kalab.scenario import Engine, upstream_port


@dataclass(frozen=True)
class Launch:
    """One process of an engine, and the address it must accept on before the next starts."""

    argv: list[str]
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict)  # beside the role's own environment


def plan(engine: Engine, app: str | AppFile, host: str, port: int, folder: Path,
         scratch: Path) -> list[Launch]:
    """The processes that serve ``app`` on host:port with this engine, in start order.

    ``folder`` is the engine's shared folder (configuration, logs); ``scratch``
    a private one that lives as long as the engine (nginx's 0700 buffers). A
    user's app file reaches engines that import by module name through
    `server.user_app`, named in their environment.
    """
    if isinstance(app, AppFile) and engine.kind != "werkzeug":
        return [replace(launch, env={APP_FILE_VARIABLE: str(app)})
                for launch in _plan(engine, FILE_SHIM, host, port, folder, scratch)]
    return _plan(engine, str(app), host, port, folder, scratch)


def _plan(engine: Engine, app: str, host: str, port: int, folder: Path,
          scratch: Path) -> list[Launch]:
    if engine.kind == "werkzeug":
        threading = "threaded" if engine.threaded else "unthreaded"
        return [Launch([sys.executable, "-m", "server.werkzeug_engine", app, host, str(port),
                        threading], host, port)]
    if engine.kind == "waitress":
        return [Launch([sys.executable, "-m", "waitress", f"--listen={_addr(host, port)}",
                        f"--threads={engine.threads}",
                        f"--channel-timeout={int(engine.channel_timeout)}",
                        f"--cleanup-interval={int(engine.cleanup_interval)}", app], host, port)]
    if engine.kind == "nginx":
        # gunicorn behind, on loopback only: the capture sees the client's side.
        behind = upstream_port(port)
        upstream = Launch(_gunicorn(engine, app, "127.0.0.1", behind), "127.0.0.1", behind)
        conf = folder / "nginx.conf"
        conf.write_text(nginx_conf(engine, host, port, behind, folder, scratch),
                        encoding="utf-8")
        return [upstream, Launch(["nginx", "-p", str(folder), "-c", str(conf), "-g",
                                  "daemon off;"], host, port)]
    return [Launch(_gunicorn(engine, app, host, port), host, port)]


def _gunicorn(engine: Engine, app: str, host: str, port: int) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "--bind", _addr(host, port), "--workers", "1",
            "--worker-class", engine.worker, "--access-logfile", "-", "--error-logfile", "-",
            "--log-level", "info"]
    if engine.worker == "gthread":
        argv += ["--threads", str(engine.threads), "--keep-alive", f"{engine.keep_alive:g}"]
    if engine.max_requests:
        argv += ["--max-requests", str(engine.max_requests)]
    if _gunicorn_has_setting("control_socket_disable"):
        argv.append("--no-control-socket")  # gunicorn >= 24 opens one under $HOME otherwise
    return [*argv, app]


def nginx_conf(engine: Engine, host: str, port: int, upstream_port: int, folder: Path,
               scratch: Path) -> str:
    """A reverse proxy with the scenario's keep-alive settings, everything in ``folder``."""
    header = f" {engine.keepalive_header:g}s" if engine.keepalive_header is not None else ""
    pool = (f"keepalive {engine.upstream_keepalive};\n"
            f"        keepalive_timeout {engine.upstream_keepalive_timeout:g}s;"
            if engine.upstream_keepalive else "")
    # Without a pool nginx speaks HTTP/1.0 upstream and closes after each request.
    upstream_http = ("proxy_http_version 1.1;\n            proxy_set_header Connection \"\";"
                     if engine.upstream_keepalive else "")
    user = "user root;" if os.geteuid() == 0 else ""
    temp = "\n    ".join(f"{kind}_temp_path {scratch}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}
worker_processes 1;
error_log {folder}/nginx-error.log info;
pid {folder}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {folder}/nginx-access.log;
    {temp}
    keepalive_timeout {engine.keepalive_timeout:g}s{header};
    upstream app {{
        server 127.0.0.1:{upstream_port};
        {pool}
    }}
    server {{
        listen {_addr(host, port)};
        location / {{
            proxy_pass http://app;
            {upstream_http}
        }}
    }}
}}
"""


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _gunicorn_has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(setting.name == name for setting in KNOWN_SETTINGS)


def version(engine: Engine) -> str:
    if engine.kind == "werkzeug":
        return f"Werkzeug {metadata.version('werkzeug')} (Flask {metadata.version('flask')})"
    if engine.kind == "waitress":
        return f"waitress {metadata.version('waitress')}"
    gunicorn = f"gunicorn {metadata.version('gunicorn')}"
    if engine.kind == "nginx":
        import subprocess

        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        return f"{out.split(':', 1)[-1].strip()} in front of {gunicorn}"
    return gunicorn
