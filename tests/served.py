"""A real engine in a network namespace of the test's own, for what a lab did not start.

`served` starts one engine of the project's (gunicorn, Werkzeug, nginx...) as the lab's
server role would (`server.engines.plan`), in a server namespace joined by a veth to a
client namespace; it yields the client namespace and the engine's URL. Tests then run
`kalab probe` or `kalab run --target` in the client namespace: nothing but the tests' own
namespaces is ever addressed. The namespaces are not named like the lab's (`kalab-`), so
`kalab clean` from another suite never takes them; everything goes on the way out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import KALAB, ROOT

from kalab.certs import make_server_tls
from kalab.handoff import TLS_CA
from kalab.scenario import parse
from server.__main__ import stop_engine
from server.engines import plan

PORT = 5000


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def served(name: str, engine_yaml: str, number: int, prefix: str = "kprobe",
           path: str = "/keep-alive", tls_ca: Path | None = None) -> Iterator[tuple[str, str]]:
    """The engine ``engine_yaml`` (a scenario's engine, as YAML) in a server namespace of
    its own, 10.215.NUMBER.1, namespaces and veth ends named after ``prefix`` and
    ``number``; (client namespace, URL of ``path``). With ``tls_ca``, over HTTPS with a
    certificate from a CA of its own (`kalab.certs`), that CA written there."""
    server_ns, client_ns = f"{prefix}{number}-{os.getpid()}-s", \
        f"{prefix}{number}-{os.getpid()}-c"
    veth = f"{prefix[:5]}{number}"
    address = f"10.215.{number}.1"
    engine = parse("sessions: [{steps: [get: /]}]\nengines:\n  - " + engine_yaml + "\n",
                   f"{name}.yaml").engines[0]
    children: list[subprocess.Popen] = []
    scratch = tempfile.TemporaryDirectory(prefix="kalab-served-")
    try:
        for ns in (server_ns, client_ns):
            ip("netns", "add", ns)
        ip("link", "add", f"{veth}s", "netns", server_ns, "type", "veth", "peer", "name",
           f"{veth}c", "netns", client_ns)
        for ns, end, addr in ((server_ns, f"{veth}s", address),
                              (client_ns, f"{veth}c", f"10.215.{number}.2")):
            ip("-n", ns, "addr", "add", f"{addr}/30", "dev", end)
            ip("-n", ns, "link", "set", end, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        folder = Path(scratch.name)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        tls = None
        if tls_ca is not None:
            tls = make_server_tls(folder, folder, address, [])
            shutil.copyfile(folder / TLS_CA, tls_ca)
        for launch in plan(engine, "server.app:app", address, PORT, folder, folder, tls):
            child = subprocess.Popen(["ip", "netns", "exec", server_ns, *launch.argv],
                                     cwd=ROOT, env={**env, **launch.env},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            children.append(child)
            ready = ["ip", "netns", "exec", server_ns, *KALAB[:1], "-c",
                     "import socket,sys,time\n"
                     "for _ in range(200):\n"
                     "    try: socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"
                     ".close(); break\n"
                     "    except OSError: time.sleep(0.05)\n", launch.host, str(launch.port)]
            subprocess.run(ready, check=True, timeout=30)
        yield client_ns, f"{'https' if tls else 'http'}://{address}:{PORT}{path}"
    finally:
        for child in reversed(children):
            stop_engine(child)
        for ns in (server_ns, client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        scratch.cleanup()
