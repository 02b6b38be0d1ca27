"""meshd.net.pump over real loopback sockets (reactor and copy paths) and memory streams."""

from __future__ import annotations

import functools
import math
import random
import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from pump_support import Topology, topology

from meshd.net.pump import SPLICE_AVAILABLE, PumpResult, pump, reactor_can_pump
from meshd.net.stream import SocketStream, Stream

BIG = 64 * 1024 * 1024


@pytest.fixture
async def topo() -> AsyncIterator[Topology]:
    async with topology() as streams:
        yield streams


@pytest.fixture(
    params=[
        pytest.param(
            True, id="splice", marks=pytest.mark.skipif(not SPLICE_AVAILABLE, reason="no splice")
        ),
        pytest.param(False, id="copy"),
    ]
)
def use_reactor(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@functools.cache
def _blob(seed: int) -> bytes:
    return random.Random(seed).randbytes(BIG)


async def _echo(stream: Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


async def _receive_all(stream: Stream) -> bytes:
    received = bytearray()
    while data := await stream.receive_some():
        received += data
    return bytes(received)


async def _receive_exactly(stream: Stream, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        data = await stream.receive_some(size - len(received))
        assert data, "unexpected end of stream"
        received += data
    return bytes(received)


async def test_reactor_pumps_only_plain_socket_streams(topo: Topology) -> None:
    assert reactor_can_pump(topo.down, topo.up) == SPLICE_AVAILABLE
    a, _b = trio.testing.memory_stream_pair()
    assert not reactor_can_pump(topo.down, a)
    assert not reactor_can_pump(a, topo.up)


async def test_echo(topo: Topology, use_reactor: bool) -> None:
    messages = [f"ping {i}".encode() * (i + 1) for i in range(20)]

    async def client() -> None:
        for message in messages:
            await topo.client.send_all(message)
            assert await _receive_exactly(topo.client, len(message)) == message
        await topo.client.send_eof()
        assert await topo.client.receive_some() == b""

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_echo, topo.server)
        nursery.start_soon(client)
        result = await pump(topo.down, topo.up, idle_timeout_s=30, use_reactor=use_reactor)
    total = sum(map(len, messages))
    assert result == PumpResult(total, total, "eof")


async def test_half_close_delivers_everything(topo: Topology, use_reactor: bool) -> None:
    payload = _blob(1)[: 3 * 1024 * 1024 + 17]
    got: list[bytes] = []

    async def client() -> None:
        await topo.client.send_all(payload)
        # Only the write side is shut: the answer still has to come back.
        topo.client.sock.shutdown(socket.SHUT_WR)
        got.append(await _receive_all(topo.client))

    async def server() -> None:
        request = await _receive_all(topo.server)
        await topo.server.send_all(request)
        await topo.server.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        nursery.start_soon(server)
        result = await pump(topo.down, topo.up, idle_timeout_s=30, use_reactor=use_reactor)
    assert got == [payload]
    assert result == PumpResult(len(payload), len(payload), "eof")


async def test_large_transfer_both_directions(topo: Topology, use_reactor: bool) -> None:
    to_server, to_client = _blob(2), _blob(3)
    progress = [0, 0]

    def on_progress(to_up: int, to_down: int) -> None:
        progress[0] += to_up
        progress[1] += to_down

    async def send(stream: SocketStream, data: bytes) -> None:
        view = memoryview(data)
        for offset in range(0, len(data), 1 << 20):
            await stream.send_all(view[offset : offset + (1 << 20)])
        await stream.send_eof()

    async def expect(stream: SocketStream, data: bytes) -> None:
        offset = 0
        while chunk := await stream.receive_some():
            assert data[offset : offset + len(chunk)] == chunk, f"mismatch near {offset}"
            offset += len(chunk)
        assert offset == len(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, topo.client, to_server)
        nursery.start_soon(expect, topo.client, to_client)
        nursery.start_soon(send, topo.server, to_client)
        nursery.start_soon(expect, topo.server, to_server)
        result = await pump(
            topo.down, topo.up, idle_timeout_s=60, on_progress=on_progress, use_reactor=use_reactor
        )
    assert result == PumpResult(BIG, BIG, "eof")
    assert progress == [BIG, BIG]


async def test_idle_timeout(
    topo: Topology, use_reactor: bool, autojump_clock: trio.testing.MockClock
) -> None:
    result = await pump(topo.down, topo.up, idle_timeout_s=30, use_reactor=use_reactor)
    assert result == PumpResult(0, 0, "idle_timeout")


async def test_traffic_in_either_direction_rearms_idle_timer(
    topo: Topology, use_reactor: bool, autojump_clock: trio.testing.MockClock
) -> None:
    async def chatter() -> None:
        for i in range(6):
            await trio.sleep(20)
            # Alternate directions: either one counts as activity.
            await (topo.client if i % 2 else topo.server).send_all(b"x")

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chatter)
        result = await pump(topo.down, topo.up, idle_timeout_s=30, use_reactor=use_reactor)
    assert result == PumpResult(3, 3, "idle_timeout")
    # Virtual time: the last byte went through at 120 s, so the pump lived until 150 s.
    assert trio.current_time() - start >= 150


async def test_upstream_reset(topo: Topology, use_reactor: bool) -> None:
    async def server() -> None:
        assert await _receive_exactly(topo.server, 5) == b"hello"
        topo.server.reset()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await topo.client.send_all(b"hello")
        result = await pump(topo.down, topo.up, idle_timeout_s=30, use_reactor=use_reactor)
    assert result == PumpResult(5, 0, "reset")
    # The caller's side of the contract: reset the other end so the client sees an error.
    topo.down.reset()
    with pytest.raises(trio.BrokenResourceError):
        await topo.client.receive_some()


async def test_downstream_reset_while_upstream_sends(topo: Topology, use_reactor: bool) -> None:
    async def flood() -> None:
        for _ in range(1000):
            await topo.server.send_all(b"y" * 65536)

    async def server() -> None:
        # Keep the upstream->downstream direction busy (bounded) until the pump gives up
        # and the caller resets the upstream.
        with pytest.raises(trio.BrokenResourceError):
            await flood()

    async def client() -> None:
        await _receive_exactly(topo.client, 1000)
        topo.client.reset()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        nursery.start_soon(client)
        result = await pump(topo.down, topo.up, idle_timeout_s=30, use_reactor=use_reactor)
        assert result.reason == "reset"
        assert result.downstream_to_upstream == 0
        assert result.upstream_to_downstream >= 1000
        topo.up.reset()


async def test_initial_bytes_go_first(topo: Topology, use_reactor: bool) -> None:
    got: dict[str, bytes] = {}

    async def side(name: str, stream: SocketStream, data: bytes) -> None:
        await stream.send_all(data)
        await stream.send_eof()
        got[name] = await _receive_all(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "client", topo.client, b"late-up")
        nursery.start_soon(side, "server", topo.server, b"late-down")
        result = await pump(
            topo.down,
            topo.up,
            idle_timeout_s=30,
            initial_to_up=b"early-up|",
            initial_to_down=b"early-down|",
            use_reactor=use_reactor,
        )
    assert got == {"client": b"early-down|late-down", "server": b"early-up|late-up"}
    assert result == PumpResult(len(b"early-up|late-up"), len(b"early-down|late-down"), "eof")


async def test_outer_cancellation_propagates(
    topo: Topology, use_reactor: bool, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.move_on_after(100) as scope:
        await pump(topo.down, topo.up, idle_timeout_s=math.inf, use_reactor=use_reactor)
    assert scope.cancelled_caught


async def test_memory_streams() -> None:
    client, down = trio.testing.memory_stream_pair()
    up, server = trio.testing.memory_stream_pair()
    assert not reactor_can_pump(down, up)
    progress = [0, 0]

    def on_progress(to_up: int, to_down: int) -> None:
        progress[0] += to_up
        progress[1] += to_down

    async def talk() -> None:
        for i in range(50):
            message = b"m%d" % i
            await client.send_all(message)
            assert await _receive_exactly(client, len(message)) == message
        await client.send_eof()
        assert await client.receive_some() == b""

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_echo, server)
        nursery.start_soon(talk)
        result = await pump(down, up, idle_timeout_s=30, on_progress=on_progress)
    total = sum(len(b"m%d" % i) for i in range(50))
    assert result == PumpResult(total, total, "eof")
    assert progress == [total, total]


async def test_memory_stream_closed_under_the_pump_is_a_reset() -> None:
    _client, down = trio.testing.memory_stream_pair()
    up, _server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(up.aclose)
        result = await pump(down, up, idle_timeout_s=30)
    assert result == PumpResult(0, 0, "reset")


async def test_mixed_streams_use_the_copy_path(topo: Topology) -> None:
    up, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_echo, server)
        await topo.client.send_all(b"mixed")
        await topo.client.send_eof()
        result = await pump(topo.down, up, idle_timeout_s=30)
    assert await _receive_all(topo.client) == b"mixed"
    assert result == PumpResult(5, 5, "eof")


async def test_rejects_bad_arguments(topo: Topology) -> None:
    a, b = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="splice"):
        await pump(a, b, idle_timeout_s=30, use_reactor=True)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="idle_timeout_s"):
            await pump(topo.down, topo.up, idle_timeout_s=bad)
