"""Roles forked from one process that has imported them: the fast way to start many.

`Node.start_role` is the reference: it execs ``ip netns exec NS python -m ROLE
...``, and each role pays Python's start and its imports (an observer 0.35 s
of CPU, scapy alone 0.2 s; a server 0.16 s; a client 0.19 s). With seven
engines at once that is 21 roles starting together on two cores, and every
engine's capture waits for it (bench/ENGINES_AT_ONCE.md).

A `RoleForkServer` is one process, started first, that imports the roles'
modules once (`WARM`) and then forks each role from itself. The child does
what ``ip netns exec`` and `kalab.lifeline.spawn` do for an exec'd role: it
becomes a session leader, asks for SIGTERM when its parent (the fork
server) dies, enters the node's network namespace (``setns``), points its
output at its log and its input at /dev/null, takes the role's working
folder and environment, and runs the role's module as ``python -m`` would.
The fork server has no thread, so nothing is held locked across a fork.

The fork server is the roles' parent: it reaps each and reports its exit
status over its socket, and `ForkedChild` stands for the role in kalab as a
`subprocess.Popen` does for an exec'd one (``poll``, ``wait``, ``pid``,
``returncode``), so `kalab.runtime.node.Process` holds either. The fork
server itself dies with kalab (``PR_SET_PDEATHSIG``), and its roles with it.
Same roles, same arguments, same files: tests/test_forkserver.py runs the
same scenario both ways and compares the reports. ``KALAB_ROLES=exec`` makes
`kalab run` start every role the reference way.

    kalab  --{"role", "args", "netns", "log", "cwd", "env"}-->  fork server
    kalab  <--{"started": PID} | {"error": WHY}----------------  fork server
    kalab  <--{"exited": PID, "code": CODE}--------------------  (when it ends)
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from kalab import lifeline
from kalab.runtime.node import Node, Process, role_environment
from kalab.runtime.state import RunState, is_running

# What the roles import before they do anything (the client's default kind, requests,
# included): imported once here, shared by every fork. Not the roles' __main__ modules:
# runpy runs those afresh, and warns when one was imported already.
WARM = ("kalab.handoff", "kalab.impairment", "kalab.exitcodes", "kalab.scenario",
        "kalab.target", "kalab.lifeline", "kalab.certs", "kalab.kinds", "kalab.delayline",
        "observer.capture", "scapy.arch.linux", "scapy.layers.l2", "server.engines",
        "client.sessions", "client.progress", "client.kinds.requests", "requests")
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")  # where `ip netns add` keeps its namespaces
_MESSAGE = 1 << 20  # one request (arguments, environment) fits, whatever its size
READY = b"ready"


LOG = "role-forks.log"  # in the run folder: the fork server's own trouble, if any


class ForkServerError(RuntimeError):
    pass


WAYS = ("fork", "exec")


def wanted() -> bool:
    """Fork the roles (the default), unless KALAB_ROLES=exec asks for the reference way;
    ValueError for any other value."""
    way = os.environ.get("KALAB_ROLES", "fork")
    if way not in WAYS:
        raise ValueError(f"KALAB_ROLES={way!r}: {' or '.join(WAYS)} (the roles of engines "
                         "at once forked from one process, or each exec'd)")
    return way == "fork"


class ForkedChild:
    """A role forked by the fork server, as a `subprocess.Popen` would stand for it."""

    def __init__(self, server: RoleForkServer, pid: int) -> None:
        self.server, self.pid = server, pid

    @property
    def returncode(self) -> int | None:
        return self.server.exit_code(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        code = self.server.wait_exit(self.pid, timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"role {self.pid}", timeout or 0.0)
        return code


class RoleForkServer:
    """The fork server of one run: started at once, warm when `start_role` first needs it."""

    def __init__(self, state: RunState, cwd: Path, log: Path) -> None:
        """Start the fork server; its own trouble (an import that failed) goes to ``log``."""
        self.state = state
        self.ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs, open(log, "ab") as out:
            self.popen = lifeline.spawn([sys.executable, "-m", "kalab.runtime.forkserver",
                                         str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                        cwd=cwd, env=role_environment(cwd),
                                        stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.log = log
        state.add_pid(self.popen.pid)
        self.warm = False
        self.exits: dict[int, int] = {}
        self.lost = False  # the fork server went: its roles went with it (their PDEATHSIG)
        self.changed = threading.Condition()
        self.replies: list[dict[str, Any]] = []
        self.reader: threading.Thread | None = None

    def _wait_warm(self) -> None:
        if self.warm:
            return
        ready, _, _ = select.select([self.ours], [], [], 60)
        message = self.ours.recv(_MESSAGE) if ready else b""
        if message != READY:
            raise ForkServerError("the role fork server did not start"
                                  + ("" if ready else " within 60 s") + f" (see {self.log})")
        self.warm = True
        self.reader = threading.Thread(target=self._read, name="forkserver-reader",
                                       daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.ours.recv(_MESSAGE)
            except OSError:
                data = b""
            with self.changed:
                if not data:
                    self.lost = True
                    self.changed.notify_all()
                    return
                message = json.loads(data)
                if "exited" in message:
                    self.exits[message["exited"]] = message["code"]
                else:
                    self.replies.append(message)
                self.changed.notify_all()

    def start_role(self, node: Node, role: str, args: list[str], log: Path,
                   cwd: Path) -> Process:
        """As `Node.start_role`: ``python -m ROLE ARGS`` in ``node``, its output to ``log``."""
        self._wait_warm()
        # Absolute: the fork server's working folder is not kalab's.
        request = {"role": role, "args": args, "netns": node.netns,
                   "log": os.path.abspath(log), "cwd": os.path.abspath(cwd),
                   "env": role_environment(cwd)}
        self.ours.send(json.dumps(request).encode())
        with self.changed:
            self.changed.wait_for(lambda: self.replies or self.lost, timeout=30)
            if not self.replies:
                raise ForkServerError(f"{node.name}: {role}: the role fork server "
                                      + ("went" if self.lost else "did not answer"))
            reply = self.replies.pop(0)
        if "error" in reply:
            raise ForkServerError(f"{node.name}: {role}: {reply['error']}")
        pid = reply["started"]
        self.state.add_pid(pid)
        return Process(f"{node.name}:{role}", ForkedChild(self, pid), log)  # type: ignore[arg-type]

    def exit_code(self, pid: int) -> int | None:
        with self.changed:
            if pid in self.exits:
                return self.exits[pid]
            # Gone with the fork server: SIGTERM'd by the kernel, as it asked.
            return -signal.SIGTERM if self.lost and not is_running(pid, None) else None

    def wait_exit(self, pid: int, timeout: float | None) -> int | None:
        with self.changed:
            self.changed.wait_for(lambda: self.exit_code(pid) is not None, timeout)
            return self.exit_code(pid)

    def close(self) -> None:
        """End the fork server (its roles are stopped by then), wait for it; its log goes
        if it is empty."""
        try:
            self.ours.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ours.close()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.state.release([], [self.popen.pid])
        try:
            if self.log.stat().st_size == 0:
                self.log.unlink()
        except OSError:
            pass

    def __enter__(self) -> RoleForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ the fork server


def _namespace(name: str) -> int:
    """An open descriptor of the network namespace ``ip netns add`` made as ``name``."""
    if not name or "/" in name or name.startswith("."):
        raise OSError(f"{name!r} is no namespace name")
    try:
        return os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(f"no network namespace {name!r}") from None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")
    os.close(fd)


def _become_role(request: dict[str, Any], netns: int | None) -> int:
    """In the forked child: become the role (in the namespace ``netns`` opens), run it;
    its exit code."""
    import runpy

    os.setsid()
    lifeline.die_with_parent()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has it
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if netns is not None:
        _setns(netns)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    sys.stdout.reconfigure(line_buffering=True, write_through=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True, write_through=True)  # type: ignore[union-attr]
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["role"], *request["args"]]
    # Named as an exec'd role is (ps, pgrep, /proc/PID/cmdline), not as the fork server.
    from setproctitle import setproctitle

    setproctitle(" ".join([sys.executable, "-m", request["role"], *request["args"]]))
    try:
        runpy.run_module(request["role"], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0


def _fork_role(request: dict[str, Any], channel: socket.socket) -> int:
    # Checked here, before the fork: kalab hears of a wrong namespace, not the role's log.
    netns = _namespace(request["netns"]) if request["netns"] else None
    try:
        pid = os.fork()
    except OSError:
        if netns is not None:
            os.close(netns)
        raise
    if pid:
        if netns is not None:
            os.close(netns)
        return pid
    code = 1
    try:
        channel.close()
        code = _become_role(request, netns)
    except BaseException:  # noqa: BLE001 - whatever the role raised ends it, said in its log
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return 0  # not reached


def serve(channel: socket.socket) -> None:
    """The fork server's loop: fork what is asked, report what ended, until kalab goes."""
    for name in WARM:
        importlib.import_module(name)
    # setproctitle takes its memory (argv's, environ's) at its first call: here, before a
    # child changes its environment.
    from setproctitle import getproctitle

    getproctitle()
    channel.send(READY)
    children: set[int] = set()
    while True:
        ready, _, _ = select.select([channel], [], [], 0.02)
        if ready:
            data = channel.recv(_MESSAGE)
            if not data:  # kalab closed its end, or went: the roles get their SIGTERM
                return
            try:
                pid = _fork_role(json.loads(data), channel)
            except (OSError, ValueError, KeyError) as exc:
                channel.send(json.dumps({"error": str(exc)}).encode())
            else:
                children.add(pid)
                channel.send(json.dumps({"started": pid}).encode())
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            channel.send(json.dumps({"exited": pid,
                                     "code": os.waitstatus_to_exitcode(status)}).encode())


def main() -> None:
    lifeline.die_with_parent()  # also when started by hand: it goes with its starter
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # kalab's Ctrl-C is kalab's to handle
    channel = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(channel)
    except (BrokenPipeError, ConnectionResetError):
        pass


if __name__ == "__main__":
    main()
