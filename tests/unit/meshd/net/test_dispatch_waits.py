"""SocketStream's read waits through the run's dispatcher (meshd/net/waits.py), real sockets.

Edge-triggered registrations made once: every test here hangs (and fails on its time limit)
if an event is missed.
"""

from __future__ import annotations

import os
import select
import socket
import struct

import pytest
import trio
import trio.testing
from loopback import tcp_pair

from meshd.http.lane import Lane
from meshd.net.reactor import EPOLL_AVAILABLE, current_reactor
from meshd.net.stream import SocketStream
from meshd.net.waits import (
    EPOLL_WAITS,
    Dispatcher,
    NativeReader,
    Waiter,
    current_dispatcher,
    serve_in_trio_io,
)

pytestmark = [
    pytest.mark.timeout(20),
    pytest.mark.skipif(not (EPOLL_WAITS and EPOLL_AVAILABLE), reason="epoll (Linux) only"),
]


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _marked(stream: SocketStream) -> None:
    """Until the dispatcher has taken the event of bytes that came while nobody waited."""
    waiter = stream._waiter
    assert waiter is not None
    with trio.fail_after(5):
        while not waiter.ready:
            await trio.sleep(0.001)


async def _parked(stream: SocketStream) -> None:
    # The reader is parked in the dispatcher (not returned, not in Trio's I/O manager).
    await trio.testing.wait_all_tasks_blocked()
    waiter = stream._waiter
    assert waiter is not None and waiter.task is not None


async def _pings(stream: SocketStream, b: socket.socket, count: int) -> None:
    """``count`` reads of ``stream``, each parked before ``b`` sends its bytes."""
    for i in range(count):
        async with trio.open_nursery() as nursery:

            async def send(i: int = i) -> None:
                await _parked(stream)
                b.sendall(b"ping%d" % i)

            nursery.start_soon(send)
            assert await stream.receive_later() == b"ping%d" % i


async def test_a_parked_read_wakes_through_the_dispatcher() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)
    with b:
        await _pings(stream, b, 3)
        dispatcher = current_dispatcher()
        assert dispatcher.watched == 1  # registered once, not per wait
        assert dispatcher.wakeups >= 3
        stream.close_nowait()
        assert dispatcher.watched == 0


async def test_cancel_while_parked_then_the_next_read_still_wakes() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)
    with b:
        with trio.CancelScope() as scope:

            async def cancel() -> None:
                await _parked(stream)
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel)
                await stream.receive_later()
        assert scope.cancelled_caught
        assert stream._waiter is not None and stream._waiter.task is None
        b.sendall(b"after")
        assert await stream.receive_later() == b"after"
        stream.close_nowait()


async def test_a_deadline_while_parked() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)
    with b:
        with trio.move_on_after(0.05) as scope:
            await stream.receive_some()
        assert scope.cancelled_caught
        b.sendall(b"late")
        assert await stream.receive_some() == b"late"
        stream.close_nowait()


async def test_a_cancelled_task_stops_even_if_bytes_are_marked_and_keeps_the_mark() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)
    with b:
        b.sendall(b"first")
        assert await stream.receive_later() == b"first"  # registered now
        b.sendall(b"second")
        await _marked(stream)  # the event comes while nobody waits: a mark
        with trio.CancelScope() as scope:
            scope.cancel()
            await stream.receive_later()
        assert scope.cancelled_caught
        assert await stream.receive_later() == b"second"
        stream.close_nowait()


async def test_close_while_parked_raises_closed_resource_error() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)
    with b:

        async def close() -> None:
            await _parked(stream)
            stream.close_nowait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close)
            with pytest.raises(trio.ClosedResourceError):
                await stream.receive_later()
        assert current_dispatcher().watched == 0


async def test_bytes_that_came_while_nobody_waited() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)
    with b:
        b.sendall(b"one")
        assert await stream.receive_later() == b"one"
        b.sendall(b"two")
        await _marked(stream)
        with trio.fail_after(5):
            assert await stream.receive_later() == b"two"
        stream.close_nowait()


async def test_bytes_a_full_read_left_behind() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)
    with b:
        b.sendall(b"x")
        assert await stream.receive_later() == b"x"
        b.sendall(b"y" * 10_000)  # one event for it all
        await _marked(stream)
        got = bytearray()
        with trio.fail_after(5):
            while len(got) < 10_000:
                got += await stream.receive_later(1000)  # ten reads, one event
        assert got == b"y" * 10_000
        stream.close_nowait()


