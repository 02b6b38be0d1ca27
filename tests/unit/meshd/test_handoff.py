"""Tests for meshd.handoff: the socket hand-off between a running meshd and its successor.

Real Unix and TCP sockets in a temporary directory; the successor's (synchronous) side runs in
a thread, as it runs before the new process's event loop.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshd.handoff import (
    HandedSocket,
    HandoffError,
    HandoffServer,
    bind_admin,
    handoff_path,
    take_over,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    with sock:
        yield sock


def _short_dir(tmp_path: Path) -> Path:
    # A Unix socket path must fit in 108 bytes; pytest's tmp_path may not leave room.
    return tmp_path if len(str(tmp_path)) < 80 else Path(os.environ.get("TMPDIR", "/tmp"))


def test_handoff_path_prefers_the_runtime_directory(tmp_path: Path) -> None:
    boot = tmp_path / "web.yaml"
    assert handoff_path(boot, {}) == tmp_path / "web.yaml.handoff.sock"
    assert handoff_path(boot, {"RUNTIME_DIRECTORY": "/run/meshd/web:/x"}) == Path(
        "/run/meshd/web/handoff.sock"
    )


def test_nothing_to_take_over(tmp_path: Path) -> None:
    path = _short_dir(tmp_path) / f"h10-none-{os.getpid()}.sock"
    assert take_over(path) is None
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a process that was killed
    try:
        assert take_over(path) is None
    finally:
        path.unlink()


async def test_sockets_pass_and_ready_hands_over(tmp_path: Path, listening: socket.socket) -> None:
    path = _short_dir(tmp_path) / f"h10-ho-{os.getpid()}.sock"
    admin = bind_admin("127.0.0.1", 0)
    ready: list[int] = []

    def offer() -> list[HandedSocket]:
        return [
            HandedSocket("inbound", "listener", listening),
            HandedSocket("admin", "admin", admin),
        ]

    server = HandoffServer(path, offer, ready.append)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(server.run)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        takeover = await trio.to_thread.run_sync(take_over, path)
        assert takeover is not None
        assert takeover.pid == os.getpid()
        [inherited] = takeover.inherited()
        assert inherited.name == "inbound"
        assert inherited.address == listening.getsockname()
        # The very same listening socket: a connection queued on it is accepted by the copy.
        client = socket.create_connection(listening.getsockname())
        conn, _ = inherited.sock.accept()
        conn.close()
        client.close()
        taken_admin = takeover.admin_socket("127.0.0.1", 0)
        assert taken_admin is not None
        assert taken_admin.getsockname() == admin.getsockname()
        assert ready == []
        await trio.to_thread.run_sync(takeover.confirm)
    # The server returned once its successor was ready, and removed its socket file.
    assert ready == [os.getpid()]
    assert not path.exists()
    for sock in (inherited.sock, taken_admin, admin):
        sock.close()


async def test_the_private_umask_never_reaches_other_tasks(tmp_path: Path) -> None:
    # The hand-off socket is bound under umask 0177; the umask is the process's, so another task
    # that runs while it is set would create its files private too.
    path = _short_dir(tmp_path) / f"h10-um-{os.getpid()}.sock"
    seen: set[int] = set()
    done = trio.Event()

    async def watch() -> None:
        while not done.is_set():
            mask = os.umask(0o022)
            os.umask(mask)
            seen.add(mask)
            await trio.lowlevel.checkpoint()

    old = os.umask(0o022)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.lowlevel.checkpoint()  # the watcher runs first
            server = HandoffServer(path, list, lambda pid: None)
            assert await nursery.start(server.run)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            done.set()
            nursery.cancel_scope.cancel()
    finally:
        os.umask(old)
    assert seen == {0o022}


async def test_refusal_and_a_successor_that_gives_up(
    tmp_path: Path, listening: socket.socket
) -> None:
    path = _short_dir(tmp_path) / f"h10-rf-{os.getpid()}.sock"
    refuse = [True]
    ready: list[int] = []

    def offer() -> list[HandedSocket]:
        if refuse[0]:
            raise HandoffError("draining")
        return [HandedSocket("inbound", "listener", listening)]

    server = HandoffServer(path, offer, ready.append)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(server.run)
        with pytest.raises(HandoffError, match="draining"):
            await trio.to_thread.run_sync(take_over, path)
        refuse[0] = False
        takeover = await trio.to_thread.run_sync(take_over, path)
        assert takeover is not None
        takeover.abandon()  # the successor failed to start: the running process serves on
        for item in takeover.sockets:
            item.sock.close()
        await trio.sleep(0.1)
        assert ready == []
        # A second server for the same path leaves the live one alone.
        other = HandoffServer(path, offer, ready.append)
        assert not await nursery.start(other.run)
        assert path.exists()
        nursery.cancel_scope.cancel()
    assert not path.exists()
