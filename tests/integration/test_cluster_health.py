"""Circuit breaking, outlier detection, active health checks and the retry budget, against
real misbehaving backends through a real sidecar (in-process, plain endpoints).

Each test proves its mechanism by what the backends saw and what the client got.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import (
    TIMEOUT,
    RawClient,
    RawServer,
    Receive,
    Response,
    Scope,
    Send,
    TestApp,
    admin_get,
    closed_port,
    port_of,
    request,
    serve_app,
    start_sidecar,
    write_sidecar_config,
)

from meshcore.model.snapshot import Cluster
from meshd.cluster.pool import PoolManager
from meshd.cluster.runtime import ClusterRuntime
from meshd.errors import UpstreamError
from meshd.sidecar import Sidecar

pytestmark = pytest.mark.timeout(120)


class FlakyApp(TestApp):
    """The test app, answering ``status`` to everything but ``/health`` (which answers
    ``health``) and the gated stream, when ``status`` is not 200."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.health = 200
        #: Answer 500 to every n-th request (0: never).
        self.fail_every = 0

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        code = self.health if path == "/health" else self.status
        if self.fail_every and path != "/health" and self.calls % self.fail_every == 0:
            code = 500
        if path == "/gated-stream" or code == 200:
            await super()._http(scope, receive, send)
            return
        body = f"status {code}".encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @property
    def calls(self) -> int:
        """Requests other than health checks."""
        return sum(1 for p in self.paths if p != "/health")


async def _apps(nursery: trio.Nursery, count: int) -> list[FlakyApp]:
    apps = [FlakyApp() for _ in range(count)]
    for app in apps:
        await nursery.start(serve_app, app)
    return apps


async def _sidecar(
    nursery: trio.Nursery,
    tmp_path: Path,
    ports: list[int],
    route: dict[str, Any] | None = None,
    **cluster_fields: Any,
) -> tuple[Sidecar, int]:
    """A sidecar whose outbound listener ``out`` sends to cluster ``up`` (round robin over
    127.0.0.1:``ports``, with ``cluster_fields``); with ``route``, through one route with
    those fields."""
    listener: dict[str, Any] = {"name": "out", "direction": "outbound", "address": "127.0.0.1:0"}
    tables = []
    if route is None:
        listener["cluster"] = "up"
    else:
        listener["route_table"] = "main"
        tables = [
            {"name": "main", "routes": [{"name": "r", "backends": [{"cluster": "up"}], **route}]}
        ]
    path = write_sidecar_config(
        tmp_path,
        service="web",
        app_port=closed_port(),
        listeners=[listener],
        route_tables=tables,
        clusters=[
            {
                "name": "up",
                "service": "up",
                "endpoints": [{"host": "127.0.0.1", "port": p} for p in ports],
                **cluster_fields,
            }
        ],
    )
    sidecar = await start_sidecar(nursery, path)
    return sidecar, port_of(sidecar, "out")


