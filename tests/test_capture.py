"""The observer's capture beside tcpdump: the same packets, and drops never hidden.

A burst of short connections on a loopback port of the test's own (some
ending in a RST) is captured by `observer.capture.Capture` and by tcpdump at
once: both must hold every SYN, FIN and RST, each packet once. A capture
whose socket buffer is too small for the burst must count the kernel's drops,
and `kalab analyze` of its pcap must then refuse to conclude (exit 3).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import conftest
import pytest
from conftest import capturing, run_kalab

from kalab import handoff
from kalab.pcap import SegmentReader

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="packet capture needs root")

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def free_port() -> int:
    return conftest.free_port(18200, 18399)


class Server:
    """Answers each connection once and closes it; runs until stopped."""

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", port), backlog=1024)
        self.listener.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    conn.settimeout(2)
                    if conn.recv(4096):
                        conn.sendall(RESPONSE)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.listener.close()


def burst(port: int, connections: int, reset_every: int = 10) -> None:
    """Short connections, one request each; every ``reset_every``-th ends with a RST."""
    for n in range(connections):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            if n % reset_every == reset_every - 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                continue
            while sock.recv(4096):
                pass


def flags(pcap: Path) -> dict[str, int]:
    counts = {"syn": 0, "syn-ack": 0, "fin": 0, "rst": 0, "packets": 0}
    for seg in SegmentReader(pcap):
        counts["packets"] += 1
        if seg.flags & 0x02:
            counts["syn-ack" if seg.flags & 0x10 else "syn"] += 1
        counts["fin"] += bool(seg.flags & 0x01)
        counts["rst"] += bool(seg.flags & 0x04)
    return counts


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_observer_and_tcpdump_keep_the_same_packets(tmp_path):
    port = free_port()
    server = Server(port)
    ours, theirs = tmp_path / "observer.pcap", tmp_path / "tcpdump.pcap"
    tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-w", str(theirs),
                                f"tcp port {port}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        # tcpdump reads its packet ring a block at a time, and a block that is not full
        # is handed over only when its 1 s timeout runs out: a SIGINT sooner loses it.
        with capturing(port, ours, linger=1.5) as capture:
            assert "listening on lo" in tcpdump.stderr.readline()  # tcpdump is ready
            time.sleep(0.2)
            burst(port, 600)
    finally:
        tcpdump.send_signal(signal.SIGINT)
        report = tcpdump.communicate(timeout=20)[1]
        server.stop()
    stats = capture.stats
    assert stats.kernel_drops == 0 and stats.problems == []
    assert "0 packets dropped by kernel" in report
    mine, reference = flags(ours), flags(theirs)
    assert mine == reference
    assert mine["syn"] == mine["syn-ack"] == 600
    assert mine["rst"] >= 60  # the resets; the server may answer a late segment with another
    assert stats.packets == mine["packets"]  # each packet once: loopback's copies left out
    assert stats.kernel_packets >= stats.packets


def test_a_capture_that_lost_packets_says_so_and_cannot_conclude(tmp_path):
    from observer.capture import Capture

    port = free_port()
    server = Server(port)
    pcap = tmp_path / handoff.CAPTURE_PCAP
    capture = Capture("lo", port, pcap, buffer=4096)  # far too small, and never read
    try:
        burst(port, 200, reset_every=1000)
    finally:
        stats = capture.close()
        server.stop()
    assert stats.kernel_drops > 0
    # The kernel counts what it queued and what it dropped: both are accounted for.
    assert stats.kernel_packets == stats.packets + stats.duplicates_dropped + stats.kernel_drops
    assert f"the kernel dropped {stats.kernel_drops} packet(s)" in stats.problems[0]
    handoff.write_json(tmp_path / handoff.CAPTURE_STATS, stats.to_dict())

    done = run_kalab("analyze", str(pcap), "--json")
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == "inconclusive"
    capture_record = report["runs"][0]["capture"]
    assert capture_record["kernel_drops"] == stats.kernel_drops
    assert any("the kernel dropped" in p for p in capture_record["problems"])


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_a_target_s_capture_takes_every_address_its_name_resolves_to(tmp_path, monkeypatch):
    # `localhost` may resolve to ::1, then 127.0.0.1, and a server listen on the second
    # only: a client is refused on the first and goes on to the next. A target's capture
    # takes both (`kalab.target.locate`), and nothing else on its port.
    from kalab import evidence, target

    port = free_port()
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host == "dual.test":
            return real("::1", *args, **kwargs) + real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    addresses, interface = target.locate(target.parse(f"http://dual.test:{port}/"))
    assert (addresses, interface) == (["::1", "127.0.0.1"], "lo")
    server = Server(port)  # on 127.0.0.1 only
    pcap = tmp_path / "capture.pcap"
    try:
        with capturing(port, pcap, linger=0.5, hosts=addresses) as capture:
            time.sleep(0.2)
            for _ in range(3):  # as a client connects: each address in turn until one answers
                with socket.create_connection(("dual.test", port), timeout=5) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    while sock.recv(4096):
                        pass
            with pytest.raises(ConnectionRefusedError):  # other addresses: not the target's
                socket.create_connection(("127.0.0.2", port), timeout=5,
                                         source_address=("127.0.0.3", 0))
    finally:
        server.stop()
    assert capture.filter == f"tcp port {port} and (host ::1 or host 127.0.0.1)"
    # tshark, the referee: the SYNs to each address, and none to another.
    syns = subprocess.run(["tshark", "-r", str(pcap), "-Y", "tcp.flags.syn == 1 && "
                           "tcp.flags.ack == 0", "-T", "fields", "-e", "ip.dst", "-e",
                           "ipv6.dst"], capture_output=True, text=True, check=True).stdout
    assert sorted(line.strip() for line in syns.splitlines()) == ["127.0.0.1"] * 3 + ["::1"] * 3
    connections = evidence.analyze_capture(pcap).connections
    assert sorted((c.server, c.refused, c.requests != []) for c in connections) == \
        [(f"127.0.0.1:{port}", False, True)] * 3 + [(f"[::1]:{port}", True, False)] * 3
