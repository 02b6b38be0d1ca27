"""JSON access log lines from a real sidecar process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio
from helpers import SidecarProcess, TestApp, cluster, write_sidecar_config


def _access_lines(stderr: Path) -> list[dict[str, Any]]:
    lines = []
    for line in stderr.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "access":
            lines.append(record)
    return lines


async def _get(port: int, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}{path}", headers=headers)


async def test_access_log_lines_describe_each_request(tmp_path: Path, app: TestApp) -> None:
    app_port = app.port
    bootstrap = write_sidecar_config(
        tmp_path,
        service="web",
        app_port=app_port,
        listeners=[
            {
                "name": "api",
                "direction": "outbound",
                "address": "127.0.0.1:0",
                "cluster": "api",
            }
        ],
        clusters=[cluster("api", app_port)],
        extra={"access_log": {"enabled": True, "sample_rate": 1.0}},
    )
    sidecar = SidecarProcess(bootstrap)
    await sidecar.start()
    try:
        ok = await _get(sidecar.port(), "/echo?x=1", **{"x-request-id": "req-123"})
        missing = await _get(sidecar.port(), "/status/503")
        assert (ok.status_code, missing.status_code) == (200, 503)
        assert sidecar.stderr_path is not None
        with trio.fail_after(10):
            while len(lines := _access_lines(sidecar.stderr_path)) < 2:
                await trio.sleep(0.05)
    finally:
        await sidecar.stop()
    first, second = lines[:2]
    assert first["direction"] == "outbound"
    assert first["source"] == "web"
    assert first["destination"] == "api"
    assert first["method"] == "GET"
    assert first["path"] == "/echo?x=1"
    assert first["code"] == 200
    assert first["request_id"] == "req-123"
    assert first["upstream"] == f"127.0.0.1:{app_port}"
    assert first["error"] == ""
    assert first["duration_ms"] >= 0
    assert second["code"] == 503
    assert second["path"] == "/status/503"


async def _post(port: int, path: str, body: bytes, *, chunked: bool) -> httpx.Response:
    async def pieces() -> Any:
        yield body[:7]
        yield body[7:]

    async with httpx.AsyncClient() as client:
        content: Any = pieces() if chunked else body
        return await client.post(f"http://127.0.0.1:{port}{path}", content=content)


async def test_access_log_counts_body_bytes_once(tmp_path: Path, app: TestApp) -> None:
    """``bytes_in``/``bytes_out`` are the request's and the response's body bytes: not the head,
    and each body byte once, with and without a retry policy (which buffers the body to replay
    it), framed by Content-Length or chunked."""
    bootstrap = write_sidecar_config(
        tmp_path,
        service="web",
        app_port=app.port,
        listeners=[
            {"name": "api", "direction": "outbound", "address": "127.0.0.1:0", "route_table": "t"}
        ],
        clusters=[cluster("api", app.port)],
        route_tables=[
            {
                "name": "t",
                "routes": [
                    {
                        "name": "retried",
                        "match": {"path": {"prefix": "/retried"}},
                        "backends": [{"cluster": "api"}],
                        "retries": {"attempts": 3, "retry_on": ["connect-failure"]},
                    },
                    {"name": "plain", "backends": [{"cluster": "api"}]},
                ],
            }
        ],
        extra={"access_log": {"enabled": True, "sample_rate": 1.0}},
    )
    body = b"0123456789" * 123  # 1230 bytes
    cases = [(p, c) for p in ("/retried", "/plain") for c in (False, True)]
    sidecar = SidecarProcess(bootstrap)
    await sidecar.start()
    try:
        sizes = []
        for path, chunked in cases:
            response = await _post(sidecar.port(), path, body, chunked=chunked)
            assert response.status_code == 200
            assert response.json()["body_len"] == len(body)
            sizes.append(len(response.content))
        assert sidecar.stderr_path is not None
        with trio.fail_after(10):
            while len(lines := _access_lines(sidecar.stderr_path)) < len(cases):
                await trio.sleep(0.05)
    finally:
        await sidecar.stop()
    got = [(line["path"], line["route"], line["bytes_in"], line["bytes_out"]) for line in lines]
    want = [(path, path[1:], len(body), size) for (path, _), size in zip(cases, sizes, strict=True)]
    assert got == want
