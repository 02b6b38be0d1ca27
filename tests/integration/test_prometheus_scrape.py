"""A real Prometheus (Debian's package) scrapes a real sidecar process's admin ``/metrics``.

meshd writes the text format itself (:mod:`meshd.exposition`); the unit tests compare its text
with prometheus-client's, this test with what matters: Prometheus parses every scrape (the
target is up, no error), stores the label values as meshd was given them (a route, a cluster
and a destination service named with a double quote, a backslash, a line feed and non-ASCII
letters), counts what was sent, computes a quantile over the duration histogram, and
``promtool check metrics`` finds nothing to say about the body.

The binaries come from ``scripts/fetch-prometheus`` (Debian's prometheus package, downloaded
and unpacked, not installed) into ``.cache/prometheus`` or ``$MESHD_PROMETHEUS_DIR``; else from
PATH. Without them the test skips, except under CI, where ``.ci/run`` fetches them: there it
fails.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from helpers import (
    REPO,
    RawClient,
    SidecarProcess,
    TestApp,
    closed_port,
    request,
    stop_process,
    write_sidecar_config,
)
from process_support import admin_port_pair

pytestmark = pytest.mark.timeout(60)

#: Where ``scripts/fetch-prometheus`` puts the binaries.
PROMETHEUS_DIR = Path(os.environ.get("MESHD_PROMETHEUS_DIR") or REPO / ".cache" / "prometheus")
#: Label values that must be escaped in the text format (``"``, ``\\``, line feed) or encoded.
ODD_ROUTE = 'the "odd" route \\ on two\nlines, ünïcödé'
ODD_CLUSTER = 'cl"us\\ter\n1'
ODD_SERVICE = 'up"stream\\svc\n'
#: Requests sent: (method, path, expected status) and how many of each.
SENT = {("GET", "/odd/x", 200): 4, ("POST", "/plain", 200): 3, ("GET", "/status/404", 404): 2}
PROCESS_METRICS = {
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
    "process_max_fds",
}
#: Bound of each wait on Prometheus (start, first scrapes).
WAIT_S = 20.0


def _tool(name: str) -> Path | None:
    cached = PROMETHEUS_DIR / name
    if os.access(cached, os.X_OK):
        return cached
    found = shutil.which(name)
    return Path(found) if found else None


@pytest.fixture
def tools() -> tuple[Path, Path]:
    """``prometheus`` and ``promtool``; skips without them (fails under CI). A plain fixture:
    a skip raised inside the Trio test would reach pytest without its reason."""
    prometheus, promtool = _tool("prometheus"), _tool("promtool")
    if prometheus is None or promtool is None:
        problem = (
            f"no prometheus/promtool in {PROMETHEUS_DIR} or on PATH: run ./scripts/fetch-prometheus"
            " (it unpacks them from Debian's prometheus package, installing nothing)"
        )
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return prometheus, promtool


def sidecar_config(directory: Path, app_port: int, admin_port: int) -> Path:
    """Service ``web``: outbound listener ``out``; ``/odd`` goes to the oddly named cluster
    (service), the rest to ``up``; both are the test app."""
    return write_sidecar_config(
        directory,
        service="web",
        app_port=closed_port(),
        admin_port=admin_port,
        listeners=[
            {
                "name": "out",
                "direction": "outbound",
                "address": "127.0.0.1:0",
                "route_table": "main",
            }
        ],
        clusters=[
            {
                "name": ODD_CLUSTER,
                "service": ODD_SERVICE,
                "endpoints": [{"host": "127.0.0.1", "port": app_port}],
            },
            {"name": "up", "service": "up", "endpoints": [{"host": "127.0.0.1", "port": app_port}]},
        ],
        route_tables=[
            {
                "name": "main",
                "routes": [
                    {
                        "name": ODD_ROUTE,
                        "match": {"path": {"prefix": "/odd"}},
                        "backends": [{"cluster": ODD_CLUSTER}],
                    },
                    {"name": "plain", "backends": [{"cluster": "up"}]},
                ],
            }
        ],
    )


async def send_requests(port: int) -> None:
    """Everything in :data:`SENT`, on one keep-alive connection."""
    async with RawClient.connect(port) as client:
        for (method, path, status), count in SENT.items():
            for _ in range(count):
                await client.send(request(method, path, headers=[("Content-Length", "0")]))
                resp = await client.read_response()
                assert resp.status == status, (method, path, resp.status)


@asynccontextmanager
async def running_prometheus(binary: Path, directory: Path, target: int) -> AsyncIterator[str]:
    """Prometheus on 127.0.0.1 (a free port), storage in ``directory``, scraping
    127.0.0.1:``target`` every 250 ms as job ``meshd``; yields its base URL. Stopped by PID
    (SIGTERM, then SIGKILL) however the block ends."""
    directory.mkdir(parents=True)
    config = {
        "global": {"scrape_interval": "250ms", "scrape_timeout": "250ms"},
        "scrape_configs": [
            {"job_name": "meshd", "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = closed_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=directory,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:

            async def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"prometheus exited: {log.read_text()}")
                try:
                    return (await client.get("/-/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(ready, "prometheus ready", log.read_text)
        yield base
    finally:
        stop_process(proc)


async def until(
    check: Callable[[], Awaitable[bool]], what: str, detail: Callable[[], str] = str
) -> None:
    """Poll ``check`` every 100 ms for at most :data:`WAIT_S`; ``detail()`` goes into the
    failure message."""
    with trio.move_on_after(WAIT_S):
        while not await check():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"timed out waiting for {what}: {detail()}")


async def query(client: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    resp = await client.get("/api/v1/query", params={"query": promql})
    body = resp.json()
    assert body["status"] == "success", body
    assert body["data"]["resultType"] == "vector", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


#: A series' own labels, sorted: what identifies it within its family.
Key = tuple[tuple[str, str], ...]


def key(metric: dict[str, str], *, drop: tuple[str, ...] = ()) -> Key:
    """A series' labels without the ones Prometheus adds (name, job, instance) and ``drop``."""
    skip = {"__name__", "job", "instance", *drop}
    return tuple(sorted((k, v) for k, v in metric.items() if k not in skip))


