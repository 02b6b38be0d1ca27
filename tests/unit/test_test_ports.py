"""tests/ports.py: ports for test daemons, below the kernel's ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from ports import free_port, free_ports

pytestmark = pytest.mark.timeout(30)


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    low = _ephemeral_low()
    assert all(port < low for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_is_never_handed_out_twice_and_a_bound_one_never() -> None:
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", free_port()))
        busy = taken.getsockname()[1]
        seen = set(free_ports(200))
        assert busy not in seen
        assert not seen & set(free_ports(200))
    finally:
        taken.close()
