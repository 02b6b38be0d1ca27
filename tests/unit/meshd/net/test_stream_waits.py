"""SocketStream's parks: through the running loop's I/O manager, else trio's public waits."""

from __future__ import annotations

import socket
import sys

import pytest
import trio

from meshd.net.stream import SocketStream, io_waits

pytestmark = pytest.mark.timeout(10)


def test_outside_a_run_the_public_waits() -> None:
    assert io_waits() == (trio.lowlevel.wait_readable, trio.lowlevel.wait_writable)


async def test_inside_a_run_the_loops_own_waits() -> None:
    readable, writable = io_waits()
    assert readable is not trio.lowlevel.wait_readable
    assert writable is not trio.lowlevel.wait_writable


async def test_if_trio_moves_its_loop_state_the_public_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A private module: a trio that renames it must not break meshd (None: import fails).
    monkeypatch.setitem(sys.modules, "trio._core._run", None)
    assert io_waits() == (trio.lowlevel.wait_readable, trio.lowlevel.wait_writable)


async def _echo_once(stream: SocketStream, peer: socket.socket) -> None:
    async def send_later() -> None:
        await trio.sleep(0.01)
        peer.sendall(b"ping")

    async with trio.open_nursery() as nursery:
        # The read parks first (nothing sent yet), then the peer writes.
        nursery.start_soon(send_later)
        assert await stream.receive_later() == b"ping"
    await stream.send_all(b"pong" * 300_000)  # more than the kernel takes at once: parks


@pytest.mark.parametrize("made_in_run", [True, False])
def test_a_stream_parks_and_wakes(made_in_run: bool) -> None:
    a, b = socket.socketpair()
    b.settimeout(5)

    async def main(stream: SocketStream | None) -> None:
        stream = stream or SocketStream(a)
        async with trio.open_nursery() as nursery:
            got = bytearray()

            async def drain() -> None:
                while len(got) < 1_200_000:
                    got.extend(await trio.to_thread.run_sync(b.recv, 1 << 20))

            nursery.start_soon(drain)
            await _echo_once(stream, b)
        assert bytes(got) == b"pong" * 300_000
        stream.close_nowait()

    try:
        trio.run(main, None if made_in_run else SocketStream(a))
    finally:
        a.close()
        b.close()
