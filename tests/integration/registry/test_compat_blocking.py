"""Blocking queries: ``index``/``wait``, wake on change, immediate return when behind, headers.

Consul docs followed: api-docs/features/blocking (``X-Consul-Index``; a request with
``index`` hangs until a change after that index or ``wait`` elapses, default 5m, capped at
10m, plus up to wait/16 of jitter; a return is no guarantee of a change; an index that is
behind returns at once; indexes are > 0), api-docs/api-structure (``X-Consul-KnownLeader``,
``X-Consul-LastContact`` on reads), api-docs/kv (404 for a missing key, still with an index).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from typing import Any

import consul
import httpx
import pytest

from .compat_support import TIMEOUT, RegistryProcess, x_index

Check = consul.Check


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as executor:
        yield executor


def _blocking_get(
    registry: RegistryProcess, path: str, params: dict[str, Any]
) -> Callable[[], tuple[httpx.Response, float]]:
    def run() -> tuple[httpx.Response, float]:
        start = time.monotonic()
        with httpx.Client(base_url=registry.url, timeout=700.0) as client:
            resp = client.get(path, params=params)
        return resp, time.monotonic() - start

    return run


def _still_blocked(future: concurrent.futures.Future[Any], seconds: float = 0.3) -> bool:
    try:
        future.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        return True
    return False


READ_PATHS = [
    "/v1/kv/missing",
    "/v1/kv/missing?recurse",
    "/v1/kv/missing?keys",
    "/v1/catalog/services",
    "/v1/catalog/nodes",
    "/v1/catalog/service/nope",
    "/v1/catalog/node/nope",
    "/v1/health/service/nope",
    "/v1/health/checks/nope",
    "/v1/health/state/any",
    "/v1/health/node/nope",
    "/v1/session/list",
    "/v1/session/info/00000000-0000-0000-0000-000000000000",
    "/v1/session/node/nope",
]


@pytest.mark.parametrize("path", READ_PATHS)
def test_read_headers_everywhere(http: httpx.Client, path: str) -> None:
    resp = http.get(path)
    assert resp.status_code in (200, 404), resp.text
    x_index(resp)
    assert resp.headers.get("X-Consul-KnownLeader") == "true"
    assert resp.headers.get("X-Consul-LastContact") == "0"


def test_kv_get_wait_without_change_returns_same_index(consul_client: Any) -> None:
    """py-consul test_kv_wait."""
    c = consul_client
    assert c.kv.put("foo", "bar") is True
    index, _ = c.kv.get("foo")
    check, _ = c.kv.get("foo", index=index, wait="20ms")
    assert index == check


def test_wait_is_honoured(
    registry: RegistryProcess, http: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    http.put("/v1/kv/k", content=b"v")
    index = x_index(http.get("/v1/kv/k"))
    resp, elapsed = pool.submit(
        _blocking_get(registry, "/v1/kv/k", {"index": index, "wait": "1s"})
    ).result(TIMEOUT)
    assert resp.status_code == 200
    assert x_index(resp) == index
    # It held the request for the wait (jitter only adds); a lower bound, never flaky.
    assert elapsed >= 0.95


def test_kv_blocking_wakes_on_change(
    registry: RegistryProcess, http: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    http.put("/v1/kv/watched", content=b"1")
    index = x_index(http.get("/v1/kv/watched"))
    future = pool.submit(_blocking_get(registry, "/v1/kv/watched", {"index": index, "wait": "5m"}))
    assert _still_blocked(future)
    http.put("/v1/kv/watched", content=b"2")
    resp, _ = future.result(TIMEOUT)
    assert resp.status_code == 200
    assert x_index(resp) > index
    assert resp.json()[0]["Value"] == "Mg=="  # base64("2")


def test_blocking_on_missing_key_wakes_on_create(
    consul_client: Any, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    """py-consul aio test_kv_subscribe / test_kv_missing, with the std client in a thread."""
    c = consul_client
    index, data = c.kv.get("foo")
    assert data is None
    future = pool.submit(c.kv.get, "foo", index=index, wait="5m")
    assert _still_blocked(future)
    c.kv.put("foo", "bar")
    new_index, data = future.result(TIMEOUT)
    assert data["Value"] == b"bar"
    assert int(new_index) > int(index)


def test_blocking_recurse_wakes_on_child_change(
    registry: RegistryProcess, http: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    http.put("/v1/kv/dir/a", content=b"1")
    index = x_index(http.get("/v1/kv/dir/", params={"recurse": ""}))
    future = pool.submit(
        _blocking_get(registry, "/v1/kv/dir/", {"recurse": "", "index": index, "wait": "5m"})
    )
    assert _still_blocked(future)
    http.delete("/v1/kv/dir/a")
    resp, _ = future.result(TIMEOUT)
    assert resp.status_code == 404
    assert x_index(resp) > index


def test_index_behind_returns_at_once(
    registry: RegistryProcess, http: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    http.put("/v1/kv/k", content=b"1")
    old = x_index(http.get("/v1/kv/k"))
    http.put("/v1/kv/k", content=b"2")
    resp, elapsed = pool.submit(
        _blocking_get(registry, "/v1/kv/k", {"index": old, "wait": "5m"})
    ).result(TIMEOUT)
    assert resp.status_code == 200
    assert x_index(resp) > old
    assert elapsed < TIMEOUT


def test_index_zero_does_not_block(
    registry: RegistryProcess, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    resp, _ = pool.submit(_blocking_get(registry, "/v1/kv/k", {"index": 0, "wait": "5m"})).result(
        TIMEOUT
    )
    assert resp.status_code == 404
    x_index(resp)


def test_long_wait_is_accepted(
    registry: RegistryProcess, http: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    # A wait above the 10 minute cap is clamped, not rejected.
    index = x_index(http.get("/v1/kv/k"))
    future = pool.submit(_blocking_get(registry, "/v1/kv/k", {"index": index, "wait": "1h"}))
    assert _still_blocked(future)
    http.put("/v1/kv/k", content=b"v")
    resp, _ = future.result(TIMEOUT)
    assert resp.status_code == 200


def test_health_service_blocking_wakes_on_status_change(
    consul_client: Any, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    c = consul_client
    c.agent.service.register("web", check=Check.ttl("60s"))
    index, nodes = c.health.service("web", passing=True)
    assert nodes == []
    future = pool.submit(c.health.service, "web", index=index, passing=True, wait="5m")
    assert _still_blocked(future)
    c.agent.check.ttl_pass("service:web")
    new_index, nodes = future.result(TIMEOUT)
    assert [n["Service"]["ID"] for n in nodes] == ["web"]
    assert int(new_index) > int(index)

    # The same index again: blocks until the next change (here a deregistration).
    future = pool.submit(c.health.service, "web", index=new_index, wait="5m")
    assert _still_blocked(future)
    c.agent.service.deregister("web")
    _, nodes = future.result(TIMEOUT)
    assert nodes == []


def test_ttl_output_change_wakes_health_watchers(
    consul_client: Any, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    c = consul_client
    c.agent.service.register("web", check=Check.ttl("60s"))
    c.agent.check.ttl_pass("service:web", notes="one")
    index, _ = c.health.checks("web")
    future = pool.submit(c.health.checks, "web", index=index, wait="5m")
    assert _still_blocked(future)
    c.agent.check.ttl_fail("service:web", notes="two")
    _, checks = future.result(TIMEOUT)
    assert [(ch["Status"], ch["Output"]) for ch in checks] == [("critical", "two")]


def test_catalog_blocking_wakes_on_register(
    consul_client: Any, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    c = consul_client
    index, services = c.catalog.services()
    future = pool.submit(c.catalog.services, index=index, wait="5m")
    assert _still_blocked(future)
    c.catalog.register("n1", "10.0.0.1", service={"service": "s1"})
    _, services = future.result(TIMEOUT)
    assert "s1" in services

    index, nodes = c.catalog.nodes()
    future = pool.submit(c.catalog.nodes, index=index, wait="5m")
    assert _still_blocked(future)
    c.catalog.deregister("n1")
    _, nodes = future.result(TIMEOUT)
    assert "n1" not in [n["Node"] for n in nodes]


def test_session_list_blocking(
    consul_client: Any, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    """py-consul aio test_session: block on the list across create and destroy."""
    c = consul_client
    index, sessions = c.session.list()
    assert sessions == []
    future = pool.submit(c.session.list, index=index, wait="5m")
    assert _still_blocked(future)
    sid = c.session.create()
    index, sessions = future.result(TIMEOUT)
    assert [s["ID"] for s in sessions] == [sid]
    future = pool.submit(c.session.list, index=index, wait="5m")
    assert _still_blocked(future)
    c.session.destroy(sid)
    _, sessions = future.result(TIMEOUT)
    assert sessions == []


def test_many_watchers_all_wake(
    registry: RegistryProcess, http: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    http.put("/v1/kv/fan", content=b"0")
    index = x_index(http.get("/v1/kv/fan"))
    futures = [
        pool.submit(_blocking_get(registry, "/v1/kv/fan", {"index": index, "wait": "5m"}))
        for _ in range(50)
    ]
    assert _still_blocked(futures[-1], 0.5)
    http.put("/v1/kv/fan", content=b"1")
    for future in futures:
        resp, _ = future.result(TIMEOUT)
        assert resp.status_code == 200
        assert x_index(resp) > index


def test_abandoned_watcher_does_not_hurt(registry: RegistryProcess, http: httpx.Client) -> None:
    index = x_index(http.get("/v1/kv/k"))
    with (
        httpx.Client(base_url=registry.url, timeout=0.3) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.get("/v1/kv/k", params={"index": index, "wait": "5m"})
    assert http.put("/v1/kv/k", content=b"v").status_code == 200
    assert http.get("/v1/kv/k").status_code == 200


def test_indexes_only_grow(http: httpx.Client) -> None:
    seen = []
    for i in range(20):
        http.put(f"/v1/kv/grow/{i % 3}", content=str(i).encode())
        seen.append(x_index(http.get("/v1/kv/grow/", params={"recurse": ""})))
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)


@pytest.mark.parametrize("wait", ["soon", "10", "5x"])
def test_bad_wait_is_400(http: httpx.Client, wait: str) -> None:
    resp = http.get("/v1/kv/k", params={"index": 1, "wait": wait})
    assert resp.status_code == 400, resp.text


def test_bad_index_is_400(http: httpx.Client) -> None:
    assert http.get("/v1/kv/k", params={"index": "abc"}).status_code == 400
