"""Shared pieces of the tests that run meshd as processes with workers: a fixed admin port
pair, and what /proc says about a process and its children."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

from lifecycle_support import http_get

__all__ = ["admin_port_pair", "answers", "child_pids", "process_gone"]


def admin_port_pair() -> int:
    """A port p such that p and p + 1 were both free a moment ago, below the ephemeral range
    (so that no outgoing connection of any process takes p + 1 before the worker binds it)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two adjacent free ports")


def answers(port: int, path: str) -> bool:
    """``GET path`` on 127.0.0.1:``port`` answers 200."""
    try:
        return http_get(port, path, timeout=5)[0] == 200
    except OSError:
        return False


def process_gone(pid: int) -> bool:
    """The process has exited (a zombie counts: it only waits for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}


def child_pids(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found += [int(x) for x in (task / "children").read_text().split()]
    return found
