"""Route policies on the request path, through a real sidecar to real backends: retries,
per-try deadlines, faults, header edits, rewrites, escaped slashes, mirroring.

Each mechanism is proven by what the backend saw (requests counted, heads recorded) and
what the client got. Snapshots come from files, so routes and clusters are written directly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import (
    RawClient,
    RawServer,
    TestApp,
    admin_get,
    app_headers,
    closed_port,
    port_of,
    read_head,
    request,
    reset,
    start_sidecar,
    write_sidecar_config,
)

pytestmark = pytest.mark.timeout(60)


class Backend:
    """A keep-alive HTTP/1.1 backend answering every request with ``status``; it records the
    request heads it saw (bodies, framed by Content-Length, are read and counted)."""

    def __init__(self, status: int = 200, *, hang: bool = False) -> None:
        self.status = status
        self.hang = hang
        self.heads: list[bytes] = []
        self.body_bytes = 0
        self.server = RawServer(self._handle)

    @property
    def requests(self) -> int:
        return len(self.heads)

    async def start(self, nursery: trio.Nursery) -> int:
        port: int = await nursery.start(self.server.run)
        return port

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        while True:
            head = await read_head(stream, buf)
            if not head:
                return
            self.heads.append(head)
            match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            left = int(match.group(1)) if match else 0
            while left > 0:
                if not buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                take = min(left, len(buf))
                del buf[:take]
                left -= take
                self.body_bytes += take
            if self.hang:
                await trio.sleep_forever()
            body = b"status %d" % self.status
            await stream.send_all(
                b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nx-backend: %d\r\n\r\n%s"
                % (self.status, len(body), self.status, body)
            )


def _endpoint(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port}


async def _sidecar(
    nursery: trio.Nursery,
    directory: Path,
    ports: list[int],
    route: dict[str, Any],
    *,
    listener: dict[str, Any] | None = None,
    clusters: list[dict[str, Any]] | None = None,
) -> tuple[Any, int]:
    """A sidecar whose listener ``out`` routes by the table ``main`` (one ``route`` to
    cluster ``up``, round robin over ``ports``)."""
    path = write_sidecar_config(
        directory,
        service="web",
        app_port=closed_port(),
        listeners=[
            {
                "name": "out",
                "direction": "outbound",
                "address": "127.0.0.1:0",
                "route_table": "main",
                **(listener or {}),
            }
        ],
        clusters=[
            {"name": "up", "service": "api", "endpoints": [_endpoint(p) for p in ports]},
            *(clusters or []),
        ],
        route_tables=[
            {"name": "main", "routes": [{"name": "r", "backends": [{"cluster": "up"}], **route}]}
        ],
    )
    sidecar = await start_sidecar(nursery, path)
    return sidecar, port_of(sidecar, "out")


async def _call(
    port: int, method: str = "GET", target: str = "/", **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    async with RawClient.connect(port) as client:
        await client.send(request(method, target, **kwargs))
        resp = await client.read_response()
    return resp.status, {k: resp.header(k) or "" for k in ("x-meshd-error", "x-backend")}, resp.body


async def _metric(sidecar: Any, name: str, **labels: str) -> float:
    text = (await admin_get(sidecar, "/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- retries ------------------------------------------------------------------------------


async def test_retry_attempts_as_the_backend_saw_them(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = Backend(503)
    port = await backend.start(nursery)
    retries = {"attempts": 3, "retry_on": ["gateway-error"], "backoff_base_s": 0.001}
    sidecar, out = await _sidecar(nursery, tmp_path, [port], {"retries": retries})
    status, headers, _ = await _call(out)
    # The last try's answer is the upstream's own, relayed: not a proxy error.
    assert (status, headers["x-backend"], headers["x-meshd-error"]) == (503, "503", "")
    assert backend.requests == 3
    assert (
        await _metric(sidecar, "meshd_upstream_retries_total", cluster="up", reason="gateway-error")
        == 2
    )


async def test_statuses_not_in_retry_on_are_not_retried(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = Backend(500)
    port = await backend.start(nursery)
    retries = {"attempts": 3, "retry_on": ["gateway-error"], "retriable_status_codes": [418]}
    _, out = await _sidecar(nursery, tmp_path, [port], {"retries": retries})
    assert (await _call(out))[0] == 500
    assert backend.requests == 1


async def test_retry_goes_to_the_other_endpoint(nursery: trio.Nursery, tmp_path: Path) -> None:
    bad, good = Backend(503), Backend(200)
    ports = [await bad.start(nursery), await good.start(nursery)]
    retries = {"attempts": 2, "retry_on": ["5xx"], "backoff_base_s": 0.001}
    _, out = await _sidecar(nursery, tmp_path, ports, {"retries": retries})
    for _ in range(10):
        status, headers, _ = await _call(out)
        assert (status, headers["x-backend"]) == (200, "200")
    assert good.requests == 10
    assert 1 <= bad.requests <= 10


async def test_connect_failure_retried_on_a_live_endpoint(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    retries = {"attempts": 3, "retry_on": ["connect-failure"], "backoff_base_s": 0.001}
    _, out = await _sidecar(nursery, tmp_path, [closed_port(), app.port], {"retries": retries})
    for method in ("GET", "POST"):
        for _ in range(6):
            status, headers, _ = await _call(out, method, "/echo", body=b"x" * 10)
            assert (status, headers["x-meshd-error"]) == (200, ""), method
    assert app.requests == 12


async def test_large_streamed_body_still_retried_on_connect_failure(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    """A body over the replay bound streams, but a connect failure sent nothing of it."""
    retries = {"attempts": 2, "retry_on": ["connect-failure"], "backoff_base_s": 0.001}
    _, out = await _sidecar(nursery, tmp_path, [closed_port(), app.port], {"retries": retries})
    body = bytes(range(256)) * 1024  # 256 KiB
    for _ in range(4):
        async with RawClient.connect(out) as client:
            await client.send(request("POST", "/upload", body=body))
            resp = await client.read_response()
        assert resp.status == 200
        assert resp.json()["count"] == len(body)


async def test_retriable_status_codes(nursery: trio.Nursery, tmp_path: Path) -> None:
    backend = Backend(429)
    port = await backend.start(nursery)
    retries = {"attempts": 3, "retry_on": [], "retriable_status_codes": [429]}
    sidecar, out = await _sidecar(nursery, tmp_path, [port], {"retries": retries})
    assert (await _call(out))[0] == 429
    assert backend.requests == 3
    labels = {"cluster": "up", "reason": "status"}
    assert await _metric(sidecar, "meshd_upstream_retries_total", **labels) == 2


async def test_route_timeout_covers_all_tries(nursery: trio.Nursery, tmp_path: Path) -> None:
    hang = Backend(hang=True)
    port = await hang.start(nursery)
    retries = {"attempts": 10, "retry_on": ["gateway-error"], "per_try_timeout_s": 0.3}
    _, out = await _sidecar(nursery, tmp_path, [port], {"retries": retries, "timeout_s": 0.5})
    status, headers, _ = await _call(out)
    assert (status, headers["x-meshd-error"]) == (504, "upstream_timeout")
    assert 1 <= hang.requests <= 2


async def test_without_retries_a_dead_endpoint_fails_its_share(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    _, out = await _sidecar(nursery, tmp_path, [closed_port(), app.port], {})
    results = [await _call(out, "GET", "/echo") for _ in range(4)]
    assert sorted(r[0] for r in results) == [200, 200, 502, 502]


async def test_post_not_retried_on_a_response(nursery: trio.Nursery, tmp_path: Path) -> None:
    backend = Backend(503)
    port = await backend.start(nursery)
    retries = {"attempts": 3, "retry_on": ["gateway-error", "connect-failure"]}
    _, out = await _sidecar(nursery, tmp_path, [port], {"retries": retries})
    assert (await _call(out, "POST", "/", body=b"data"))[0] == 503
    assert backend.requests == 1
    assert (await _call(out, "PUT", "/", body=b"data"))[0] == 503
    assert backend.requests == 4
    assert backend.body_bytes == 16  # each try carried the whole body


async def test_no_retry_once_response_bytes_went_out(nursery: trio.Nursery, tmp_path: Path) -> None:
    seen = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal seen
        if not await read_head(stream):
            return
        seen += 1
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await trio.sleep(0.05)
        reset(stream)

    upstream = RawServer(handler)
    await nursery.start(upstream.run)
    retries = {"attempts": 3, "retry_on": ["reset", "5xx"]}
    _, out = await _sidecar(nursery, tmp_path, [upstream.port], {"retries": retries})
    async with RawClient.connect(out) as client:
        await client.send(request("GET", "/"))
        resp = await client.read_head()
        assert resp.status == 200
        _, how = await client.read_until_closed()
        assert how in ("eof", "reset")
    assert seen == 1


async def test_reset_before_the_response_is_retried(nursery: trio.Nursery, tmp_path: Path) -> None:
    seen = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal seen
        buf = bytearray()
        while await read_head(stream, buf):
            seen += 1
            if seen == 1:
                reset(stream)
                return
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    upstream = RawServer(handler)
    await nursery.start(upstream.run)
    retries = {"attempts": 2, "retry_on": ["reset"], "backoff_base_s": 0.001}
    _, out = await _sidecar(nursery, tmp_path, [upstream.port], {"retries": retries})
    status, _, body = await _call(out)
    assert (status, body, seen) == (200, b"ok", 2)


async def test_body_over_64_kib_not_retried(nursery: trio.Nursery, tmp_path: Path) -> None:
    backend = Backend(503)
    port = await backend.start(nursery)
    retries = {"attempts": 3, "retry_on": ["gateway-error"], "backoff_base_s": 0.001}
    _, out = await _sidecar(nursery, tmp_path, [port], {"retries": retries})
    assert (await _call(out, "PUT", "/", body=b"s" * 65536))[0] == 503
    assert backend.requests == 3
    assert (await _call(out, "PUT", "/", body=b"b" * (65536 + 1)))[0] == 503
    assert backend.requests == 4
    assert backend.body_bytes == 3 * 65536 + 65537


async def test_per_try_timeout_moves_on_to_a_live_endpoint(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    hang, good = Backend(hang=True), Backend(200)
    ports = [await hang.start(nursery), await good.start(nursery)]
    retries = {"attempts": 2, "retry_on": ["gateway-error"], "per_try_timeout_s": 0.2}
    _, out = await _sidecar(nursery, tmp_path, ports, {"retries": retries, "timeout_s": 5})
    for _ in range(4):
        status, headers, _ = await _call(out)
        assert (status, headers["x-backend"]) == (200, "200")
    assert hang.requests >= 1


async def test_per_try_timeout_on_the_last_try_is_504(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    hang = Backend(hang=True)
    port = await hang.start(nursery)
    retries = {"attempts": 2, "retry_on": ["gateway-error"], "per_try_timeout_s": 0.2}
    _, out = await _sidecar(nursery, tmp_path, [port], {"retries": retries, "timeout_s": 5})
    status, headers, _ = await _call(out)
    assert (status, headers["x-meshd-error"]) == (504, "upstream_timeout")
    assert hang.requests == 2


# -- faults -----------------------------------------------------------------------------------


async def test_fault_abort(nursery: trio.Nursery, tmp_path: Path, app: TestApp) -> None:
    fault = {"abort": {"percent": 100, "status": 418}, "headers": [{"name": "x-chaos"}]}
    sidecar, out = await _sidecar(nursery, tmp_path, [app.port], {"fault": fault})
    status, headers, _ = await _call(out, headers=[("x-chaos", "1")])
    assert (status, headers["x-meshd-error"]) == (418, "fault_abort")
    assert app.requests == 0
    assert (await _call(out, "GET", "/echo"))[0] == 200  # no header: no fault
    assert app.requests == 1
    assert await _metric(sidecar, "meshd_faults_injected_total", route="r", kind="abort") == 1


async def test_fault_at_zero_percent_never_fires(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    fault = {"abort": {"percent": 0, "status": 500}, "delay": {"percent": 0, "fixed_delay_s": 5}}
    _, out = await _sidecar(nursery, tmp_path, [app.port], {"fault": fault})
    for _ in range(5):
        assert (await _call(out, "GET", "/echo"))[0] == 200
    assert app.requests == 5


async def test_fault_delay(nursery: trio.Nursery, tmp_path: Path, app: TestApp) -> None:
    fault = {"delay": {"percent": 100, "fixed_delay_s": 0.3}}
    sidecar, out = await _sidecar(nursery, tmp_path, [app.port], {"fault": fault})
    start = trio.current_time()
    assert (await _call(out, "GET", "/echo"))[0] == 200
    assert trio.current_time() - start >= 0.25
    assert await _metric(sidecar, "meshd_faults_injected_total", route="r", kind="delay") == 1


# -- headers and rewrites -------------------------------------------------------------------


async def test_header_edits_seen_by_app_and_client(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    route = {
        "request_headers": {
            "remove": ["x-secret"],
            "set": {"x-env": "prod"},
            "add": {"x-tag": "mesh"},
        },
        "response_headers": {"remove": ["content-type"], "set": {"x-served-by": "meshd"}},
    }
    _, out = await _sidecar(nursery, tmp_path, [app.port], route)
    async with RawClient.connect(out) as client:
        headers = [("X-Secret", "s"), ("X-Env", "dev"), ("X-Tag", "client")]
        await client.send(request("GET", "/echo", headers=headers))
        resp = await client.read_response()
    seen = app_headers(resp.json())
    assert "x-secret" not in seen
    assert seen["x-env"] == ["prod"]
    assert seen["x-tag"] == ["client", "mesh"]
    assert resp.header("x-served-by") == "meshd"
    assert resp.header("content-type") is None


async def test_response_edits_skip_the_proxys_own_answers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    route = {"response_headers": {"set": {"x-served-by": "meshd"}}}
    _, out = await _sidecar(nursery, tmp_path, [closed_port()], route)
    async with RawClient.connect(out) as client:
        await client.send(request("GET", "/"))
        resp = await client.read_response()
    assert (resp.status, resp.header("x-meshd-error")) == (502, "upstream_connect_failed")
    assert resp.header("x-served-by") is None


async def test_path_prefix_rewrite_keeps_the_query(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    route = {"match": {"path": {"prefix": "/api/"}}, "rewrite": {"path_prefix": "/v1/"}}
    _, out = await _sidecar(nursery, tmp_path, [app.port], route)
    async with RawClient.connect(out) as client:
        await client.send(request("GET", "/api/items/7?q=1&x=/api/"))
        resp = await client.read_response()
    echo = resp.json()
    assert (echo["path"], echo["query"]) == ("/v1/items/7", "q=1&x=/api/")


async def test_host_rewrite(nursery: trio.Nursery, tmp_path: Path, app: TestApp) -> None:
    _, out = await _sidecar(nursery, tmp_path, [app.port], {"rewrite": {"host": "internal.api"}})
    async with RawClient.connect(out) as client:
        await client.send(request("GET", "/echo", host="api.test:8080"))
        resp = await client.read_response()
    assert app_headers(resp.json())["host"] == ["internal.api"]


# -- escaped slashes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "status", "seen"),
    [
        ("keep", 200, b"GET /a%2Fb%5Cc?q=%2F "),
        ("unescape", 200, b"GET /a/b\\c?q=%2F "),
        ("reject", 400, None),
        ("redirect", 307, None),
    ],
)
async def test_escaped_slashes(
    nursery: trio.Nursery, tmp_path: Path, action: str, status: int, seen: bytes | None
) -> None:
    backend = Backend(200)
    port = await backend.start(nursery)
    _, out = await _sidecar(
        nursery, tmp_path, [port], {}, listener={"path_with_escaped_slashes": action}
    )
    async with RawClient.connect(out) as client:
        await client.send(request("GET", "/a%2fb%5Cc?q=%2F"))
        resp = await client.read_response()
    assert resp.status == status
    if seen is not None:
        assert backend.heads[0].startswith(seen), backend.heads
    else:
        assert backend.requests == 0
    if action == "reject":
        assert resp.header("x-meshd-error") == "escaped_slash"
    if action == "redirect":
        assert resp.header("location") == "/a/b\\c?q=%2F"


# -- mirroring ------------------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.copies: list[tuple[str, bytes]] = []

    def submit(self, cluster: str, request: bytes) -> bool:
        self.copies.append((cluster, request))
        return True


async def test_mirror_hands_a_copy_to_the_sink(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    route = {"mirror": {"cluster": "shadow", "percent": 100}}
    shadow = {"name": "shadow", "service": "shadow", "endpoints": [_endpoint(closed_port())]}
    sidecar, out = await _sidecar(nursery, tmp_path, [app.port], route, clusters=[shadow])
    sink = _Sink()
    sidecar.shared.mirror = sink
    async with RawClient.connect(out) as client:
        await client.send(request("POST", "/echo?x=1", host="api.test:8080", body=b"hello"))
        assert (await client.read_response()).status == 200
    [(cluster, copy)] = sink.copies
    assert cluster == "shadow"
    assert copy.startswith(b"POST /echo?x=1 HTTP/1.1\r\n")
    assert b"\r\nhost: api.test-shadow:8080\r\n" in copy.lower()
    assert copy.endswith(b"\r\n\r\nhello")
    assert app.requests == 1