async def test_bytes_and_end_of_stream_in_one_event() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)
    with b:
        b.sendall(b"x")
        assert await stream.receive_later() == b"x"
        b.sendall(b"last")
        b.shutdown(socket.SHUT_WR)
        await _marked(stream)
        with trio.fail_after(5):
            assert await stream.receive_later() == b"last"
            assert await stream.receive_later() == b""
            assert await stream.receive_some() == b""
        stream.close_nowait()


async def test_a_reset_while_parked() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)

    async def reset() -> None:
        await _parked(stream)
        _rst(b)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reset)
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await stream.receive_later()
    stream.close_nowait()


@pytest.mark.parametrize("what", ["close", "reset", "bytes"])
async def test_an_idle_pooled_connection_that_waited_before_is_stale(what: str) -> None:
    # A pooled upstream connection read its last answer through the dispatcher; while idle,
    # the peer closes, resets or writes: the check before reuse says stale.
    a, b = tcp_pair()
    stream = SocketStream(a)
    b.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    assert await stream.receive_later()
    assert not stream.is_stale()
    if what == "close":
        b.close()
    elif what == "reset":
        _rst(b)
    else:
        b.sendall(b"unexpected")
    with trio.fail_after(5):
        while not stream.is_stale():
            await trio.sleep(0.001)
    stream.close_nowait()
    b.close()


async def test_two_readers_at_once_is_an_error() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)
    with b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.receive_later)
            await _parked(stream)
            with pytest.raises(trio.BusyResourceError):
                await stream.receive_later()
            nursery.cancel_scope.cancel()
        stream.close_nowait()


def test_waits_after_the_dispatcher_stopped_go_through_trio() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)

    async def first() -> None:
        b.sendall(b"x")
        assert await stream.receive_later() == b"x"

    async def second() -> None:
        # A new run: the stream's registration belongs to the stopped dispatcher: Trio waits.
        async def send() -> None:
            await trio.sleep(0.02)
            b.sendall(b"y")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            with trio.fail_after(5):
                assert await stream.receive_later() == b"y"
        stream.close_nowait()

    trio.run(first)
    waiter = stream._waiter
    assert waiter is not None and waiter.dispatcher.closed
    trio.run(second)
    b.close()


async def test_a_stream_the_l4_reactor_takes_leaves_the_set() -> None:
    # Else every byte the reactor pumps would wake the dispatcher too.
    a, b = tcp_pair()
    c, d = tcp_pair()
    down, up = SocketStream(a), SocketStream(c)
    b.sendall(b"x")
    assert await down.receive_later() == b"x"
    dispatcher = current_dispatcher()
    assert dispatcher.watched == 1
    reactor = current_reactor()
    flow = reactor.open(down, up, b"", b"", None)
    assert flow is not None
    assert dispatcher.watched == 0
    reactor.finish(flow, None)
    down.close_nowait()
    up.close_nowait()
    b.close()
    d.close()


