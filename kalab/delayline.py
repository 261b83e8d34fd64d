"""A delay line in user space, for kernels without `sch_netem`.

Theory of operation: an iptables rule hands every IPv4 packet leaving (or
entering) one interface to an NFQUEUE; this module binds that queue over netfilter's
netlink socket and, for each packet, sends the kernel its verdict later:
ACCEPT after ``delay +- jitter`` (released in time order, so jitter can
reorder as netem's does) or DROP at once with probability ``loss``. Only
the packet's id travels to user space (copy mode META), never its bytes,
and the packet itself never leaves the kernel, so TCP stays end to end:
the same segments, the same sequence numbers, just later.

What it cannot do that netem does: shape non-IP frames (ARP passes at once)
and IPv6 (the lab's links are IPv4). Packets the queue could not hold are
dropped by the kernel and counted in ``/proc/net/netfilter/nfnetlink_queue``;
`DelayLine.counts` reports them so a run never hides them.

One DelayLine per network namespace and queue number; it lives in a thread
of the role that owns the direction and ends with it (the rule stays until
the namespace or container goes, exactly like a qdisc).
"""

from __future__ import annotations

import heapq
import os
import random
import select
import socket
import struct
import subprocess
import threading
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NF_DROP = 0
NF_ACCEPT = 1

QUEUE_MAXLEN = 8192  # packets held at once: 100 ms of a busy lab link with room to spare
RECEIVE_BUFFER = 8 << 20
OVERFLOW = "LOST TO QUEUE OVERFLOW"  # the words a report uses for the delay line's own loss


class DelayLineError(Exception):
    pass


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(msg_type: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST,
             seq: int = 0) -> bytes:
    # nfgenmsg: family AF_UNSPEC, version 0, the queue number big-endian
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type,
                       flags, seq, 0) + body


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    found = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x7FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


class DelayLine:
    """Delays, jitters and drops the packets queued to ``queue`` in this namespace."""

    def __init__(self, queue: int, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                 loss_percent: float = 0.0) -> None:
        self.queue = queue
        self.delay = delay_ms / 1000
        self.jitter = jitter_ms / 1000
        self.loss = loss_percent / 100
        self.held = 0  # packets delayed and then let through
        self.lost = 0  # packets dropped on purpose (the loss rate)
        self._random = random.Random()
        self._held: list[tuple[float, int, int]] = []  # (release at, order, packet id)
        self._order = 0
        self._stopping = threading.Event()
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self._sock.bind((0, 0))
            self._configure(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
            self._configure(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                            + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)))
        except OSError as exc:
            self._sock.close()
            raise DelayLineError(f"cannot bind NFQUEUE {queue}: {exc}") from exc
        self._thread = threading.Thread(target=self._run, name=f"delay-line-{queue}",
                                        daemon=True)

    def _configure(self, attrs: bytes) -> None:
        self._sock.send(_message(NFQNL_MSG_CONFIG, self.queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
        reply = self._sock.recv(65536)
        _, kind = struct.unpack_from("=IH", reply)
        if kind == NLMSG_ERROR:
            error = struct.unpack_from("=i", reply, 16)[0]
            if error:
                raise OSError(-error, os.strerror(-error))

    def start(self) -> DelayLine:
        self._thread.start()
        return self

    def _verdict(self, packet_id: int, verdict: int) -> None:
        self._sock.send(_message(NFQNL_MSG_VERDICT, self.queue,
                                 _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))))

    def _receive(self, data: bytes) -> None:
        offset = 0
        now = time.monotonic()
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                header = _attrs(data[offset:offset + length], 20).get(NFQA_PACKET_HDR)
                if header:
                    self._admit(struct.unpack_from("!I", header)[0], now)
            offset += (length + 3) & ~3

    def _admit(self, packet_id: int, now: float) -> None:
        if self.loss and self._random.random() < self.loss:
            self.lost += 1
            self._verdict(packet_id, NF_DROP)
            return
        wait = self.delay + (self._random.uniform(-self.jitter, self.jitter) if self.jitter else 0)
        self._order += 1
        heapq.heappush(self._held, (now + max(wait, 0.0), self._order, packet_id))

    def _release_due(self) -> float | None:
        """Let through every packet whose time has come; seconds until the next one."""
        now = time.monotonic()
        while self._held and self._held[0][0] <= now:
            self._verdict(heapq.heappop(self._held)[2], NF_ACCEPT)
            self.held += 1
        return self._held[0][0] - now if self._held else None

    def _run(self) -> None:
        while True:
            wait = self._release_due()
            if self._stopping.is_set() and wait is None:
                return
            readable, _, _ = select.select([self._sock], [], [],
                                           0.05 if wait is None else min(wait, 0.05))
            if readable:
                try:
                    self._receive(self._sock.recv(1 << 20))
                except OSError:  # ENOBUFS: the kernel dropped; counted in its own table
                    continue

    def counts(self) -> tuple[int, int, int]:
        """(delayed, dropped as loss, lost to overflow) so far."""
        return self.held, self.lost, queue_drops(self.queue)

    def close(self) -> None:
        """Let everything still held through at its time, then stop."""
        if self._thread.is_alive():
            self._stopping.set()
            self._thread.join(timeout=self.delay + self.jitter + 5)
        self._sock.close()


def queue_drops(queue: int) -> int:
    """Packets this namespace's kernel dropped for ``queue`` (full queue or slow reader)."""
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as table:
            for line in table:
                fields = line.split()
                if fields and int(fields[0]) == queue:
                    return int(fields[5]) + int(fields[6])  # queue_dropped + user_dropped
    except (OSError, ValueError, IndexError):
        pass
    return 0


def queue_rule(interface: str, queue: int, match: tuple[str, ...] = (),
               inbound: bool = False) -> list[str]:
    """The mangle-table rule queueing what leaves (or enters) ``interface``."""
    hook = ["PREROUTING", "-i", interface] if inbound else ["POSTROUTING", "-o", interface]
    return [*hook, *match, "-j", "NFQUEUE", "--queue-num", str(queue)]


def iptables(action: str, rule: list[str]) -> None:
    """``action`` is -A (append), -D (delete) or -C (check) on the mangle table."""
    done = subprocess.run(["iptables", "-w", "-t", "mangle", action, *rule],
                          capture_output=True, text=True)
    if done.returncode:
        why = done.stderr.strip() or f"exit {done.returncode}"
        raise DelayLineError(f"iptables {action} {' '.join(rule)}: {why}")
