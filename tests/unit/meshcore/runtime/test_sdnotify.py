"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from meshcore.runtime.sdnotify import Notifier, WatchdogService, watchdog_interval


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    with sock:
        yield sock, path


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"meshd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    with sock:
        yield sock, "@" + name


def _receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_path_socket_messages(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled

    assert notifier.ready()
    assert _receive(sock) == ["READY=1"]
    assert notifier.ready("serving 3 listeners")
    assert _receive(sock) == ["READY=1", "STATUS=serving 3 listeners"]
    assert notifier.stopping()
    assert _receive(sock) == ["STOPPING=1"]
    assert notifier.watchdog()
    assert _receive(sock) == ["WATCHDOG=1"]
    assert notifier.status("two\nlines")
    assert _receive(sock) == ["STATUS=two lines"]
    assert notifier.send(EXTEND_TIMEOUT_USEC=5_000_000, STATUS="slow")
    assert _receive(sock) == ["EXTEND_TIMEOUT_USEC=5000000", "STATUS=slow"]
    assert (notifier.sent, notifier.failures) == (6, 0)


def test_reloading_carries_monotonic_usec(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = _receive(sock)
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_socket(abstract_socket: tuple[socket.socket, str]) -> None:
    sock, address = abstract_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.ready()
    assert _receive(sock) == ["READY=1"]


def test_unset_is_noop() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.reloading()
    assert not notifier.stopping()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert (notifier.sent, notifier.failures) == (0, 0)


def test_unsupported_address_disables() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_send_failure_counts_and_returns_false(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "missing")})
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert (notifier.sent, notifier.failures) == (0, 2)


def test_newline_in_field_is_rejected(path_socket: tuple[socket.socket, str]) -> None:
    _sock, path = path_socket
    with pytest.raises(ValueError, match="newline"):
        Notifier.from_env({"NOTIFY_SOCKET": path}).send(STATUS="a\nb")


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    mine = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": mine}) == 1.5
    other = str(os.getpid() + 1)
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": other}) is None


async def test_watchdog_service_pings_every_interval(
    path_socket: tuple[socket.socket, str], autojump_clock: trio.testing.MockClock
) -> None:
    sock, path = path_socket
    sock.setblocking(False)
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    service = WatchdogService.from_env(notifier, {"WATCHDOG_USEC": "10000000"})
    assert service.interval == 5.0
    with trio.move_on_after(12):
        await service.run()
    # Pings at t=0, 5 and 10 of virtual time.
    assert [sock.recv(64) for _ in range(notifier.sent)] == [b"WATCHDOG=1"] * 3
    assert notifier.sent == 3


async def test_watchdog_service_disabled_returns_after_started() -> None:
    notifier = Notifier.from_env({})
    async with trio.open_nursery() as nursery:
        await nursery.start(WatchdogService(notifier, None).run)
    service = WatchdogService.from_env(Notifier.from_env({}), {"WATCHDOG_USEC": "1000"})
    await service.run()
    assert notifier.sent == 0
