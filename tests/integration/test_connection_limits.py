"""Connection-level limits of meshd's listeners: cap, time to first byte, descriptors running out.

The in-process tests run a sidecar in the test's Trio loop; the flood tests run meshd as a
subprocess under ``prlimit --nofile=256`` and open 1100 idle connections, more than it has
descriptors for.
"""

from __future__ import annotations

import contextlib
import http.client
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import (
    TIMEOUT,
    RawServer,
    admin_get,
    closed_port,
    cluster,
    idle_connections,
    start_sidecar,
    write_sidecar_config,
)
from lifecycle_support import (
    UpstreamApp,
    bootstrap_doc,
    http_get,
    running_sidecar,
    snapshot_doc,
    wait_for,
    write_yaml,
)

from meshd.sidecar import Sidecar

pytestmark = pytest.mark.timeout(180)

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
REQUEST = b"GET / HTTP/1.1\r\nhost: app\r\n\r\n"
#: Idle connections of the flood tests, and meshd's descriptor limit there.
FLOOD = 1100
NOFILE = 256


def _keep_alive(raw: bytes) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """Answer every request head on a connection with ``raw``."""

    async def handler(stream: trio.SocketStream) -> None:
        buf = b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _head, buf = buf.split(b"\r\n\r\n", 1)
                await stream.send_all(raw)

    return handler


async def _sidecar(
    nursery: trio.Nursery,
    tmp_path: Path,
    upstream_handler: Callable[[trio.SocketStream], Awaitable[None]] | None = None,
    **fields: Any,
) -> tuple[Sidecar, int, RawServer]:
    """A sidecar whose listener ``api`` (with more ``fields``) forwards to an upstream running
    ``upstream_handler`` (default: keep-alive, answering ``OK``)."""
    upstream = RawServer(upstream_handler or _keep_alive(OK))
    await nursery.start(upstream.run)
    path = write_sidecar_config(
        tmp_path,
        service="web",
        app_port=closed_port(),
        listeners=[
            {
                "name": "api",
                "direction": "outbound",
                "address": "127.0.0.1:0",
                "cluster": "app",
                **fields,
            }
        ],
        clusters=[cluster("app", upstream.port)],
    )
    sidecar = await start_sidecar(nursery, path)
    return sidecar, sidecar.listeners.slots["api"].port, upstream


async def _limit_stats(sidecar: Sidecar) -> dict[str, int]:
    stats = (await admin_get(sidecar, "/stats")).json()
    prefix = "listener.api.limits."
    return {k.removeprefix(prefix): v for k, v in stats.items() if k.startswith(prefix)}


async def _exchange(stream: trio.SocketStream) -> bytes:
    """One request on a kept-alive connection; the response (small, one read is enough)."""
    await stream.send_all(REQUEST)
    got = b""
    with trio.fail_after(TIMEOUT):
        while not got.endswith(b"ok"):
            data = await stream.receive_some(65536)
            if not data:
                break
            got += data
    return got


class Clients:
    """Client connections of a test, all closed at its end."""

    def __init__(self) -> None:
        self.streams: list[trio.SocketStream] = []

    async def open(self, port: int) -> trio.SocketStream:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        self.streams.append(stream)
        return stream


@pytest.fixture
async def clients() -> Any:
    found = Clients()
    try:
        yield found
    finally:
        for stream in found.streams:
            await stream.aclose()


async def _closed(stream: trio.SocketStream) -> bool:
    """True once the peer closed (EOF or reset); fails the test if it stays open."""
    with trio.fail_after(TIMEOUT):
        try:
            return await stream.receive_some(1) == b""
        except trio.BrokenResourceError:
            return True


async def test_silent_connection_closed_after_first_byte_timeout(
    nursery: trio.Nursery, tmp_path: Path, clients: Clients
) -> None:
    sidecar, port, upstream = await _sidecar(nursery, tmp_path, first_byte_timeout_s=0.5)
    silent = await clients.open(port)
    talking = await clients.open(port)
    assert (await _exchange(talking)).endswith(b"ok")
    assert await _closed(silent)
    assert (await _limit_stats(sidecar))["first_byte_timeout"] == 1
    # The timeout is about the first byte only: a kept-alive connection may idle longer.
    await trio.sleep(1.0)
    assert (await _exchange(talking)).endswith(b"ok")
    assert upstream.connections == 1


