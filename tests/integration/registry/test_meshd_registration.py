"""meshd's self-registration against the real registry process, checked with py-consul.

An in-process sidecar with a ``registry:`` bootstrap section registers its app service (TTL
check driven by its HTTP probe of the app) and itself as ``<service>-sidecar-proxy``; the app
going down turns the check critical; a clean drain deregisters both; a registry that restarts
(with or without its data) gets the registrations back.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import pytest
import trio

from .compat_support import MGMT_TOKEN, TIMEOUT, RegistryProcess, clean_env, wait_until
from .discovery_support import (
    HealthApp,
    RunningSidecar,
    blocking,
    eventually,
    py_consul,
    registry_down,
    registry_up,
    service_token,
    start_sidecar,
    write_sidecar,
)

SERVICE_ID = "web-1"
PROXY_ID = "web-1-sidecar-proxy"


@pytest.fixture
def registry(acl_registry: RegistryProcess) -> RegistryProcess:
    """The registry enforces ACLs, as controld's does: the sidecar registers with a token of
    its service's identity, the checks read with the management token."""
    return acl_registry


@pytest.fixture
def client(registry: RegistryProcess) -> Iterator[Any]:
    c = py_consul(registry)
    try:
        yield c
    finally:
        c.http.session.close()


def registry_section(registry: RegistryProcess, **extra: Any) -> dict[str, Any]:
    """The sidecar's ``registry:`` section; a token of web's identity unless ``token`` is
    given (``token=None``: none)."""
    section = {
        "address": registry.url,
        "service_id": SERVICE_ID,
        "tags": ["v1"],
        "meta": {"team": "payments"},
        # Fast probes; a long TTL so a busy test machine can't let a check lapse.
        "check": {"kind": "http", "path": "/health", "interval_s": 0.2, "ttl_s": 30},
        **extra,
    }
    if "token" not in extra and registry.token is not None:
        section["token"] = service_token(registry, "web")
    return section


async def start(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryProcess, **extra: Any
) -> tuple[HealthApp, RunningSidecar]:
    app = HealthApp()
    await nursery.start(app.run)
    boot = write_sidecar(
        tmp_path / "web",
        service="web",
        app_port=app.port,
        registry=registry_section(registry, **extra),
    )
    return app, await start_sidecar(nursery, boot)


async def services(client: Any) -> dict[str, Any]:
    return await blocking(client.agent.services)


async def checks(client: Any) -> dict[str, Any]:
    return await blocking(client.agent.checks)


async def wait_check(client: Any, check_id: str, status: str) -> dict[str, Any]:
    """Wait until the check has ``status`` as set by meshd (new checks start critical, empty)."""

    async def probe() -> dict[str, Any] | None:
        check: dict[str, Any] | None = (await checks(client)).get(check_id)
        if check is None or check["Status"] != status or not check["Output"]:
            return None
        return check

    return await eventually(probe, what=f"{check_id} {status}")


