"""A bounded burst of short HTTP connections on loopback: the capture half of the benchmark.

`serve` answers every connection with one small response and closes it (the
server's FIN first); `burst` opens ``connections`` connections at about
``rate`` per second from several processes, one request each, and ends every
``reset_every``-th one with a RST (SO_LINGER 0) instead of a FIN. Everything
is on 127.0.0.1, on a port of the caller's choosing, and stops by itself.
"""

from __future__ import annotations

import multiprocessing
import socket
import struct
import time

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
LINGER_RESET = struct.pack("ii", 1, 0)


def serve(port: int, ready: multiprocessing.synchronize.Event, stop_after: float) -> None:
    """Answer every connection until ``stop_after`` seconds pass with none coming."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.settimeout(stop_after)
    ready.set()
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                return
            try:
                conn.settimeout(2.0)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    conn.sendall(RESPONSE)
            except OSError:
                pass  # the client reset it: its RST is on the wire, which is the point
            finally:
                conn.close()
    finally:
        listener.close()


def _client(port: int, numbers: range, rate: float, start: float, reset_every: int,
            done: multiprocessing.Queue) -> None:
    opened = errors = 0
    request = b"GET /burst HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for n in numbers:
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(5.0)
            sock.connect(("127.0.0.1", port))
            opened += 1
            sock.sendall(request)
            if reset_every and n % reset_every == reset_every - 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            else:
                while sock.recv(4096):
                    pass
        except OSError:
            errors += 1
        finally:
            sock.close()
    done.put((opened, errors))


def burst(port: int, connections: int, rate: float, reset_every: int = 10,
          processes: int = 2) -> tuple[int, int, float]:
    """Run the burst; returns (connections opened, client errors, seconds it took)."""
    ctx = multiprocessing.get_context("fork")
    done: multiprocessing.Queue = ctx.Queue()
    start = time.monotonic() + 0.05
    workers = [ctx.Process(target=_client, args=(port, range(k, connections, processes),
                                                 rate, start, reset_every, done))
               for k in range(processes)]
    for worker in workers:
        worker.start()
    results = [done.get(timeout=connections / rate + 60) for _ in workers]
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - start
    return sum(r[0] for r in results), sum(r[1] for r in results), elapsed
