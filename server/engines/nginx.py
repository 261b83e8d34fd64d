"""nginx as a reverse proxy in front of another engine (gunicorn unless told)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kalab.kinds import Fail, Launch, addr, seconds
from kalab.spec import Node, Scalar
from server.engines._proxy import UPSTREAM_HOST, ProxyKind
from server.engines.gunicorn import Gunicorn

if TYPE_CHECKING:
    from kalab.certs import ServerTls
    from kalab.scenario import Engine


class Nginx(ProxyKind):
    name = "nginx"
    order = 80
    summary = "nginx in front of another engine (gunicorn by default)"
    advertises = ("Keep-Alive: timeout=H only when keepalive_header is given; closes an "
                  "idle client connection after keepalive_timeout (default 75 s)")
    logs = ("nginx-error.log",)
    default_behind = Gunicorn.name
    own_options = {
        "keepalive_timeout": seconds("nginx keepalive_timeout: seconds an idle client "
                                     "connection is kept", 75.0),
        "keepalive_header": seconds("nginx keepalive_timeout's second value: the "
                                    "Keep-Alive: timeout=N it advertises (default none)"),
        "upstream_keepalive": Scalar("integer", "nginx upstream keepalive: idle connections "
                                     "to the engine behind kept in a pool (0: none, HTTP/1.0 "
                                     "upstream)", 0, 0, 1024),
        "upstream_keepalive_timeout": seconds("nginx upstream keepalive_timeout: seconds "
                                              "a pooled upstream connection is kept", 60.0),
        # The lab's first nginx always ran gunicorn behind it, with gunicorn's settings
        # beside its own; scenarios written so still mean that (or say behind:).
        **Gunicorn.options,
    }

    @classmethod
    def check(cls, options: Mapping[str, Any], fields: dict[str, Node], where: str,
              fail: Fail) -> None:
        flat = [key for key in Gunicorn.options if key in fields]
        if "behind" in fields and flat:
            raise fail(fields[flat[0]], f"{where}.{flat[0]}", "with behind:, give the "
                       "settings of the engine behind the proxy there")
        if "behind" not in fields:
            Gunicorn.check(options, fields, where, fail)
        super().check(options, fields, where, fail)

    @classmethod
    def behind(cls, engine: Engine) -> Engine:
        if engine.options.get("behind") is None:
            from kalab.scenario import Engine

            return Engine(f"{engine.name}-upstream", Gunicorn.name,
                          **{key: engine.options[key] for key in Gunicorn.options})
        return super().behind(engine)

    @classmethod
    def describe_proxy(cls, engine: Engine) -> str:
        pool = (f"upstream pool {engine.upstream_keepalive} for "
                f"{engine.upstream_keepalive_timeout:g}s" if engine.upstream_keepalive
                else "no upstream pool")
        return f"nginx keepalive_timeout {engine.keepalive_timeout:g}s, {pool}"

    @classmethod
    def launch(cls, engine: Engine, host: str, port: int, upstream: int, folder: Path,
               scratch: Path, tls: ServerTls | None) -> list[Launch]:
        conf = folder / "nginx.conf"
        conf.write_text(nginx_conf(engine, host, port, upstream, folder, scratch, tls),
                        encoding="utf-8")
        return [Launch(["nginx", "-p", str(folder), "-c", str(conf), "-g", "daemon off;"],
                       host, port, tls_ca=tls and tls.ca)]

    @classmethod
    def proxy_version(cls) -> str:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        return out.split(":", 1)[-1].strip()


def nginx_conf(engine: Engine, host: str, port: int, upstream_port: int, folder: Path,
               scratch: Path, tls: ServerTls | None = None) -> str:
    """A reverse proxy with the scenario's keep-alive settings, everything in ``folder``;
    with ``tls``, HTTPS on the client's side (TLS 1.2 and 1.3: the client chooses)."""
    ssl = (f"""
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};
        ssl_protocols TLSv1.2 TLSv1.3;""" if tls is not None else "")
    header = f" {engine.keepalive_header:g}s" if engine.keepalive_header is not None else ""
    pool = (f"keepalive {engine.upstream_keepalive};\n"
            f"        keepalive_timeout {engine.upstream_keepalive_timeout:g}s;"
            if engine.upstream_keepalive else "")
    # Without a pool nginx speaks HTTP/1.0 upstream and closes after each request.
    upstream_http = ("proxy_http_version 1.1;\n            proxy_set_header Connection \"\";"
                     if engine.upstream_keepalive else "")
    user = "user root;" if os.geteuid() == 0 else ""
    # every buffer in the private scratch folder (nginx makes them 0700)
    temp = "\n    ".join(f"{directive} {scratch}/{directive.removesuffix('_temp_path')};"
                         for directive in ("client_body_temp_path", "proxy_temp_path",
                                           "fastcgi_temp_path", "uwsgi_temp_path",
                                           "scgi_temp_path"))
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
        server {UPSTREAM_HOST}:{upstream_port};
        {pool}
    }}
    server {{
        listen {addr(host, port)}{" ssl" if tls is not None else ""};{ssl}
        location / {{
            proxy_pass http://app;
            {upstream_http}
        }}
    }}
}}
"""


KIND = Nginx