async def wait_registered(client: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        found = await services(client)
        return found if {SERVICE_ID, PROXY_ID} <= found.keys() else None

    return await eventually(probe, what="both registrations")


async def test_registers_service_and_sidecar(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryProcess, client: Any
) -> None:
    app, running = await start(nursery, tmp_path, registry)
    found = await wait_registered(client)

    service = found[SERVICE_ID]
    assert service["Service"] == "web"
    assert (service["Address"], service["Port"]) == ("127.0.0.1", app.port)
    assert service["Tags"] == ["v1"]
    assert service["Meta"] == {"team": "payments", "meshd-sidecar-proxy": PROXY_ID}

    proxy = found[PROXY_ID]
    assert proxy["Service"] == "web-sidecar-proxy"
    assert proxy["Kind"] == "connect-proxy"
    assert (proxy["Address"], proxy["Port"]) == ("127.0.0.1", running.inbound_port)
    assert proxy["Proxy"]["DestinationServiceName"] == "web"
    assert proxy["Proxy"]["DestinationServiceID"] == SERVICE_ID
    assert proxy["Proxy"]["LocalServiceAddress"] == "127.0.0.1"
    assert proxy["Proxy"]["LocalServicePort"] == app.port

    app_check = await wait_check(client, f"service:{SERVICE_ID}", "passing")
    assert app_check["ServiceID"] == SERVICE_ID
    assert app_check["Output"] == f"HTTP GET http://127.0.0.1:{app.port}/health: 200 OK"
    proxy_check = await wait_check(client, f"service:{PROXY_ID}", "passing")
    assert proxy_check["ServiceID"] == PROXY_ID

    # The health API agrees: both instances pass, the sidecar fronts the service.
    _index, nodes = await blocking(client.health.service, "web-sidecar-proxy", passing=True)
    assert [n["Service"]["ID"] for n in nodes] == [PROXY_ID]
    stats = running.sidecar.stats.as_json()
    assert stats["registry.registered"] == 1
    assert isinstance(stats["registry.ttl_updates"], int) and stats["registry.ttl_updates"] >= 1


async def test_app_down_turns_the_check_critical(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryProcess, client: Any
) -> None:
    app, _running = await start(nursery, tmp_path, registry)
    await wait_check(client, f"service:{SERVICE_ID}", "passing")

    app.status = 503
    check = await wait_check(client, f"service:{SERVICE_ID}", "critical")
    assert (
        check["Output"] == f"HTTP GET http://127.0.0.1:{app.port}/health: 503 Service Unavailable"
    )
    # The sidecar itself is still fine.
    await wait_check(client, f"service:{PROXY_ID}", "passing")
    _index, passing = await blocking(client.health.service, "web", passing=True)
    assert passing == []

    app.status = 200
    await wait_check(client, f"service:{SERVICE_ID}", "passing")


async def test_tcp_probe_follows_the_app_port(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryProcess, client: Any
) -> None:
    # Nothing listens on the app port: the TCP probe fails, the check says why.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    section = registry_section(registry, check={"kind": "tcp", "interval_s": 0.2, "ttl_s": 30})
    boot = write_sidecar(tmp_path / "web", service="web", app_port=port, registry=section)
    await start_sidecar(nursery, boot)
    check = await wait_check(client, f"service:{SERVICE_ID}", "critical")
    assert check["Output"] == f"TCP connect 127.0.0.1:{port}: Connection refused"

    # The app comes up on that port.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", port))
    listener.listen(16)
    try:
        check = await wait_check(client, f"service:{SERVICE_ID}", "passing")
        assert check["Output"] == f"TCP connect 127.0.0.1:{port}: success"
    finally:
        listener.close()


async def test_drain_deregisters_both(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryProcess, client: Any
) -> None:
    _app, running = await start(nursery, tmp_path, registry)
    await wait_check(client, f"service:{PROXY_ID}", "passing")

    await running.drain()
    assert await services(client) == {}
    assert await checks(client) == {}
    assert running.sidecar.stats.as_json()["registry.deregistered"] == 1


async def test_restart_keeps_both_registered(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryProcess, client: Any
) -> None:
    _app, running = await start(nursery, tmp_path, registry)
    await wait_check(client, f"service:{PROXY_ID}", "passing")

    running.sidecar.start_restart("test")  # as SIGUSR2 does
    with trio.fail_after(TIMEOUT):
        await running.done.wait()
    # The next process registers the same IDs; meanwhile the checks stay passing.
    assert {SERVICE_ID, PROXY_ID} <= (await services(client)).keys()
    found = await checks(client)
    assert found[f"service:{PROXY_ID}"]["Status"] == "passing"
    assert found[f"service:{SERVICE_ID}"]["Status"] == "passing"
    assert "registry.deregistered" not in running.sidecar.stats.as_json()


async def test_drain_is_not_held_up_by_a_hanging_app(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryProcess, client: Any
) -> None:
    check = {"kind": "http", "path": "/health", "interval_s": 0.2, "ttl_s": 30, "timeout_s": 60}
    app, running = await start(nursery, tmp_path, registry, check=check)
    await wait_check(client, f"service:{SERVICE_ID}", "passing")
    app.status = 0  # the next probe hangs (for up to a minute)
    hits = app.hits
    await eventually(lambda: app.hits > hits, what="a probe in flight")
    with trio.fail_after(2 + 2 + 5):  # registration budget + drain timeout + slack
        await running.drain()
    assert await services(client) == {}  # the stuck probe did not cost the deregistration


async def test_drain_is_not_held_up_by_a_dead_registry(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryProcess, client: Any
) -> None:
    _app, running = await start(nursery, tmp_path, registry)
    await wait_registered(client)
    await registry_down(registry, hard=True)
    with trio.fail_after(2 + 2 + 5):  # registration budget + drain timeout + slack
        await running.drain()


async def test_reregisters_after_registry_restart(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryProcess, client: Any
) -> None:
    # A wiped registry loses the tokens it made (as a new Consul cluster would); the
    # management token comes from its command line and survives, so the sidecar holds that.
    app, running = await start(nursery, tmp_path, registry, token=MGMT_TOKEN)
    await wait_check(client, f"service:{SERVICE_ID}", "passing")

    # Restart keeping the data: the checks come back to passing.
    await registry_down(registry, hard=True)
    registration = running.sidecar.registration
    assert registration is not None
    await eventually(lambda: registration.in_sync is False, what="sidecar noticing the loss")
    await registry_up(registry)
    await wait_registered(client)
    await wait_check(client, f"service:{SERVICE_ID}", "passing")

    # Restart with the data lost: the sidecar registers both again.
    await registry_down(registry)
    await registry_up(registry, wipe=True)
    found = await wait_registered(client)
    assert found[PROXY_ID]["Port"] == running.inbound_port
    await wait_check(client, f"service:{SERVICE_ID}", "passing")
    await wait_check(client, f"service:{PROXY_ID}", "passing")
    assert app.hits > 0
    stats = running.sidecar.stats.as_json()
    assert isinstance(stats["registry.registered"], int) and stats["registry.registered"] >= 2
    assert isinstance(stats["registry.errors"], int) and stats["registry.errors"] >= 1


async def test_starts_and_serves_while_registry_is_down(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryProcess, client: Any
) -> None:
    token = service_token(registry, "web")  # made while the registry is up
    await registry_down(registry)
    _app, running = await start(nursery, tmp_path, registry, token=token)
    assert running.sidecar.is_ready()
    registration = running.sidecar.registration
    assert registration is not None
    await eventually(lambda: registration.in_sync is False, what="first failure")
    assert registration.last_error

    await registry_up(registry)
    await wait_registered(client)
    await wait_check(client, f"service:{SERVICE_ID}", "passing")


async def test_registers_with_its_token(
    nursery: trio.Nursery, tmp_path: Path, acl_registry: RegistryProcess
) -> None:
    admin = consul.Consul(host="127.0.0.1", port=acl_registry.port, token=MGMT_TOKEN)
    try:
        await start(nursery, tmp_path, acl_registry, token=MGMT_TOKEN)
        await wait_registered(admin)
        await wait_check(admin, f"service:{SERVICE_ID}", "passing")
    finally:
        admin.http.session.close()


async def test_refused_without_a_token(
    nursery: trio.Nursery, tmp_path: Path, acl_registry: RegistryProcess
) -> None:
    _app, running = await start(nursery, tmp_path, acl_registry, token=None)
    registration = running.sidecar.registration
    assert registration is not None
    await eventually(lambda: registration.in_sync is False, what="refusal")
    assert registration.last_error is not None and "403" in registration.last_error
    assert running.sidecar.is_ready()  # serving on regardless


def test_meshd_process_registers_and_deregisters_on_sigterm(
    tmp_path: Path, registry: RegistryProcess, client: Any
) -> None:
    """The real ``meshd run`` process: registered once ready, gone after SIGTERM, exit 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        app_port = int(sock.getsockname()[1])  # nothing listens: critical, still registered
    section = registry_section(registry, check={"kind": "tcp", "interval_s": 0.2, "ttl_s": 30})
    boot = write_sidecar(tmp_path / "web", service="web", app_port=app_port, registry=section)
    log_path = tmp_path / "meshd.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshd", "run", "-c", str(boot)],
            env=clean_env(),
            cwd=str(tmp_path),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: {SERVICE_ID, PROXY_ID} <= client.agent.services().keys(),
            what="the meshd process's registrations",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    assert client.agent.services() == {}
    events = [
        json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
    ]
    names = [e["event"] for e in events]
    assert names.index("registered") < names.index("deregistered") < names.index("drained")
