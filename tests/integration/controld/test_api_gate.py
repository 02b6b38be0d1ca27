"""controld's API checks before it reads: credential and size before the body, bounded JSON.

A real daemon in-process (hypercorn on the admin listener, the lean server on the push
listener); raw sockets where the point is what the server does with bytes it hasn't read.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio
from daemon_support import TIMEOUT, api_url, running_daemon

from controld.daemon import ControlDaemon

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20
ROUTE = {
    "kind": "HTTPRoute",
    "metadata": {"name": "r"},
    "spec": {"service": "api", "rules": [{"backends": [{"weight": 1}]}]},
}


def rss_bytes() -> int:
    """This process's resident set (the daemon runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def push_url(daemon: ControlDaemon) -> str:
    assert daemon.ports is not None and daemon.ports.push_port is not None
    return f"http://127.0.0.1:{daemon.ports.push_port}"


async def read_head(stream: trio.SocketStream) -> bytes:
    """The response head (bounded in size and time)."""
    data = b""
    with trio.fail_after(TIMEOUT):
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize("listener", ["admin", "push"])
async def test_a_huge_body_without_token_is_refused_unread(tmp_path: Path, listener: str) -> None:
    """On hypercorn (admin) and on the lean server (push, TLS) alike."""
    async with running_daemon(tmp_path / "data") as (daemon, _http):
        assert daemon.ports is not None and daemon.ports.push_port is not None
        before = rss_bytes()
        port = daemon.ports.admin_port if listener == "admin" else daemon.ports.push_port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            head = (
                b"PUT /v1/resources HTTP/1.1\r\nHost: controld\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (100 * MIB)
            )
            await stream.send_all(head)
            # The answer comes before any of the body was sent.
            answer = await read_head(stream)
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
            assert b"connection: close" in answer.lower()
            # The server reads no more: the 100 MiB never get through.
            chunk = b"x" * MIB
            sent = 0
            with trio.move_on_after(5):
                try:
                    while sent < 100 * MIB:
                        await stream.send_all(chunk)
                        sent += len(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            assert sent < 100 * MIB
        # Loose: the 100 MiB would show as ~200 MB (read, then joined) if they were read.
        assert rss_bytes() - before < 50 * MIB


@pytest.mark.parametrize("listener", ["admin", "push"])
async def test_invalid_json_without_token_is_401_not_422(tmp_path: Path, listener: str) -> None:
    async with running_daemon(tmp_path / "data") as (daemon, http):
        url = api_url(http) if listener == "admin" else push_url(daemon)
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as anonymous:
            for body in (b"{not json", b"[" * 10_000, b'{"resources": [1, 2'):
                resp = await anonymous.put(
                    "/v1/resources", content=body, headers={"content-type": "application/json"}
                )
                assert resp.status_code == 401, resp.text
                assert resp.headers["www-authenticate"] == "Bearer"
                assert "problems" in resp.json() and not resp.json()["problems"]
            bad = {"Authorization": "Bearer wrong-token-wrong-token"}
            resp = await anonymous.post("/v1/tokens/sidecar", content=b"{", headers=bad)
            assert resp.status_code == 401, resp.text


@pytest.mark.parametrize("listener", ["admin", "push"])
async def test_bad_json_with_token_is_422_never_500(tmp_path: Path, listener: str) -> None:
    async with running_daemon(tmp_path / "data") as (daemon, http):
        url = api_url(http) if listener == "admin" else push_url(daemon)
        async with httpx.AsyncClient(
            base_url=url, headers=dict(http.headers), timeout=TIMEOUT
        ) as client:
            surrogate = json.dumps({"resources": [ROUTE]}).replace('"r"', '"\\ud800"')
            deep = b'{"resources": [' + b"[" * 5000 + b"]" * 5000 + b"]}"
            # The same key twice: one parser takes the first, another the last; refused.
            twice = json.dumps({"resources": [ROUTE]}).replace('"r"', '"r", "name": "x"')
            for body in (surrogate.encode(), deep, b"\xff\xfe", b"{not json", twice.encode()):
                resp = await client.put(
                    "/v1/resources", content=body, headers={"content-type": "application/json"}
                )
                assert resp.status_code == 422, resp.text
                assert resp.json()["problems"][0]["path"] == "body"
            # The same without a content type (older FastAPI versions parse it as JSON too).
            resp = await client.put("/v1/resources", content=surrogate.encode())
            assert resp.status_code == 422, resp.text
            resp = await client.put("/v1/resources", json={"resources": [ROUTE]})
            assert resp.status_code == 200, resp.text
            assert (await client.get("/v1/resources")).status_code == 200


async def test_the_body_limit_is_checked_before_and_while_reading(tmp_path: Path) -> None:
    limit = 64 * 1024
    async with running_daemon(tmp_path / "data", api_max_body_bytes=limit) as (daemon, http):
        assert daemon.ports is not None
        token = http.headers["authorization"]
        # Announced over the limit: 413 at once, before any of the body is sent.
        stream = await trio.open_tcp_stream("127.0.0.1", daemon.ports.admin_port)
        async with stream:
            await stream.send_all(
                b"PUT /v1/resources HTTP/1.1\r\nHost: controld\r\nAuthorization: %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (token.encode(), limit + 1)
            )
            answer = await read_head(stream)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

        # Chunked: counted while read, refused at the limit (twice the limit is offered).
        stream = await trio.open_tcp_stream("127.0.0.1", daemon.ports.admin_port)
        async with stream:
            await stream.send_all(
                b"PUT /v1/resources HTTP/1.1\r\nHost: controld\r\nAuthorization: %s\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                % token.encode()
            )
            with trio.move_on_after(5):
                try:
                    for _ in range(2 * limit // 4096):
                        await stream.send_all(b"1000\r\n" + b" " * 4096 + b"\r\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            answer = await read_head(stream)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        # Just under the limit is read and parsed as usual.
        padded = json.dumps({"resources": [ROUTE]}).encode().ljust(limit - 10)
        resp = await http.put(
            "/v1/resources", content=padded, headers={"content-type": "application/json"}
        )
        assert resp.status_code == 200, resp.text
        # The daemon keeps answering on a fresh connection.
        assert (await http.get("/v1/resources")).json()["revision"] == 1
