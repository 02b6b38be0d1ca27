"""The L4 (TCP) listener: bytes both ways, half-close, byte counters."""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio
from helpers import (
    TIMEOUT,
    RawServer,
    admin_get,
    closed_port,
    cluster,
    echo_until_eof,
    pattern,
    start_sidecar,
    write_sidecar_config,
)
from prometheus_client.parser import text_string_to_metric_families

from meshd.sidecar import Sidecar


async def _tcp_sidecar(
    nursery: trio.Nursery, directory: Path, upstream_port: int
) -> tuple[Sidecar, int]:
    path = write_sidecar_config(
        directory,
        service="web",
        app_port=closed_port(),
        listeners=[
            {
                "name": "echo-tcp",
                "direction": "outbound",
                "address": "127.0.0.1:0",
                "protocol": "tcp",
                "cluster": "echo",
            }
        ],
        clusters=[cluster("echo", upstream_port)],
    )
    sidecar = await start_sidecar(nursery, path)
    return sidecar, sidecar.listeners.slots["echo-tcp"].port


async def _send_then_half_close(port: int, size: int) -> tuple[int, str, str]:
    """Send ``size`` bytes, shut down writing, read the echo until EOF (both concurrently)."""
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = 0
    with trio.fail_after(TIMEOUT * 3):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:

            async def sender() -> None:
                for piece in pattern(size, 10000):
                    sent.update(piece)
                    await stream.send_all(piece)
                await stream.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    got.update(data)
                    received += len(data)
    return received, sent.hexdigest(), got.hexdigest()


async def test_tcp_echo_with_half_close(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RawServer(echo_until_eof)
    await nursery.start(upstream.run)
    sidecar, port = await _tcp_sidecar(nursery, tmp_path, upstream.port)

    size = 3 * 1024 * 1024 + 7
    received, sent_digest, got_digest = await _send_then_half_close(port, size)
    assert received == size
    assert got_digest == sent_digest

    # Counters are booked when the proxied connection closes, just after the client saw EOF.
    key = "tcp.outbound.web.echo"
    with trio.fail_after(TIMEOUT):
        while True:
            stats = (await admin_get(sidecar, "/stats")).json()
            if stats.get(f"{key}.connections_closed") == 1:
                break
            await trio.sleep(0.02)
    assert stats[f"{key}.connections_opened"] == 1
    assert stats[f"{key}.received_bytes"] == size
    assert stats[f"{key}.sent_bytes"] == size

    metrics = (await admin_get(sidecar, "/metrics")).text
    values = {
        (s.name, s.labels.get("destination")): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name.startswith("meshd_tcp_")
    }
    assert values[("meshd_tcp_received_bytes_total", "echo")] == size
    assert values[("meshd_tcp_sent_bytes_total", "echo")] == size
    assert values[("meshd_tcp_connections_opened_total", "echo")] == 1


async def test_tcp_server_speaks_after_client_half_close(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The upstream answers only once it saw the client's EOF: the EOF must get through."""

    async def answer_after_eof(stream: trio.SocketStream) -> None:
        total = 0
        with trio.fail_after(TIMEOUT):
            while data := await stream.receive_some(65536):
                total += len(data)
            await stream.send_all(b"got %d bytes" % total)

    upstream = RawServer(answer_after_eof)
    await nursery.start(upstream.run)
    _, port = await _tcp_sidecar(nursery, tmp_path, upstream.port)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"x" * 12345)
            await stream.send_eof()
            reply = b""
            while data := await stream.receive_some(65536):
                reply += data
    assert reply == b"got 12345 bytes"


async def test_tcp_several_connections_at_once(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RawServer(echo_until_eof)
    await nursery.start(upstream.run)
    _, port = await _tcp_sidecar(nursery, tmp_path, upstream.port)
    results: list[tuple[int, str, str]] = []

    async def one(size: int) -> None:
        results.append(await _send_then_half_close(port, size))

    async with trio.open_nursery() as group:
        for i in range(8):
            group.start_soon(one, 100_000 + i)
    assert sorted(r[0] for r in results) == [100_000 + i for i in range(8)]
    assert all(r[1] == r[2] for r in results)


async def test_tcp_upstream_refused_resets_client(nursery: trio.Nursery, tmp_path: Path) -> None:
    sidecar, port = await _tcp_sidecar(nursery, tmp_path, closed_port())
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
    assert data == b""
    stats = (await admin_get(sidecar, "/stats")).json()
    assert stats["cluster.echo.upstream_errors.upstream_connect_failed"] == 1
