"""Apache httpd with mod_wsgi, in the foreground with the lab's own configuration."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from kalab.apps import WSGI_APP_VARIABLE
from kalab.kinds import EngineKind, Launch, whole_seconds
from kalab.spec import Scalar

if TYPE_CHECKING:
    from kalab.certs import ServerTls
    from kalab.scenario import Engine

MODULES = Path("/usr/lib/apache2/modules")  # Debian's
PROJECT = Path(__file__).resolve().parents[2]  # mod_wsgi's Python imports kalab and server here
SCRIPT = PROJECT / "server" / "apache_wsgi.py"
# Apache will not serve as root: started as root, its processes become this user.
UNPRIVILEGED = "nobody"


class Apache(EngineKind):
    name = "apache"
    order = 60
    summary = "Apache httpd 2.4 (event MPM) with mod_wsgi, embedded mode"
    advertises = ("Keep-Alive: timeout=T, max=N with N counting down the requests the "
                  "connection may still carry; Connection: close on the last")
    options = {
        "keepalive": Scalar("boolean", "Apache KeepAlive: false closes after every "
                             "response", True),
        "keep_alive_timeout": whole_seconds("Apache KeepAliveTimeout: seconds an idle "
                                            "connection is kept", 5),
        "max_keep_alive_requests": Scalar("integer", "Apache MaxKeepAliveRequests: requests "
                                          "a connection carries after its first (0: no "
                                          "limit)", 100, 0, 100_000),
    }
    logs = ("apache-error.log",)
    loads_app_files = True  # the script loads the app named in its environment

    @classmethod
    def describe(cls, engine: Engine) -> str:
        if not engine.keepalive:
            return "apache mod_wsgi, KeepAlive Off"
        return (f"apache mod_wsgi, KeepAliveTimeout {engine.keep_alive_timeout}s, "
                f"MaxKeepAliveRequests {engine.max_keep_alive_requests}")

    @classmethod
    def plan(cls, engine: Engine, app: str, host: str, port: int, folder: Path,
             scratch: Path, tls: ServerTls | None = None) -> list[Launch]:
        conf = folder / "apache.conf"
        conf.write_text(apache_conf(engine, host, port, folder, scratch, tls),
                        encoding="utf-8")
        # -X would serve from one process without the MPM's children: not as people run it
        return [Launch(["apache2", "-f", str(conf), "-DFOREGROUND"], host, port,
                       {WSGI_APP_VARIABLE: app}, tls_ca=tls and tls.ca)]

    @classmethod
    def version(cls, engine: Engine) -> str:
        out = subprocess.run(["apache2", "-v"], capture_output=True, text=True).stdout
        server = out.splitlines()[0].split(":", 1)[-1].strip() if out else "Apache"
        wsgi = sorted(p.name for p in MODULES.glob("mod_wsgi.so-*"))
        return f"{server} with mod_wsgi (Python {wsgi[-1].split('-')[-1] if wsgi else '?'})"


def apache_conf(engine: Engine, host: str, port: int, folder: Path, scratch: Path,
                tls: ServerTls | None = None) -> str:
    """Apache on host:port alone, its logs in ``folder``, its runtime files in ``scratch``;
    with ``tls``, mod_ssl serves HTTPS (Apache reads the key as root, before it becomes
    UNPRIVILEGED)."""
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    ssl = f"""LoadModule ssl_module {MODULES}/mod_ssl.so
SSLEngine on
SSLCertificateFile {tls.cert}
SSLCertificateKeyFile {tls.key}
SSLProtocol -all +TLSv1.2 +TLSv1.3
LoadModule socache_shmcb_module {MODULES}/mod_socache_shmcb.so
SSLSessionCache shmcb:{scratch}/ssl_scache(512000)
""" if tls is not None else ""
    # with TLS, a name the certificate holds (`kalab.certs.server_names`): else mod_ssl warns
    name = "localhost" if tls is not None else "kalab"
    user = f"User {UNPRIVILEGED}\nGroup nogroup" if os.geteuid() == 0 else ""
    return f"""# kalab's own Apache: nothing of Debian's /etc/apache2 is read.
ServerRoot {folder}
ServerName {name}
DefaultRuntimeDir {scratch}
PidFile {scratch}/apache.pid
Listen {listen}
{user}
ErrorLog {folder}/apache-error.log
LogLevel warn
LogFormat "%h %t \\"%r\\" %>s %b conn=%{{c}}L keepalive=%k" kalab
CustomLog {folder}/apache-access.log kalab
LoadModule mpm_event_module {MODULES}/mod_mpm_event.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
LoadModule wsgi_module {MODULES}/mod_wsgi.so
StartServers 1
ServerLimit 1
ThreadLimit 8
ThreadsPerChild 8
MaxRequestWorkers 8
MinSpareThreads 1
MaxSpareThreads 8
Timeout 60
KeepAlive {"On" if engine.keepalive else "Off"}
KeepAliveTimeout {engine.keep_alive_timeout}
MaxKeepAliveRequests {engine.max_keep_alive_requests}
{ssl}WSGIPythonPath {PROJECT}
# Finalising the interpreter at stop hangs the child until Apache kills it (10 s).
WSGIDestroyInterpreter Off
WSGIScriptAlias / {SCRIPT}
<Directory {SCRIPT.parent}>
    Require all granted
</Directory>
"""


KIND = Apache
