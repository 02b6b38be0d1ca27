"""meshd.net.reactor through meshd.net.pump: what the shared epoll reactor adds to the pump.

The pump's own behaviour (echo, half-close, resets, idle timeouts, cancellation) is tested in
``tests/unit/meshd/test_tcp_pump.py`` for both paths; these are the reactor's own cases.
"""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from pump_support import Topology, tcp_pair, topology

from meshd.net.pump import PumpResult, pump
from meshd.net.reactor import EPOLL_AVAILABLE, current_reactor
from meshd.net.stream import SocketStream

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not EPOLL_AVAILABLE, reason="no epoll/splice"),
]


@pytest.fixture
async def topo() -> AsyncIterator[Topology]:
    async with topology() as streams:
        yield streams


async def _receive_all(stream: SocketStream) -> bytes:
    received = bytearray()
    while data := await stream.receive_some():
        received += data
    return bytes(received)


async def test_closing_a_stream_under_the_pump_is_a_reset(topo: Topology) -> None:
    async def close_soon() -> None:
        await trio.testing.wait_all_tasks_blocked()
        topo.up.close_nowait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_soon)
        result = await pump(topo.down, topo.up, idle_timeout_s=30)
    assert result == PumpResult(0, 0, "reset")
    assert current_reactor().watched == 0
    assert topo.up.on_close is None
    assert topo.down.on_close is None


async def test_cancelled_pump_unregisters_its_sockets(topo: Topology) -> None:
    with trio.move_on_after(0.05):
        await pump(topo.down, topo.up, idle_timeout_s=math.inf)
    reactor = current_reactor()
    assert reactor.watched == 0
    # The same sockets can be pumped again (nothing was left registered for them).
    await topo.client.send_all(b"again")
    await topo.client.send_eof()
    await topo.server.send_eof()
    result = await pump(topo.down, topo.up, idle_timeout_s=30)
    assert result == PumpResult(5, 0, "eof")
    assert await _receive_all(topo.server) == b"again"


async def test_unread_data_behind_a_closed_socket_waits_without_spinning(
    topo: Topology,
) -> None:
    # The client half-closes at once (so the upstream socket's write side is shut), then reads
    # nothing for a while; the server sends more than the downstream buffers hold and closes.
    # The upstream socket then reports HUP with data still unread behind a paused direction.
    # Small downstream buffers (but above loopback's 64 KiB MSS, or TCP itself stalls), a
    # large upstream one that holds the rest of the payload and the FIN behind it.
    topo.client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 17)
    topo.down.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    topo.up.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    payload = bytes(range(256)) * 1024 * 8  # 2 MiB
    server_done = trio.Event()
    got: list[bytes] = []

    async def server() -> None:
        assert await _receive_all(topo.server) == b""
        await topo.server.send_all(payload)
        await topo.server.aclose()
        server_done.set()

    async def client() -> None:
        await topo.client.send_eof()
        await server_done.wait()
        before = current_reactor().wakeups
        await trio.sleep(0.2)
        # Level-triggered HUP on every wake-up would have spun thousands of times by now.
        assert current_reactor().wakeups - before < 50
        got.append(await _receive_all(topo.client))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        nursery.start_soon(client)
        result = await pump(topo.down, topo.up, idle_timeout_s=30)
    assert got == [payload]
    assert result == PumpResult(0, len(payload), "eof")


async def test_initial_bytes_larger_than_a_pipe(topo: Topology) -> None:
    initial = b"i" * (300 * 1024)

    async def server() -> None:
        assert await _receive_all(topo.server) == initial + b"tail"
        await topo.server.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await topo.client.send_all(b"tail")
        await topo.client.send_eof()
        result = await pump(topo.down, topo.up, idle_timeout_s=30, initial_to_up=initial)
    assert result == PumpResult(len(initial) + 4, 0, "eof")


