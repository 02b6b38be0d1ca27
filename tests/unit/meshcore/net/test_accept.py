"""The shared accept loop: cap, eviction of silent connections, first byte, EMFILE."""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from meshcore.net.accept import (
    Acceptor,
    ConnectionLimits,
    _accept_of,
    default_max_connections,
    nofile_limit,
    raise_nofile_limit,
)

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 10.0


class Listening:
    """A listening socket on 127.0.0.1 whose ``accept`` can be made to fail with EMFILE."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.emfile = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        if self.emfile:
            self.emfile -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()


class Echo:
    """A handler that answers each chunk with ``ok`` until end of stream."""

    def __init__(self) -> None:
        self.started = 0

    async def __call__(self, sock: socket.socket, _addr: Any) -> None:
        self.started += 1
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        while await stream.receive_some(100):
            await stream.send_all(b"ok")


@pytest.fixture
async def listening() -> AsyncIterator[Listening]:
    lst = Listening()
    try:
        yield lst
    finally:
        lst.sock.close()


async def _serve(nursery: trio.Nursery, acceptor: Acceptor, lst: Listening) -> None:
    nursery.start_soon(acceptor.serve, lst, nursery)  # type: ignore[arg-type]
    await trio.testing.wait_all_tasks_blocked()


async def _closed(stream: trio.SocketStream) -> bool:
    with trio.fail_after(TIMEOUT):
        try:
            return await stream.receive_some(10) == b""
        except trio.BrokenResourceError:
            return True


async def _talk(stream: trio.SocketStream) -> bytes:
    await stream.send_all(b"hi")
    with trio.fail_after(TIMEOUT):
        return await stream.receive_some(10)


def test_default_cap_below_nofile() -> None:
    assert default_max_connections() < nofile_limit()
    assert default_max_connections(fds_per_connection=1) < nofile_limit()


def test_raise_nofile_limit_up_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        raised = raise_nofile_limit()
        assert raised == nofile_limit()
        assert raised == min(hard, 1 << 20) or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_limits_validated() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        ConnectionLimits(max_connections=0)
    with pytest.raises(ValueError, match="first_byte_timeout_s"):
        ConnectionLimits(max_connections=1, first_byte_timeout_s=0)


async def test_over_the_cap_closed_at_once(nursery: trio.Nursery, listening: Listening) -> None:
    handler = Echo()
    acceptor = Acceptor(ConnectionLimits(2, first_byte_timeout_s=None), handler)
    await _serve(nursery, acceptor, listening)
    async with (
        await trio.open_tcp_stream("127.0.0.1", listening.port) as one,
        await trio.open_tcp_stream("127.0.0.1", listening.port) as two,
    ):
        assert await _talk(one) == b"ok"
        await trio.testing.wait_all_tasks_blocked()
        async with await trio.open_tcp_stream("127.0.0.1", listening.port) as three:
            assert await _closed(three)
        assert acceptor.counts["over_limit"] == 1
        assert await _talk(two) == b"ok"
        assert acceptor.open_connections == 2


async def test_oldest_silent_evicted_first(nursery: trio.Nursery, listening: Listening) -> None:
    events: list[str] = []
    acceptor = Acceptor(
        ConnectionLimits(2, first_byte_timeout_s=60), Echo(), on_event=events.append
    )
    await _serve(nursery, acceptor, listening)
    async with (
        await trio.open_tcp_stream("127.0.0.1", listening.port) as old,
        await trio.open_tcp_stream("127.0.0.1", listening.port) as young,
    ):
        await trio.testing.wait_all_tasks_blocked()
        assert acceptor.silent_connections == 2
        async with await trio.open_tcp_stream("127.0.0.1", listening.port) as new:
            assert await _talk(new) == b"ok"
            assert await _closed(old)
            assert await _talk(young) == b"ok"
    assert events == ["idle_evicted"]


async def test_silent_closed_after_first_byte_timeout(
    nursery: trio.Nursery, listening: Listening
) -> None:
    handler = Echo()
    acceptor = Acceptor(ConnectionLimits(10, first_byte_timeout_s=0.2), handler)
    await _serve(nursery, acceptor, listening)
    async with await trio.open_tcp_stream("127.0.0.1", listening.port) as silent:
        assert await _closed(silent)
    assert acceptor.counts["first_byte_timeout"] == 1
    assert handler.started == 0


async def test_no_first_byte_limit_starts_handler_at_once(
    nursery: trio.Nursery, listening: Listening
) -> None:
    handler = Echo()
    acceptor = Acceptor(ConnectionLimits(10, first_byte_timeout_s=None), handler)
    await _serve(nursery, acceptor, listening)
    async with await trio.open_tcp_stream("127.0.0.1", listening.port):
        with trio.fail_after(TIMEOUT):
            while not handler.started:
                await trio.sleep(0.01)


async def test_emfile_evicts_a_silent_connection(
    nursery: trio.Nursery, listening: Listening
) -> None:
    acceptor = Acceptor(ConnectionLimits(100, first_byte_timeout_s=60), Echo())
    await _serve(nursery, acceptor, listening)
    async with await trio.open_tcp_stream("127.0.0.1", listening.port) as silent:
        await trio.testing.wait_all_tasks_blocked()
        listening.emfile = 1
        async with await trio.open_tcp_stream("127.0.0.1", listening.port) as new:
            assert await _talk(new) == b"ok"
        assert await _closed(silent)
    assert acceptor.counts["accept_failed"] == 1
    assert acceptor.counts["idle_evicted"] == 1


async def test_emfile_backs_off_and_keeps_serving(
    nursery: trio.Nursery, listening: Listening
) -> None:
    acceptor = Acceptor(ConnectionLimits(100, first_byte_timeout_s=None), Echo())
    await _serve(nursery, acceptor, listening)
    async with await trio.open_tcp_stream("127.0.0.1", listening.port) as served:
        assert await _talk(served) == b"ok"
        listening.emfile = 5
        async with await trio.open_tcp_stream("127.0.0.1", listening.port) as later:
            assert await _talk(served) == b"ok"  # the connection it has keeps being served
            assert await _talk(later) == b"ok"
    assert acceptor.counts["accept_failed"] == 5
    assert acceptor.counts["idle_evicted"] == 0


async def test_limits_replaced_while_serving(nursery: trio.Nursery, listening: Listening) -> None:
    acceptor = Acceptor(ConnectionLimits(1, first_byte_timeout_s=None), Echo())
    await _serve(nursery, acceptor, listening)
    async with await trio.open_tcp_stream("127.0.0.1", listening.port) as one:
        assert await _talk(one) == b"ok"
        acceptor.limits = ConnectionLimits(2, first_byte_timeout_s=None)
        async with await trio.open_tcp_stream("127.0.0.1", listening.port) as two:
            assert await _talk(two) == b"ok"
    assert acceptor.counts["over_limit"] == 0


async def test_drain_racing_a_connection_that_just_spoke(
    nursery: trio.Nursery, listening: Listening
) -> None:
    """close_silent() (a drain) may close a connection whose first bytes arrived but whose
    task hasn't run yet: that task must not start its handler on the closed socket (which
    crashed the whole process with EBADF)."""
    started: list[int] = []

    async def handler(sock: socket.socket, _addr: Any) -> None:
        sock.setblocking(False)  # what meshd's stream does first: EBADF on a closed socket
        started.append(1)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.receive_some(100)  # the client resets: not this test's concern

    acceptor = Acceptor(ConnectionLimits(1000, first_byte_timeout_s=60), handler)
    await _serve(nursery, acceptor, listening)
    for attempt in range(200):
        stream = await trio.open_tcp_stream("127.0.0.1", listening.port)
        async with stream:
            await stream.send_all(b"hi")
            for _ in range(attempt % 4):
                await trio.lowlevel.checkpoint()
            acceptor.close_silent()
    await trio.testing.wait_all_tasks_blocked()
    assert acceptor.open_connections == 0


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_accepted_socket_is_what_socket_accept_makes(family: socket.AddressFamily) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    try:
        listener = socket.socket(family)
    except OSError:
        pytest.skip("no IPv6")
    with listener, contextlib.ExitStack() as stack:
        listener.bind((host, 0))
        listener.listen(8)
        listener.setblocking(False)
        accept = _accept_of(listener)
        assert accept != listener.accept  # the fast path, not the fallback
        made = []
        for take in (accept, listener.accept):
            client = stack.enter_context(socket.create_connection(listener.getsockname()[:2]))
            sock, addr = take()
            stack.enter_context(sock)
            assert addr == client.getsockname()
            made.append((sock.family, sock.type, sock.proto, sock.gettimeout()))
            assert sock.getpeername() == client.getsockname()
        assert made[0] == made[1]
        assert made[0][0] is family  # the enum, as socket.accept gives it
        with pytest.raises(BlockingIOError):
            accept()


def test_blocking_listener_accepts_with_socket_accept() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert _accept_of(listener) == listener.accept
