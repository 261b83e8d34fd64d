"""Processes that end when the process that started them dies, and signals that wait.

A lab run is a tree: `kalab` starts the roles, the server role starts the
engine. If a parent is killed outright (SIGKILL, the OOM killer) nothing of
its own cleanup runs, so each child asks the kernel to send it SIGTERM when
its parent dies (``PR_SET_PDEATHSIG``), and each handles SIGTERM by cleaning
up its own part: the observer closes its capture, the client removes its
delay line's rules, the server stops its engine. What a SIGKILL can still
leave is namespaces, and the next `kalab run` or `kalab clean` removes them.

`deferred_signals` is the other half: while a run cleans up, SIGINT and
SIGTERM are noted, not obeyed, so a second Ctrl-C cannot cut the cleanup short.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1
_libc = None


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask for ``sig`` when the parent dies; for `subprocess.Popen(preexec_fn=...)`.

    Runs in the child between fork and exec; the setting survives the exec of
    anything but a set-user-ID program (`ip netns exec` is not one). If the
    parent died before the call, nobody would send the signal: exit at once.
    """
    global _libc
    parent = os.getppid()
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        os._exit(127)
    if os.getppid() != parent:
        os._exit(127)


_STOPS = {signal.SIGINT, signal.SIGTERM}


def _child_setup(sig: int) -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
    die_with_parent(sig)


def spawn(argv: list[str], sig: int = signal.SIGTERM, **popen_args) -> subprocess.Popen:
    """`subprocess.Popen` for a child that dies with this process (``die_with_parent``).

    SIGINT and SIGTERM are held back in this process while it forks: a ``preexec_fn``
    makes Python run its fork hooks, and a handler that raises (Ctrl-C) inside one of
    them is printed and dropped ("Exception ignored in _releaseLock"), so the run
    would go on as if nothing had been asked. Held back, the signal is handled once
    `Popen` has returned, where the caller's ``try`` sees it. The child unblocks them
    before its exec.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        return subprocess.Popen(argv, preexec_fn=lambda: _child_setup(sig), **popen_args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def raise_on_sigterm() -> None:
    """Make SIGTERM raise `KeyboardInterrupt`, as Ctrl-C does, so every ``finally`` runs."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@contextmanager
def deferred_signals(on_signal=None) -> Iterator[list[int]]:
    """SIGINT and SIGTERM only noted (in the yielded list) while the body runs.

    ``on_signal(signum)`` is called for each, e.g. to say that the cleanup is
    still going. The handlers in force before are restored afterwards.
    """
    seen: list[int] = []

    def note(signum: int, frame: object) -> None:
        seen.append(signum)
        if on_signal is not None:
            on_signal(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield seen
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
