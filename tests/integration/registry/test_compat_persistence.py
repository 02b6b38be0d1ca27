"""Persistence: restarts keep everything, indexes never go backwards, ``kill -9`` loses no
acknowledged write, and an unusable data dir is a clear error that touches nothing.

Consul docs followed: api-docs/features/blocking (indexes are monotonic; a client whose
index went backwards must reset, so a server must never make it go backwards), docs/agent
(services and checks registered through the agent API persist across agent restarts),
the issue's requirements (SQLite WAL, acknowledged == durable).
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import consul
import httpx
import pytest

from .compat_support import (
    TIMEOUT,
    RegistryProcess,
    clean_env,
    free_port,
    registry_argv,
    tree_digest,
    wait_until,
    x_index,
)

Check = consul.Check


def _seed(c: Any) -> str:
    c.kv.put("cfg/a", "1", flags=7)
    c.kv.put("cfg/b", "2")
    c.agent.service.register(
        "web", service_id="web-1", port=8080, tags=["v1"], check=Check.ttl("1h")
    )
    c.agent.service.register("api", port=9000, connect={"sidecar_service": {}})
    c.catalog.register("n1", "10.0.0.1", service={"service": "ext", "port": 5432})
    sid: str = c.session.create("keeper", lock_delay=0)
    c.kv.put("lock", "held", acquire=sid)
    return sid


def _snapshot(c: Any) -> dict[str, Any]:
    _, kv = c.kv.get("", recurse=True)
    _, services = c.catalog.services()
    _, sessions = c.session.list()
    return {
        "kv": [(e["Key"], e["Value"], e["Flags"], e.get("Session")) for e in kv],
        "agent_services": sorted(c.agent.services()),
        "agent_checks": sorted(c.agent.checks()),
        "catalog": {name: sorted(tags) for name, tags in services.items()},
        "sessions": sorted((s["ID"], s["Name"]) for s in sessions),
    }


def _max_index(http: httpx.Client) -> int:
    paths = ["/v1/kv/?recurse", "/v1/catalog/services", "/v1/health/state/any", "/v1/session/list"]
    return max(x_index(http.get(p)) for p in paths)


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "kill-9"])
def test_restart_keeps_data_and_indexes_grow(
    registry: RegistryProcess, make_client: Callable[..., Any], hard: bool
) -> None:
    c = make_client(registry)
    _seed(c)
    before = _snapshot(c)
    with httpx.Client(base_url=registry.url, timeout=30.0) as http:
        index_before = _max_index(http)
        kv_index_before = x_index(http.get("/v1/kv/cfg/a"))
    registry.restart(hard=hard)
    assert _snapshot(c) == before
    with httpx.Client(base_url=registry.url, timeout=30.0) as http:
        assert _max_index(http) >= index_before
        assert x_index(http.get("/v1/kv/cfg/a")) >= kv_index_before
        http.put("/v1/kv/after", content=b"x")
        assert x_index(http.get("/v1/kv/after")) > index_before
    _, entry = c.kv.get("after")
    assert entry["CreateIndex"] > index_before


def test_blocking_client_survives_restart(
    registry: RegistryProcess, make_client: Callable[..., Any]
) -> None:
    """A client holding an index from before a restart must still see the next change."""
    c = make_client(registry)
    c.kv.put("w", "1")
    index, _ = c.kv.get("w")
    registry.restart()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(c.kv.get, "w", index=index, wait="30s")
        time.sleep(0.3)
        c.kv.put("w", "2")
        new_index, data = future.result(TIMEOUT + 30)
    assert data["Value"] == b"2"
    assert int(new_index) > int(index)


def test_kill9_right_after_acknowledged_writes(
    registry: RegistryProcess, make_client: Callable[..., Any]
) -> None:
    c = make_client(registry)
    for i in range(200):
        assert c.kv.put(f"ack/{i:03d}", f"v{i}") is True
    assert c.agent.service.register("late", check=Check.ttl("1h")) is True
    sid = c.session.create("late-session")
    assert c.kv.put("ack/last", "final", acquire=sid) is True
    registry.kill9()  # immediately after the last acknowledgement
    registry.start()
    _, entries = c.kv.get("ack/", recurse=True)
    values = {e["Key"]: e["Value"] for e in entries}
    assert values == {
        **{f"ack/{i:03d}": f"v{i}".encode() for i in range(200)},
        "ack/last": b"final",
    }
    assert "late" in c.agent.services()
    assert c.session.info(sid)[1] is not None
    assert c.kv.get("ack/last")[1]["Session"] == sid


def test_kill9_under_concurrent_writes(
    registry: RegistryProcess, make_client: Callable[..., Any]
) -> None:
    """Writers run while the process is killed: every acknowledged value must survive."""
    acked: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        with httpx.Client(base_url=registry.url, timeout=5.0) as client:
            for value in range(1, 10_000):
                if stop.is_set():
                    return
                try:
                    resp = client.put(f"/v1/kv/conc/{n}", content=str(value).encode())
                except httpx.HTTPError:
                    return
                if resp.status_code != 200 or resp.json() is not True:
                    return
                with lock:
                    acked[f"conc/{n}"] = value

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(writer, n) for n in range(8)]
        wait_until(lambda: len(acked) == 8 and min(acked.values()) >= 20, what="writes to flow")
        registry.kill9()
        stop.set()
        for future in futures:
            future.result(TIMEOUT)
    snapshot = dict(acked)
    registry.start()
    c = make_client(registry)
    for key, value in snapshot.items():
        _, entry = c.kv.get(key)
        assert entry is not None, key
        # The write in flight at the kill may or may not have landed; acknowledged ones must.
        assert int(entry["Value"]) >= value, (key, entry["Value"], value)


def test_restart_keeps_ttl_check_definitions(
    registry: RegistryProcess, make_client: Callable[..., Any]
) -> None:
    c = make_client(registry)
    c.agent.service.register("web", check=Check.ttl("1h"))
    c.agent.check.ttl_pass("service:web", notes="fine")
    registry.restart()
    checks = c.agent.checks()
    assert set(checks) == {"service:web"}
    assert checks["service:web"]["Type"] == "ttl"
    # TTL checks keep working after the restart.
    assert c.agent.check.ttl_warn("service:web") is True
    assert c.agent.checks()["service:web"]["Status"] == "warning"


# -- unusable data dirs ----------------------------------------------------------------------


def _run_once(data_dir: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    port = free_port()
    try:
        return subprocess.run(
            registry_argv(f"127.0.0.1:{port}", data_dir),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"registry kept running with an unusable data dir {data_dir}") from exc


def _assert_clear_failure(done: subprocess.CompletedProcess[str], data_dir: Path) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert str(data_dir) in output, f"the error should name the data dir:\n{output}"
    assert "Traceback" not in output, f"a clear error, not a traceback:\n{output}"


def test_data_dir_is_a_file(tmp_path: Path) -> None:
    data = tmp_path / "not-a-dir"
    data.write_bytes(b"precious")
    before = tree_digest(data)
    _assert_clear_failure(_run_once(data), data)
    assert tree_digest(data) == before


def test_data_dir_under_a_file(tmp_path: Path) -> None:
    parent = tmp_path / "file"
    parent.write_bytes(b"precious")
    data = parent / "data"
    _assert_clear_failure(_run_once(data), data)
    assert parent.read_bytes() == b"precious"


def test_corrupt_database_is_refused_untouched(tmp_path: Path) -> None:
    proc = RegistryProcess(tmp_path / "data", tmp_path / "logs")
    proc.start()
    try:
        with httpx.Client(base_url=proc.url, timeout=30.0) as http:
            assert http.put("/v1/kv/k", content=b"v").status_code == 200
    finally:
        assert proc.stop() == 0, proc.log_tail()
    files = [p for p in proc.data_dir.rglob("*") if p.is_file()]
    assert files, "the registry left no files in its data dir"
    for path in files:
        path.write_bytes(b"this is not a database " * 64)
    before = tree_digest(proc.data_dir)
    _assert_clear_failure(_run_once(proc.data_dir), proc.data_dir)
    assert tree_digest(proc.data_dir) == before


def test_missing_data_dir_is_created(tmp_path: Path) -> None:
    proc = RegistryProcess(tmp_path / "a" / "b" / "data", tmp_path / "logs")
    proc.start()
    try:
        assert proc.data_dir.is_dir()
    finally:
        proc.stop()


def test_clean_stop_exits_zero(registry: RegistryProcess) -> None:
    assert registry.stop() == 0, registry.log_tail()
