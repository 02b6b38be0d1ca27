"""Probes of the local app behind a sidecar (what its registration's TTL check reports).

``tcp``: passing if the app accepts a connection. ``http``: ``GET <path>``; 2xx is passing, 429
warning, anything else (or no answer) critical, like Consul's HTTP checks.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

from meshcore.model import SocketAddr
from meshcore.model.bootstrap import AppCheck
from meshcore.registry import CheckStatus
from meshd.net.stream import open_tcp

__all__ = ["ProbeResult", "probe_app"]

_MAX_STATUS_LINE = 8192
_MAX_OUTPUT = 512


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe: the TTL check status to report, and its output."""

    status: CheckStatus
    output: str


async def probe_app(check: AppCheck, app: SocketAddr) -> ProbeResult:
    """Probe the local app once, within ``check.timeout_s``.

    ``tcp``: passing if it accepts a connection. ``http``: ``GET check.path``; 2xx is passing,
    429 warning, anything else (or no answer) critical, like Consul's HTTP checks. The output
    names the target and the outcome but no timing, so it stays the same while the app does.
    """
    if check.kind == "tcp":
        what = f"TCP connect {app}"
        result = await _bounded(partial(_tcp_probe, app, what), check.timeout_s, what)
    else:
        what = f"HTTP GET http://{app}{check.path}"
        result = await _bounded(partial(_http_probe, app, check.path, what), check.timeout_s, what)
    if len(result.output) > _MAX_OUTPUT:
        result = ProbeResult(result.status, result.output[:_MAX_OUTPUT])
    return result


async def _bounded(
    probe: Callable[[], Awaitable[ProbeResult]], timeout_s: float, what: str
) -> ProbeResult:
    with trio.move_on_after(timeout_s):
        return await probe()
    return ProbeResult("critical", f"{what}: timed out after {timeout_s:g}s")


async def _tcp_probe(app: SocketAddr, what: str) -> ProbeResult:
    try:
        stream = await open_tcp(app.host, app.port)
    except OSError as exc:
        return ProbeResult("critical", f"{what}: {_reason(exc)}")
    await stream.aclose()
    return ProbeResult("passing", f"{what}: success")


async def _http_probe(app: SocketAddr, path: str, what: str) -> ProbeResult:
    try:
        stream = await open_tcp(app.host, app.port)
    except OSError as exc:
        return ProbeResult("critical", f"{what}: {_reason(exc)}")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {app}\r\nUser-Agent: meshd-health-check\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    head = bytearray()
    try:
        await stream.send_all(request)
        while b"\r\n" not in head and len(head) < _MAX_STATUS_LINE:
            data = await stream.receive_some(_MAX_STATUS_LINE)
            if not data:
                break
            head += data
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        return ProbeResult("critical", f"{what}: connection failed: {exc}")
    finally:
        await stream.aclose()
    line = bytes(head).split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return ProbeResult("critical", f"{what}: no valid HTTP response")
    code = int(parts[1])
    text = f"{what}: {line[len(parts[0]) + 1 :]}"
    if 200 <= code < 300:
        return ProbeResult("passing", text)
    if code == 429:
        return ProbeResult("warning", text)
    return ProbeResult("critical", text)


def _reason(exc: OSError) -> str:
    """``Connection refused`` rather than ``cannot connect to ...: [Errno 111] ECONNREFUSED``."""
    inner = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if inner.errno:
        return os.strerror(inner.errno)
    return str(inner)