class _TaskSteps(trio.abc.Instrument):
    """The names of the tasks Trio steps."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


class _Reader:
    """Reads every event's bytes in the dispatcher's callback, sets ``got`` at ``want``."""

    def __init__(self, stream: SocketStream, want: bytes) -> None:
        self.stream = stream
        self.want = want
        self.data = b""
        self.got = trio.Event()

    def readable(self, waiter: Waiter) -> None:
        while (data := self.stream.receive_nowait()) is not None and data:
            self.data += data
        if self.data == self.want:
            self.got.set()

    def stopped(self, waiter: Waiter, closing: bool) -> None:
        pass


async def _started() -> Dispatcher:
    dispatcher = current_dispatcher()
    # Its task's first step hooks it into Trio's I/O step.
    await trio.testing.wait_all_tasks_blocked()
    return dispatcher


async def test_events_are_served_in_trios_io_step_not_by_a_task() -> None:
    # The latency of every proxied request: a task woken per event is a trip through Trio's
    # scheduler and an epoll_ctl per wake-up, at every hop.
    a, b = tcp_pair()
    stream = SocketStream(a)
    dispatcher = await _started()
    assert dispatcher.inline
    reader = _Reader(stream, b"ping" * 3)
    assert stream.serve_reads(reader)
    steps = _TaskSteps()
    trio.lowlevel.add_instrument(steps)
    try:
        with b:
            for _ in range(3):
                before = dispatcher.wakeups
                b.sendall(b"ping")
                while dispatcher.wakeups == before:
                    await trio.sleep(0)
            await reader.got.wait()
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert reader.data == b"ping" * 3
    assert steps.names  # this test's own task
    assert "meshd.net.waits" not in steps.names
    stream.close_nowait()


async def test_a_parked_task_wakes_from_trios_io_step() -> None:
    a, b = tcp_pair()
    stream = SocketStream(a)
    await _started()
    steps = _TaskSteps()
    with b:

        async def send() -> None:
            await _parked(stream)
            trio.lowlevel.add_instrument(steps)
            b.sendall(b"hi")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            assert await stream.receive_later() == b"hi"
        trio.lowlevel.remove_instrument(steps)
    assert "meshd.net.waits" not in steps.names
    stream.close_nowait()


def _io_manager() -> object:
    from trio._core._run import GLOBAL_RUN_CONTEXT

    return GLOBAL_RUN_CONTEXT.runner.io_manager


async def test_serve_in_trio_io_serves_sets_until_their_undo() -> None:
    io = _io_manager()
    base = type(io)
    first, second = select.epoll(), select.epoll()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    first.register(r1, select.EPOLLIN)
    second.register(r2, select.EPOLLIN)
    served: list[str] = []
    ready = trio.Event()

    def serve(name: str, epoll: select.epoll, fd: int) -> None:
        for _ in epoll.poll(0):
            os.read(fd, 100)
            served.append(name)
            ready.set()

    undo1 = serve_in_trio_io(first.fileno(), lambda: serve("first", first, r1))
    undo2 = serve_in_trio_io(second.fileno(), lambda: serve("second", second, r2))
    assert undo1 is not None and undo2 is not None
    assert type(io) is not base and isinstance(io, base)
    try:
        for fd, name in ((w1, "first"), (w2, "second")):
            ready = trio.Event()
            os.write(fd, b"x")
            await ready.wait()
            assert served[-1] == name
        undo1()
        assert type(io) is not base  # the second set is still served
        undo2()
        assert type(io) is base
        undo2()  # twice: nothing more
        # No longer served: Trio's own waits still work, and the sets' fds are not in its set.
        os.write(w1, b"y")
        await trio.lowlevel.wait_readable(r1)
        assert served == ["first", "second"]
    finally:
        undo1()
        undo2()
        for fd in (r1, w1, r2, w2):
            os.close(fd)
        first.close()
        second.close()


async def test_the_class_is_trios_again_once_the_run_ends() -> None:
    ios: list[object] = []

    async def main() -> None:
        await _started()
        ios.append(_io_manager())
        assert type(ios[0]).__name__ == "ServingEpollIOManager"

    await trio.to_thread.run_sync(trio.run, main)
    assert type(ios[0]).__name__ == "EpollIOManager"


async def test_waits_work_when_trios_io_step_cannot_be_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another Trio I/O manager (or a Trio whose internals moved): the dispatcher's task waits.
    import meshd.net.waits

    monkeypatch.setattr(meshd.net.waits, "serve_in_trio_io", lambda fd, serve: None)
    a, b = tcp_pair()
    stream = SocketStream(a)
    dispatcher = await _started()
    assert not dispatcher.inline
    with b:
        await _pings(stream, b, 2)
        reader = _Reader(stream, b"pong")
        assert stream.serve_reads(reader)
        b.sendall(b"pong")
        await reader.got.wait()
    assert type(_io_manager()).__name__ == "EpollIOManager"
    stream.close_nowait()


class _NativeReader(NativeReader):
    """A reader on the dispatcher's native calls (the lane's base), counting its events."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.data = b""
        self.got = trio.Event()

    def readable(self, waiter: Waiter) -> None:
        assert waiter is self.stream._waiter
        while (data := self.stream.receive_nowait()) is not None and data:
            self.data += data
        self.got.set()

    def stopped(self, waiter: Waiter, closing: bool) -> None:
        pass


async def test_a_native_reader_is_served_as_any_reader() -> None:
    # The lane (two events per proxied request) is a NativeReader: compiled, the dispatcher
    # calls it through the class's vtable rather than by a method looked up by name.
    assert issubclass(Lane, NativeReader)
    a, b = tcp_pair()
    stream = SocketStream(a)
    await _started()
    reader = _NativeReader(stream)
    assert stream.serve_reads(reader)
    with b:
        b.sendall(b"ping")
        await reader.got.wait()
    assert reader.data == b"ping"
    stream.close_nowait()
