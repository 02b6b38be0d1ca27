"""Bodies are streamed through the proxy, not buffered: proofs by gating, and by memory use.

The gated tests make the app (or the client) wait for the other side to have seen the first
part of a body before producing the rest: a proxy that buffered whole bodies would deadlock
there, which the bounded waits turn into a failure. The 100 MB tests run the sidecars in
subprocesses and read their peak RSS from /proc.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio
from helpers import (
    TIMEOUT,
    Chain,
    RawClient,
    SidecarProcess,
    TestApp,
    closed_port,
    cluster,
    pattern,
    pattern_sha256,
    request,
    write_sidecar_config,
)

MB = 1024 * 1024


async def test_response_body_streams_before_it_ends(chain: Chain, app: TestApp) -> None:
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/gated-stream"))
        resp = await client.read_head()
        assert resp.status == 200
        pieces = client.body_pieces(resp)
        received = b""
        while len(received) < len(b"first-piece"):
            received += await anext(pieces)
        assert received == b"first-piece"
        # Only now may the app finish its response.
        app.gate.set()
        async for piece in pieces:
            received += piece
    assert received == b"first-piecesecond-piece"


async def test_request_body_streams_before_it_ends(chain: Chain, app: TestApp) -> None:
    async with RawClient.connect(chain.port) as client:
        await client.send(request("POST", "/upload", headers=[("Transfer-Encoding", "chunked")]))
        first = b"a" * 5000
        await client.send(b"%x\r\n%s\r\n" % (len(first), first))
        # The app has the first part of the body before the client sends the rest.
        with trio.fail_after(TIMEOUT):
            while app.upload_progress < len(first):
                await trio.sleep(0.01)
        second = b"b" * 3000
        await client.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(second), second))
        resp = await client.read_response()
    body = first + second
    assert resp.json() == {"count": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_content_length_request_body_streams(chain: Chain, app: TestApp) -> None:
    first = b"c" * 20000
    async with RawClient.connect(chain.port) as client:
        await client.send(request("POST", "/upload", headers=[("Content-Length", "30000")]) + first)
        with trio.fail_after(TIMEOUT):
            while app.upload_progress < len(first):
                await trio.sleep(0.01)
        await client.send(b"d" * 10000)
        resp = await client.read_response()
    assert resp.json()["count"] == 30000


# -- 100 MB through two sidecar processes -----------------------------------------------------

SIZE = 100 * MB
#: Allowed growth of a sidecar's peak RSS over its RSS after warm-up.
MAX_GROWTH_KB = 30 * 1024


async def _start_chain_processes(
    tmp_path: Path, app_port: int
) -> tuple[SidecarProcess, SidecarProcess]:
    inbound = SidecarProcess(
        write_sidecar_config(
            tmp_path / "api",
            service="api",
            app_port=app_port,
            listeners=[{"name": "inbound", "direction": "inbound", "address": "127.0.0.1:0"}],
        )
    )
    await inbound.start()
    outbound = SidecarProcess(
        write_sidecar_config(
            tmp_path / "web",
            service="web",
            app_port=closed_port(),
            listeners=[
                {"name": "api", "direction": "outbound", "address": "127.0.0.1:0", "cluster": "api"}
            ],
            clusters=[cluster("api", inbound.port())],
        )
    )
    try:
        await outbound.start()
    except BaseException:
        await inbound.stop()
        raise
    return inbound, outbound


async def _upload(port: int, size: int, *, chunked: bool = False) -> dict[str, object]:
    framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))
    async with RawClient.connect(port) as client:
        await client.send(request("POST", "/upload", headers=[framing]))
        for piece in pattern(size):
            await client.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            await client.send(b"0\r\n\r\n")
        resp = await client.read_response(timeout=30)
    assert resp.status == 200
    result: dict[str, object] = resp.json()
    return result


async def _download(port: int, size: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    count = 0
    async with RawClient.connect(port) as client:
        await client.send(request("GET", f"/stream?size={size}"))
        resp = await client.read_head()
        assert resp.status == 200
        async for piece in client.body_pieces(resp):
            digest.update(piece)
            count += len(piece)
    return count, digest.hexdigest()


@pytest.mark.slow
async def test_100mb_uploads_and_download_with_flat_memory(tmp_path: Path, app: TestApp) -> None:
    inbound, outbound = await _start_chain_processes(tmp_path, app.port)
    try:
        with trio.fail_after(90):
            port = outbound.port()
            # Warm up: pools, buffers and lazily imported code are in place before measuring.
            assert (await _upload(port, MB))["count"] == MB
            assert (await _download(port, MB))[0] == MB
            before = {p: p.status() for p in (inbound, outbound)}

            expected = {"count": SIZE, "sha256": pattern_sha256(SIZE)}
            assert await _upload(port, SIZE) == expected
            assert await _upload(port, SIZE, chunked=True) == expected
            count, digest = await _download(port, SIZE)
            assert (count, digest) == (SIZE, pattern_sha256(SIZE))

            for proc, name in ((inbound, "inbound"), (outbound, "outbound")):
                after = proc.status()
                growth = after["VmHWM"] - before[proc]["VmRSS"]
                assert growth < MAX_GROWTH_KB, (
                    f"{name} sidecar peak RSS grew by {growth} KiB moving {SIZE} bytes "
                    f"(before {before[proc]}, after {after})"
                )
    finally:
        with trio.CancelScope(shield=True):
            await outbound.stop()
            await inbound.stop()