async def test_over_the_cap_new_connection_closed_existing_kept(
    nursery: trio.Nursery, tmp_path: Path, clients: Clients
) -> None:
    sidecar, port, _ = await _sidecar(nursery, tmp_path, max_connections=2)
    first = await clients.open(port)
    second = await clients.open(port)
    assert (await _exchange(first)).endswith(b"ok")
    assert (await _exchange(second)).endswith(b"ok")
    third = await clients.open(port)
    assert await _closed(third)
    assert (await _limit_stats(sidecar))["over_limit"] == 1
    assert (await _exchange(first)).endswith(b"ok")
    assert (await _exchange(second)).endswith(b"ok")
    await first.aclose()
    fourth = await clients.open(port)
    # Room again once one closes (its task may take a moment to end: retry, bounded).
    for _ in range(50):
        with contextlib.suppress(trio.BrokenResourceError):
            if (await _exchange(fourth)).endswith(b"ok"):
                break
        await trio.sleep(0.1)
        fourth = await clients.open(port)
    else:
        raise AssertionError("no room after a connection closed")


async def test_full_listener_closes_the_oldest_silent_connection(
    nursery: trio.Nursery, tmp_path: Path, clients: Clients
) -> None:
    sidecar, port, _ = await _sidecar(nursery, tmp_path, max_connections=2)
    active = await clients.open(port)
    assert (await _exchange(active)).endswith(b"ok")
    silent = await clients.open(port)
    newcomer = await clients.open(port)
    assert (await _exchange(newcomer)).endswith(b"ok")
    assert await _closed(silent)
    stats = await _limit_stats(sidecar)
    assert stats["idle_evicted"] == 1
    assert stats.get("over_limit", 0) == 0
    assert (await _exchange(active)).endswith(b"ok")


async def test_tcp_listener_lets_the_server_speak_first(
    nursery: trio.Nursery, tmp_path: Path, clients: Clients
) -> None:
    async def greeter(stream: trio.SocketStream) -> None:
        await stream.send_all(b"220 hello\r\n")
        await stream.receive_some(1)

    _, port, _ = await _sidecar(nursery, tmp_path, greeter, protocol="tcp")
    client = await clients.open(port)
    with trio.fail_after(TIMEOUT):
        assert await client.receive_some(100) == b"220 hello\r\n"


# -- 1100 idle connections against meshd at RLIMIT_NOFILE=256 ----------------------------------


def _flood_config(tmp_path: Path, upstream: UpstreamApp, **limits: Any) -> Path:
    boot = tmp_path / "bootstrap.yaml"
    write_yaml(boot, bootstrap_doc(app_port=upstream.port))
    snap = snapshot_doc(version=1, upstream_port=upstream.port)
    snap["listeners"][0].update(limits)
    write_yaml(tmp_path / "snapshot.yaml", snap)
    return boot


def _stat(sc: Any, event: str) -> int:
    return int(sc.stat(f"listener.api.limits.{event}") or 0)


@pytest.fixture
def upstream() -> Iterator[UpstreamApp]:
    with UpstreamApp() as app:
        yield app


@contextlib.contextmanager
def _flooded_sidecar(
    tmp_path: Path, upstream: UpstreamApp, **limits: Any
) -> Iterator[tuple[Any, Callable[[], None]]]:
    """meshd under ``prlimit --nofile=256``, flooded with idle connections while inside.

    Yields the process and a check that a fresh request, and one on a connection kept alive
    since before the flood, are both answered 200.
    """
    boot = _flood_config(tmp_path, upstream, **limits)
    wrapper = ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"]
    with running_sidecar(boot, wrapper=wrapper) as sc:
        port = sc.listener_port("api")
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            kept.request("GET", "/")
            assert kept.getresponse().read() is not None

            def served() -> None:
                assert http_get(port, "/")[0] == 200
                kept.request("GET", "/")
                assert kept.getresponse().status == 200
                assert sc.running()

            with idle_connections(port, FLOOD):
                yield sc, served
        finally:
            kept.close()


def test_idle_flood_capped_below_nofile(tmp_path: Path, upstream: UpstreamApp) -> None:
    """The default cap sits below RLIMIT_NOFILE: the flood evicts itself, requests go on."""
    with _flooded_sidecar(tmp_path, upstream) as (sc, served):
        wait_for(
            lambda: _stat(sc, "idle_evicted") >= FLOOD - NOFILE,
            timeout=60,
            what="meshd to accept the flood",
        )
        served()  # right away: no waiting for the first-byte timeout
        assert _stat(sc, "accept_failed") == 0


def test_idle_flood_past_nofile_keeps_serving(tmp_path: Path, upstream: UpstreamApp) -> None:
    """A cap above RLIMIT_NOFILE: accept() fails with EMFILE, the loop keeps going."""
    limits = {"max_connections": 100_000, "first_byte_timeout_s": 2}
    with _flooded_sidecar(tmp_path, upstream, **limits) as (sc, served):
        wait_for(
            lambda: _stat(sc, "idle_evicted") + _stat(sc, "first_byte_timeout") >= FLOOD,
            timeout=60,
            what="the flood to be closed",
        )
        assert _stat(sc, "accept_failed") > 0
        served()