async def test_a_failing_progress_callback_reaches_the_caller(topo: Topology) -> None:
    def on_progress(to_up: int, to_down: int) -> None:
        raise RuntimeError("callback broke")

    await topo.client.send_all(b"x")
    with pytest.raises(RuntimeError, match="callback broke"):
        await pump(topo.down, topo.up, idle_timeout_s=30, on_progress=on_progress)
    assert current_reactor().watched == 0


async def test_many_connections_share_the_reactor() -> None:
    pairs = [(tcp_pair(), tcp_pair()) for _ in range(20)]
    streams = [
        tuple(SocketStream(s) for s in (client, down, up, server))
        for (client, down), (up, server) in pairs
    ]
    results: list[PumpResult] = []

    async def one(i: int, client: SocketStream, server: SocketStream) -> None:
        for round_ in range(5):
            message = b"c%d-r%d" % (i, round_)
            await client.send_all(message)
            data = b""
            while len(data) < len(message):
                data += await server.receive_some()
            assert data == message
            await server.send_all(data.upper())
            data = b""
            while len(data) < len(message):
                data += await client.receive_some()
            assert data == message.upper()
        await client.send_eof()
        await server.send_eof()

    async def pumped(down: SocketStream, up: SocketStream) -> None:
        results.append(await pump(down, up, idle_timeout_s=30))

    try:
        async with trio.open_nursery() as nursery:
            for i, (client, down, up, server) in enumerate(streams):
                nursery.start_soon(pumped, down, up)
                nursery.start_soon(one, i, client, server)
    finally:
        for group in streams:
            for stream in group:
                stream.close_nowait()
    assert sorted(r.reason for r in results) == ["eof"] * 20
    assert current_reactor().watched == 0


async def test_a_stopped_reactor_leaves_the_pump_to_tasks(topo: Topology) -> None:
    reactor = current_reactor()
    reactor.closed = True  # as when the run is ending
    try:
        await topo.client.send_all(b"late")
        await topo.client.send_eof()
        await topo.server.send_eof()
        result = await pump(topo.down, topo.up, idle_timeout_s=30)
    finally:
        reactor.closed = False
    assert result == PumpResult(4, 0, "eof")
    assert reactor.watched == 0
    assert await _receive_all(topo.server) == b"late"


async def test_bytes_sent_before_a_reset_are_passed_on(topo: Topology) -> None:
    # The server answers and aborts at once (RST right behind the data, as with SO_LINGER 0):
    # the answer still reaches the client, then the reset.
    await topo.server.send_all(b"answer")
    topo.server.reset()
    result = await pump(topo.down, topo.up, idle_timeout_s=30)
    assert result == PumpResult(0, 6, "reset")
    topo.down.reset()
    assert await topo.client.receive_some() == b"answer"
    with pytest.raises(trio.BrokenResourceError):
        await topo.client.receive_some()


class _TaskSteps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: list[str] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def test_bytes_move_in_trios_io_step_without_the_reactors_task(topo: Topology) -> None:
    # Every wake-up of a task of its own would be a trip through Trio's scheduler and an
    # epoll_ctl, per message, on the path of every proxied byte.
    steps = _TaskSteps()

    async def exchange() -> None:
        await trio.testing.wait_all_tasks_blocked()  # the pump is running
        trio.lowlevel.add_instrument(steps)
        for i in range(3):
            message = b"message %d" % i
            await topo.client.send_all(message)
            data = b""
            while len(data) < len(message):
                data += await topo.server.receive_some()
            assert data == message
            await topo.server.send_all(data.upper())
            data = b""
            while len(data) < len(message):
                data += await topo.client.receive_some()
            assert data == message.upper()
        trio.lowlevel.remove_instrument(steps)
        await topo.client.send_eof()
        await topo.server.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(exchange)
        result = await pump(topo.down, topo.up, idle_timeout_s=30)
    assert result.reason == "eof"
    assert steps.names
    assert "meshd.net.reactor" not in steps.names
