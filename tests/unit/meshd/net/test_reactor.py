"""The edge-triggered read reactor behind SocketStream, with real socket pairs."""

from __future__ import annotations

import socket

import pytest
import trio

from meshd.net.reactor import Reactor, current_reactor
from meshd.net.stream import SocketStream

pytestmark = pytest.mark.timeout(10)


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def test_one_reactor_per_run() -> None:
    assert current_reactor() is current_reactor()


async def test_a_parked_reader_wakes_when_bytes_come() -> None:
    a, b = _pair()
    with a, b:
        stream = SocketStream(a)
        got: list[bytes] = []

        async def read() -> None:
            got.append(await stream.receive_later())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            assert not got
            b.send(b"ping")
        assert got == [b"ping"]
        stream.close_nowait()


async def test_bytes_that_came_before_the_wait_are_not_missed() -> None:
    a, b = _pair()
    with a, b:
        stream = SocketStream(a)
        b.send(b"early")
        # First wait: registration reports what is readable already.
        assert await stream.receive_later() == b"early"
        # An edge while nobody waited is remembered for the next wait.
        b.send(b"later")
        await trio.testing.wait_all_tasks_blocked()
        assert await stream.receive_later() == b"later"
        b.close()
        assert await stream.receive_later() == b""
        stream.close_nowait()


async def test_closing_wakes_a_parked_reader_with_closed_resource_error() -> None:
    a, b = _pair()
    with b:
        stream = SocketStream(a)
        failure: list[BaseException] = []

        async def read() -> None:
            try:
                await stream.receive_later()
            except trio.ClosedResourceError as exc:
                failure.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            stream.close_nowait()
        assert len(failure) == 1
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_later()


async def test_a_second_reader_is_refused_and_cancel_unparks() -> None:
    a, b = _pair()
    with a, b:
        reactor = Reactor()
        reactor.register(a.fileno())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reactor.wait_readable, a.fileno())
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await reactor.wait_readable(a.fileno())
            nursery.cancel_scope.cancel()
        # The cancelled wait left nothing behind: a new one may park.
        with trio.move_on_after(0.05) as scope:
            await reactor.wait_readable(a.fileno())
        assert scope.cancelled_caught
        reactor.unregister(a.fileno())


async def test_a_remembered_edge_still_checkpoints() -> None:
    a, b = _pair()
    with a, b:
        stream = SocketStream(a)
        b.send(b"first")
        assert await stream.receive_later() == b"first"
        b.send(b"x")
        await trio.testing.wait_all_tasks_blocked()  # the reactor saw the edge: no waiter
        with trio.CancelScope() as scope:
            scope.cancel()
            await stream.receive_later()
        assert scope.cancelled_caught
        assert await stream.receive_later() == b"x"
        stream.close_nowait()


async def test_bytes_left_by_a_full_read_are_read_without_a_new_edge() -> None:
    a, b = _pair()
    with a, b:
        stream = SocketStream(a)
        b.send(b"0123456789")
        assert await stream.receive_later(4) == b"0123"
        await trio.testing.wait_all_tasks_blocked()
        assert await stream.receive_later(4) == b"4567"
        assert await stream.receive_some(100) == b"89"
        stream.close_nowait()


async def test_the_end_of_stream_after_the_last_bytes_is_not_missed() -> None:
    a, b = _pair()
    with a:
        stream = SocketStream(a)
        b.send(b"x")
        assert await stream.receive_later(100) == b"x"  # registered from here on
        b.send(b"last")
        b.close()
        await trio.testing.wait_all_tasks_blocked()  # one edge for the bytes and the end
        assert await stream.receive_later(100) == b"last"
        assert await stream.receive_later(100) == b""
        assert await stream.receive_later(100) == b""
        stream.close_nowait()
