"""TCP ports for the daemons a test starts: free now, and outside the kernel's ephemeral range.

A port found by binding port 0 comes from the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default), the same range every
outgoing connection on the machine takes its local port from. Between the test closing its
probe socket and the daemon binding the port, any connection (another test's client, apt, a
pytest running beside this one) may take it, and the daemon fails with "Address already in
use". Ports below that range are never given to outgoing connections, so here they are drawn
at random from below it, each checked by a bind, and never handed out twice by one process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port", "free_ports"]

#: The lowest port drawn (above the well-known and most registered services' ports).
_LOW = 15000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_TRIES = 2000

_given: set[int] = set()
_rng = random.SystemRandom()


def _highest() -> int:
    """The highest port below the ephemeral range (or 0 when there is no room below it)."""
    try:
        first = int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return first - 1 if first - 1 - _LOW >= 1000 else 0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports on ``host`` that nothing is bound to right now (all held
    while picking), below the ephemeral range; from it only when there is no room below."""
    high = _highest()
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(_TRIES if high else 0):
            if len(ports) == count:
                break
            port = _rng.randint(_LOW, high)
            if port in _given or port in ports:
                continue
            sock = socket.socket()
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            socks.append(sock)
            ports.append(port)
        while len(ports) < count:  # no room below the ephemeral range (or all taken)
            sock = socket.socket()
            sock.bind((host, 0))
            socks.append(sock)
            ports.append(int(sock.getsockname()[1]))
    finally:
        for sock in socks:
            sock.close()
    _given.update(ports)
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One port as :func:`free_ports` picks them."""
    return free_ports(1, host)[0]