async def _get(port: int, target: str = "/x") -> Response:
    async with RawClient.connect(port) as client:
        await client.send(request("GET", target))
        return await client.read_response()


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (bounded: TIMEOUT)."""
    with trio.fail_after(TIMEOUT):
        while not condition():
            await trio.sleep(0.02)
    assert condition(), what


def _policy(sidecar: Sidecar, name: str, *labels: str) -> float:
    return sidecar.stats.policy.value(name, *labels)


# -- circuit breaking --------------------------------------------------------------------------


async def test_max_requests_overflow_is_an_immediate_503(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        (app,) = await _apps(nursery, 1)
        sidecar, port = await _sidecar(nursery, tmp_path, [app.port], limits={"max_requests": 2})
        async with RawClient.connect(port) as one, RawClient.connect(port) as two:
            heads = []
            for held in (one, two):
                await held.send(request("GET", "/gated-stream"))
                heads.append(await held.read_head())
                assert heads[-1].status == 200
            assert app.requests == 2
            # A third request while two are in flight: 503 at once, the app never sees it
            # (the timeout is far below the held requests' lifetime, which has no end).
            refused = await _get(port)
            assert refused.status == 503
            assert refused.header("x-meshd-error") == "upstream_overflow"
            assert app.requests == 2
            assert _policy(sidecar, "meshd_upstream_overflow", "up", "max_requests") == 1
            described = (await admin_get(sidecar, "/clusters")).json()
            breaker = next(c for c in described if c["name"] == "up")["circuit_breaker"]
            assert (breaker["requests"], breaker["connections"]) == (2, 2)
            assert breaker["limits"]["max_requests"] == 2
            app.gate.set()
            for held, head in zip((one, two), heads, strict=True):
                assert b"second-piece" in b"".join([p async for p in held.body_pieces(head)])
        # The held requests ended: requests flow again.
        assert (await _get(port)).status == 200
        assert app.requests == 3
        nursery.cancel_scope.cancel()


async def test_max_pending_requests_overflow(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        (app,) = await _apps(nursery, 1)
        limits = {"max_connections": 1, "max_pending_requests": 1, "max_requests": 100}
        sidecar, port = await _sidecar(nursery, tmp_path, [app.port], limits=limits)
        breaker = sidecar.cluster_states.get("up").breaker
        pending_result: list[Response] = []

        async def pending_request() -> None:
            pending_result.append(await _get(port))

        async with RawClient.connect(port) as held:
            # The cluster's only connection is busy with this one.
            await held.send(request("GET", "/gated-stream"))
            head = await held.read_head()
            assert head.status == 200
            nursery.start_soon(pending_request)
            await _until(lambda: breaker.pending == 1, "a request waits for the connection")
            # Every connection busy, the pending slot taken: refused at once.
            refused = await _get(port)
            assert refused.status == 503
            assert refused.header("x-meshd-error") == "upstream_overflow"
            assert _policy(sidecar, "meshd_upstream_overflow", "up", "max_pending_requests") == 1
            assert app.requests == 1
            app.gate.set()
            assert b"second-piece" in b"".join([p async for p in held.body_pieces(head)])
        # The pending request got the connection once it was free.
        await _until(lambda: bool(pending_result), "the pending request was answered")
        assert pending_result[0].status == 200
        assert app.requests == 2
        nursery.cancel_scope.cancel()


# -- outlier detection -------------------------------------------------------------------------


async def test_consecutive_5xx_ejects_and_the_endpoint_returns(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        bad, good = await _apps(nursery, 2)
        bad.status = 500
        outliers = {"consecutive_5xx": 3, "base_ejection_s": 2.0, "max_ejection_percent": 50}
        sidecar, port = await _sidecar(
            nursery, tmp_path, [bad.port, good.port], outlier_detection=outliers
        )
        statuses = [(await _get(port)).status for _ in range(6)]
        # Round robin: the bad endpoint answered three 500s and is ejected.
        assert sorted(statuses) == [200, 200, 200, 500, 500, 500]
        assert bad.calls == 3
        assert _policy(sidecar, "meshd_outlier_ejections", "up", "consecutive_5xx") == 1
        assert _policy(sidecar, "meshd_outlier_ejected_endpoints", "up") == 1
        described = (await admin_get(sidecar, "/clusters")).json()
        up = next(c for c in described if c["name"] == "up")
        assert up["endpoints"][0]["outlier"]["ejected"] is True
        assert up["endpoints"][0]["outlier"]["times_ejected"] == 1
        assert up["endpoints"][0]["outlier"]["ejected_until"].endswith("+00:00")
        assert up["endpoints"][0]["available"] is False
        for _ in range(4):
            assert (await _get(port)).status == 200
        assert bad.calls == 3
        # Fixed meanwhile; after base_ejection_s it gets traffic again.
        bad.status = 200
        with trio.fail_after(TIMEOUT):
            while bad.calls == 3:
                assert (await _get(port)).status == 200
                await trio.sleep(0.05)
        assert _policy(sidecar, "meshd_outlier_ejected_endpoints", "up") == 0
        nursery.cancel_scope.cancel()


async def test_max_ejection_percent_keeps_the_rest_in_service(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        apps = await _apps(nursery, 4)
        for bad in apps[:2]:
            bad.status = 503
        outliers = {
            "consecutive_gateway_errors": 2,
            "base_ejection_s": 60,
            "max_ejection_percent": 25,
        }
        sidecar, port = await _sidecar(
            nursery, tmp_path, [a.port for a in apps], outlier_detection=outliers
        )
        for _ in range(24):
            await _get(port)
        # 25% of 4: one ejected; the other failing endpoint keeps its share.
        assert _policy(sidecar, "meshd_outlier_ejected_endpoints", "up") == 1
        assert _policy(sidecar, "meshd_outlier_ejections", "up", "consecutive_gateway_errors") == 1
        ejected = sorted(a.calls for a in apps[:2])
        assert ejected[0] == 2  # ejected at its second 503
        assert ejected[1] >= 6
        nursery.cancel_scope.cancel()


async def test_success_rate_ejects_the_endpoint_failing_more_than_its_peers(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        apps = await _apps(nursery, 5)
        apps[0].fail_every = 2  # half its answers are 500s, never two in a row
        outliers = {
            "consecutive_5xx": 100,
            "consecutive_gateway_errors": 100,
            "interval_s": 0.5,
            "base_ejection_s": 60,
            "max_ejection_percent": 20,
            "success_rate": {"minimum_hosts": 5, "request_volume": 5, "stdev_factor": 1.0},
        }
        sidecar, port = await _sidecar(
            nursery, tmp_path, [a.port for a in apps], outlier_detection=outliers
        )
        ejected = ("127.0.0.1", apps[0].port)
        state = sidecar.cluster_states.get("up")
        with trio.fail_after(TIMEOUT):
            for _ in range(2000):  # bounded: the interval ends long before
                await _get(port)
                if state.unavailable:
                    break
        assert state.unavailable == {ejected}
        assert _policy(sidecar, "meshd_outlier_ejections", "up", "success_rate") == 1
        calls = apps[0].calls
        for _ in range(8):
            assert (await _get(port)).status == 200
        assert apps[0].calls == calls
        nursery.cancel_scope.cancel()


async def test_connect_failures_eject_a_dead_endpoint(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        (good,) = await _apps(nursery, 1)
        outliers = {"consecutive_local_origin_failures": 2, "base_ejection_s": 60}
        sidecar, port = await _sidecar(
            nursery, tmp_path, [closed_port(), good.port], outlier_detection=outliers
        )
        responses = [await _get(port) for _ in range(12)]
        failed = [r for r in responses if r.status != 200]
        assert len(failed) == 2
        assert {r.header("x-meshd-error") for r in failed} == {"upstream_connect_failed"}
        assert responses[-8:] == [r for r in responses[-8:] if r.status == 200]
        cause = "consecutive_local_origin_failures"
        assert _policy(sidecar, "meshd_outlier_ejections", "up", cause) == 1
        nursery.cancel_scope.cancel()


# -- active health checks ----------------------------------------------------------------------


async def test_http_health_check_marks_an_endpoint_down_before_any_request_fails(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        sick, well = await _apps(nursery, 2)
        sick.health = 500  # the app still answers everything else
        check = {
            "kind": "http",
            "path": "/health",
            "interval_s": 0.05,
            "timeout_s": 1,
            "unhealthy_threshold": 2,
            "healthy_threshold": 2,
        }
        sidecar, port = await _sidecar(
            nursery, tmp_path, [sick.port, well.port], health_check=check
        )
        state = sidecar.cluster_states.get("up")
        sick_address = ("127.0.0.1", sick.port)
        await _until(lambda: sick_address in state.unavailable, "the sick endpoint is down")
        assert sick.calls == 0 and well.calls == 0  # no request was needed to find out
        assert _policy(sidecar, "meshd_health_check_unhealthy_endpoints", "up") == 1
        assert _policy(sidecar, "meshd_health_checks", "up", "failure") >= 2
        described = (await admin_get(sidecar, "/clusters")).json()
        up = next(c for c in described if c["name"] == "up")
        assert up["endpoints"][0]["health_check"]["healthy"] is False
        assert up["endpoints"][1]["health_check"]["healthy"] is True
        for _ in range(6):
            assert (await _get(port)).status == 200
        assert (sick.calls, well.calls) == (0, 6)
        # Healthy again after healthy_threshold successes: back in rotation.
        sick.health = 200
        await _until(lambda: not state.unavailable, "the endpoint is back")
        for _ in range(6):
            assert (await _get(port)).status == 200
        assert sick.calls == 3
        nursery.cancel_scope.cancel()


async def _hang(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


@pytest.mark.parametrize("kind", ["http", "tcp"])
async def test_health_check_fails_on_a_hanging_or_closed_endpoint(
    tmp_path: Path, kind: str
) -> None:
    async with trio.open_nursery() as nursery:
        (well,) = await _apps(nursery, 1)
        if kind == "http":
            # Accepts, never answers: the check times out.
            hanging = RawServer(_hang)
            bad_port = await nursery.start(hanging.run)
        else:
            bad_port = closed_port()
        check = {"kind": kind, "interval_s": 0.05, "timeout_s": 0.2, "unhealthy_threshold": 1}
        sidecar, port = await _sidecar(nursery, tmp_path, [bad_port, well.port], health_check=check)
        state = sidecar.cluster_states.get("up")
        await _until(lambda: ("127.0.0.1", bad_port) in state.unavailable, "bad endpoint down")
        assert ("127.0.0.1", well.port) not in state.unavailable
        for _ in range(4):
            assert (await _get(port)).status == 200
        nursery.cancel_scope.cancel()


async def test_health_checks_follow_snapshots_and_keep_state(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        one, two = await _apps(nursery, 2)
        one.health = 500
        check = {"path": "/health", "interval_s": 0.05, "unhealthy_threshold": 1}
        sidecar, _port = await _sidecar(nursery, tmp_path, [one.port], health_check=check)
        state = sidecar.cluster_states.get("up")
        await _until(lambda: bool(state.unavailable), "the first endpoint is down")
        assert sidecar.health_checks.probes == 1
        # A new snapshot adds an endpoint: the old one stays down, the new one is probed.
        write_sidecar_config(
            tmp_path,
            service="web",
            app_port=closed_port(),
            version=2,
            listeners=[
                {"name": "out", "direction": "outbound", "address": "127.0.0.1:0", "cluster": "up"}
            ],
            clusters=[
                {
                    "name": "up",
                    "service": "up",
                    "endpoints": [{"host": "127.0.0.1", "port": p} for p in (one.port, two.port)],
                    "health_check": check,
                }
            ],
        )
        assert sidecar.reload()
        assert sidecar.cluster_states.get("up") is state
        assert state.unavailable == {("127.0.0.1", one.port)}
        assert sidecar.health_checks.probes == 2
        seen = two.paths.count("/health")
        await _until(lambda: two.paths.count("/health") > seen, "the new endpoint is probed")
        nursery.cancel_scope.cancel()


# -- retry budget ------------------------------------------------------------------------------


async def test_retry_budget_holds_during_a_total_outage_through_a_sidecar(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        (app,) = await _apps(nursery, 1)
        app.status = 503
        retries = {"attempts": 5, "retry_on": ["gateway-error"], "backoff_base_s": 0.001}
        budget = {"percent": 20, "min_retries_per_second": 0.5, "ttl_s": 10}
        sidecar, port = await _sidecar(
            nursery, tmp_path, [app.port], {"retries": retries}, retry_budget=budget
        )
        requests = 60
        for _ in range(requests):
            assert (await _get(port)).status == 503
        # Without the budget the app would have seen 5 tries per request (300).
        floor = budget["min_retries_per_second"] * budget["ttl_s"]
        assert requests < app.calls <= requests * (1 + budget["percent"] / 100) + floor
        assert _policy(sidecar, "meshd_retry_budget_exhausted", "up") > 0
        retried = _policy(sidecar, "meshd_upstream_retries", "up", "gateway-error")
        assert retried == app.calls - requests
        nursery.cancel_scope.cancel()


async def test_max_retries_zero_sends_no_retry(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        (app,) = await _apps(nursery, 1)
        app.status = 503
        retries = {"attempts": 3, "retry_on": ["gateway-error"], "backoff_base_s": 0.001}
        sidecar, port = await _sidecar(
            nursery, tmp_path, [app.port], {"retries": retries}, limits={"max_retries": 0}
        )
        for _ in range(5):
            assert (await _get(port)).status == 503
        assert app.calls == 5
        assert _policy(sidecar, "meshd_upstream_overflow", "up", "max_retries") == 5
        nursery.cancel_scope.cancel()


async def test_retry_budget_holds_during_a_total_outage() -> None:
    """Driven through :class:`ClusterRuntime`'s API as the request path drives it, one try
    per new connection (the backend counts them)."""
    seen = 0

    async def unavailable(stream: trio.SocketStream) -> None:
        nonlocal seen
        data = await stream.receive_some(4096)
        if data:
            seen += 1
            await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")

    async with trio.open_nursery() as nursery:
        backend = RawServer(unavailable)
        port = await nursery.start(backend.run)
        budget = {"percent": 20, "min_retries_per_second": 1, "ttl_s": 10}
        model = Cluster.model_validate(
            {
                "name": "up",
                "service": "up",
                "endpoints": [{"host": "127.0.0.1", "port": port}],
                "retry_budget": budget,
            }
        )
        cluster = ClusterRuntime(model, PoolManager())
        requests, attempts = 100, 5
        for _ in range(requests):
            cluster.admit()
            try:
                for attempt in range(attempts):
                    if attempt and not cluster.begin_retry():
                        break
                    try:
                        endpoint, conn = await cluster.acquire(fresh=True)
                    except UpstreamError:
                        continue
                    try:
                        await conn.stream.send_all(b"GET / HTTP/1.1\r\nhost: up\r\n\r\n")
                        answer = await conn.stream.receive_some(4096)
                        cluster.report(endpoint, int(answer.split(b" ")[1]), 0.0)
                    finally:
                        cluster.release(endpoint, conn, reusable=False)
                        if attempt:
                            cluster.end_retry()
            finally:
                cluster.done()
        floor = budget["min_retries_per_second"] * budget["ttl_s"]
        assert seen <= requests * (1 + budget["percent"] / 100) + floor
        assert seen >= requests  # every request was tried once
        assert cluster.state.stats.value("meshd_retry_budget_exhausted", "up") > 0
        nursery.cancel_scope.cancel()
