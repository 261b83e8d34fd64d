"""HAProxy as a load balancer in front of another engine (gunicorn unless told)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from kalab.kinds import Launch, addr, seconds
from kalab.spec import Scalar
from server.engines._proxy import UPSTREAM_HOST, ProxyKind
from server.engines.gunicorn import Gunicorn

if TYPE_CHECKING:
    from kalab.certs import ServerTls
    from kalab.scenario import Engine

REUSE = ("never", "safe", "aggressive", "always")


class Haproxy(ProxyKind):
    name = "haproxy"
    order = 90
    summary = "HAProxy (mode http) in front of another engine (gunicorn by default)"
    advertises = ("no Keep-Alive header of its own; closes an idle client connection after "
                  "timeout http-keep-alive, and keeps idle upstream connections for reuse")
    logs = ("server.log",)  # HAProxy logs to its standard output, which is server.log
    default_behind = Gunicorn.name
    own_options = {
        "timeout_client": seconds("HAProxy timeout client: seconds of client inactivity "
                                  "(in a request or a response) before it gives up", 50.0,
                                  minimum=0.001),
        "timeout_server": seconds("HAProxy timeout server: seconds of upstream inactivity "
                                  "while it waits for a response", 50.0, minimum=0.001),
        "timeout_http_keep_alive": seconds("HAProxy timeout http-keep-alive: seconds an idle "
                                           "client connection is kept (absent: timeout "
                                           "http-request, else timeout client)",
                                           minimum=0.001),
        "http_reuse": Scalar("string", "HAProxy http-reuse: whether idle upstream connections "
                             "serve later requests (safe: a client's first request never "
                             "goes on one another client left)", "safe", choices=REUSE),
        "pool_purge_delay": seconds("HAProxy pool-purge-delay on the upstream server: how "
                                    "often idle upstream connections are closed (half of "
                                    "them each time)", 5.0, minimum=0.001),
    }

    @classmethod
    def describe_proxy(cls, engine: Engine) -> str:
        keep = (f"http-keep-alive {engine.timeout_http_keep_alive:g}s"
                if engine.timeout_http_keep_alive is not None else "no http-keep-alive")
        return (f"haproxy {keep}, client {engine.timeout_client:g}s, server "
                f"{engine.timeout_server:g}s, http-reuse {engine.http_reuse}, pool-purge-delay "
                f"{engine.pool_purge_delay:g}s")

    @classmethod
    def launch(cls, engine: Engine, host: str, port: int, upstream: int, folder: Path,
               scratch: Path, tls: ServerTls | None) -> list[Launch]:
        conf = folder / "haproxy.cfg"
        conf.write_text(haproxy_conf(engine, host, port, upstream, tls), encoding="utf-8")
        # -db: in the foreground, no daemon; its log goes to standard output
        return [Launch(["haproxy", "-f", str(conf), "-db"], host, port,
                       tls_ca=tls and tls.ca)]

    @classmethod
    def proxy_version(cls) -> str:
        out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
        words = out.split()
        return f"HAProxy {words[2]}" if len(words) > 2 else "HAProxy"


def _ms(value: float) -> str:
    return f"{round(value * 1000)}ms"


def haproxy_conf(engine: Engine, host: str, port: int, upstream: int,
                 tls: ServerTls | None = None) -> str:
    """One frontend on host:port, one backend: the engine behind, on loopback; with
    ``tls``, the frontend serves HTTPS (its certificate and key in one file)."""
    ssl = f" ssl crt {tls.bundle}" if tls is not None else ""
    keep = (f"    timeout http-keep-alive {_ms(engine.timeout_http_keep_alive)}\n"
            if engine.timeout_http_keep_alive is not None else "")
    return f"""# kalab's own HAProxy: one frontend, one backend, logs to standard output.
global
    log stdout format raw local0 info
    maxconn 256

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client {_ms(engine.timeout_client)}
    timeout server {_ms(engine.timeout_server)}
{keep}    http-reuse {engine.http_reuse}

frontend lab
    bind {addr(host, port)}{ssl}
    default_backend app

backend app
    server app {UPSTREAM_HOST}:{upstream} pool-purge-delay {_ms(engine.pool_purge_delay)}
"""


KIND = Haproxy
