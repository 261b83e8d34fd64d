"""The user-space delay line on a real veth between two real namespaces.

A TCP connect from one namespace to a listener in the other takes one round
trip; with the delay line holding what leaves (or enters) the first, that
round trip grows by the delay and nothing else. Loss drops every packet at
100 %. Closing the line removes its iptables rule and lets nothing hang.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, requires_lab

from kalab.runtime.link import VethLink
from kalab.runtime.netns import remove_namespace

pytestmark = requires_lab

# Runs inside the near namespace: connect a few times through the delay line,
# print the round trips and what the line counted.
PROBE = textwrap.dedent("""
    import json, socket, subprocess, sys, time
    from kalab.impairment import delay
    from kalab.scenario import LinkImpairment
    spec, inbound = json.loads(sys.argv[1]), sys.argv[2] == "in"
    applied = delay("client_to_server", LinkImpairment(**spec), "dlnear", inbound=inbound)
    trips = []
    for _ in range(3):
        started = time.monotonic()
        try:
            socket.create_connection(("10.214.0.2", 7777), timeout=1.5).close()
            trips.append(time.monotonic() - started)
        except OSError:
            trips.append(None)
    counted = applied.describe()
    applied.close()
    rules = subprocess.run(["iptables", "-t", "mangle", "-S"], capture_output=True,
                           text=True).stdout
    print(json.dumps({"trips": trips, "counted": counted, "rules": rules}))
""")


@pytest.fixture
def two_namespaces():
    near, far = f"kalab-dl-near-{os.getpid()}", f"kalab-dl-far-{os.getpid()}"
    listener = None
    try:
        for namespace in (near, far):
            subprocess.run(["ip", "netns", "add", namespace], check=True)
        VethLink("dlnear", near, "10.214.0.1", "dlfar", far, "10.214.0.2").create()
        listener = subprocess.Popen(
            ["ip", "netns", "exec", far, sys.executable, "-c",
             "import socket, time\n"
             "s = socket.create_server(('10.214.0.2', 7777), backlog=16)\n"
             "time.sleep(30)\n"])
        yield near
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        remove_namespace(near)
        remove_namespace(far)


def probe(namespace: str, spec: dict, way: str = "out") -> dict:
    done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", PROBE,
                           json.dumps(spec), way], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("way", ["out", "in"])
def test_each_round_trip_grows_by_the_delay(two_namespaces, way):
    result = probe(two_namespaces, {"delay_ms": 150}, way)
    assert all(t is not None for t in result["trips"]), result
    # one SYN (out) or one SYN-ACK (in) held per connect; a loaded machine adds, never removes
    assert all(0.145 <= t < 0.6 for t in result["trips"]), result
    held = int(re.search(r"(\d+) packets delayed", result["counted"])[1])
    assert held >= 3  # at least the one held per connect
    assert "NFQUEUE" not in result["rules"]  # closed: the rule is gone


def test_full_loss_drops_everything(two_namespaces):
    result = probe(two_namespaces, {"loss_percent": 100})
    assert result["trips"] == [None, None, None]
    assert "0 packets delayed" in result["counted"] and "0 dropped as loss" not in \
        result["counted"]
    assert "NFQUEUE" not in result["rules"]


def test_without_the_delay_line_a_round_trip_is_quick(two_namespaces):
    # the control: the same connects, nothing applied
    result = probe(two_namespaces, {})
    assert all(t is not None and t < 0.1 for t in result["trips"]), result


def test_jitter_spreads_the_delay_around_its_mean(two_namespaces):
    result = probe(two_namespaces, {"delay_ms": 150, "jitter_ms": 100})
    trips = result["trips"]
    assert all(t is not None and 0.045 <= t < 0.7 for t in trips), result
    # three draws from 50-250 ms: equal to the millisecond only by a fluke of 1 in ~10^4
    assert len({round(t, 3) for t in trips}) > 1, result