async def values(client: httpx.AsyncClient, promql: str) -> dict[Key, float]:
    """An instant query's values by :func:`key`."""
    return {key(s["metric"]): float(s["value"][1]) for s in await query(client, promql)}


async def test_prometheus_scrapes_sidecar_metrics(
    tools: tuple[Path, Path], tmp_path: Path, app: TestApp
) -> None:
    prometheus, promtool = tools
    # Prometheus first, on the admin port the sidecar will have: it scrapes new targets only
    # after up to 5 s (its scrape manager's reload tick), in which the sidecar starts.
    admin = admin_port_pair()
    sidecar = SidecarProcess(sidecar_config(tmp_path / "web", app.port, admin))
    try:
        async with (
            running_prometheus(prometheus, tmp_path / "prometheus", admin) as base,
            httpx.AsyncClient(base_url=base, timeout=5) as client,
        ):
            await sidecar.start()
            await send_requests(sidecar.port())
            target: dict[str, Any] = {}

            async def up() -> bool:
                nonlocal target
                resp = await client.get("/api/v1/targets")
                [target] = resp.json()["data"]["activeTargets"] or [{}]
                # A broken exposition: the target is down, the parse error in lastError (a
                # scrape made before the sidecar listened was refused: try again).
                error = target.get("lastError", "")
                assert target.get("health") != "down" or "refused" in error, error
                return target.get("health") == "up"

            await until(up, "the target to be up", lambda: str(target))
            assert target["lastError"] == "", target

            total = float(sum(SENT.values()))

            async def all_counted() -> bool:
                found = await query(client, 'sum(meshd_requests_total{job="meshd"})')
                return bool(found) and float(found[0]["value"][1]) == total

            await until(all_counted, f"{total} requests in meshd_requests_total")
            await _check_series(client, app.port)
        await _check_promtool(promtool, admin)
    finally:
        await sidecar.stop()


async def _check_series(client: httpx.AsyncClient, app_port: int) -> None:
    want: dict[Key, float] = {}
    for (method, path, status), count in SENT.items():
        odd = path.startswith("/odd")
        labels = {
            "direction": "outbound",
            "source": "web",
            "destination": ODD_SERVICE if odd else "up",
            "route": ODD_ROUTE if odd else "plain",
            "method": method,
            "code": str(status),
        }
        want[key(labels)] = count
    assert await values(client, "meshd_requests_total") == want

    by_endpoint = await values(client, "meshd_upstream_endpoint_requests_total")
    odd_endpoint = key(
        {"cluster": ODD_CLUSTER, "endpoint": f"127.0.0.1:{app_port}", "code_class": "2xx"}
    )
    assert by_endpoint[odd_endpoint] == SENT[("GET", "/odd/x", 200)]

    # Each histogram series: as many observations as requests, buckets cumulative up to +Inf.
    assert await values(client, "meshd_request_duration_seconds_count") == want
    buckets: dict[Key, list[tuple[float, float]]] = {}
    for s in await query(client, "meshd_request_duration_seconds_bucket"):
        le = float(s["metric"]["le"])
        buckets.setdefault(key(s["metric"], drop=("le",)), []).append((le, float(s["value"][1])))
    assert buckets.keys() == want.keys()
    for series, counts in buckets.items():
        cumulative = [n for _, n in sorted(counts)]
        assert cumulative == sorted(cumulative) and cumulative[-1] == want[series], counts
    # Over the raw buckets (no rate(): every count was there at the first scrape).
    by_route = "sum by (le, route) (meshd_request_duration_seconds_bucket)"
    quantiles = await query(client, f"histogram_quantile(0.9, {by_route})")
    assert {q["metric"]["route"] for q in quantiles} == {ODD_ROUTE, "plain"}
    for q in quantiles:
        value = float(q["value"][1])
        assert math.isfinite(value) and 0 < value <= 10, q

    processes = await query(client, '{__name__=~"process_.+", job="meshd"}')
    found = {s["metric"]["__name__"]: float(s["value"][1]) for s in processes}
    assert found.keys() >= PROCESS_METRICS
    assert found["process_resident_memory_bytes"] > 0
    assert found["process_open_fds"] > 0


async def _check_promtool(promtool: Path, admin_port: int) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        resp = await client.get(f"http://127.0.0.1:{admin_port}/metrics")
    assert resp.status_code == 200
    checked = await trio.run_process(
        [str(promtool), "check", "metrics"],
        stdin=resp.content,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    output = (checked.stdout + checked.stderr).decode(errors="replace")
    assert (checked.returncode, output) == (0, ""), output
