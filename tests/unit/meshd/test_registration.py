"""Tests for meshd.registration: the registration plan (values) and the app probe (sockets)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import ValidationError

from meshcore.errors import ConfigError
from meshcore.model import Bootstrap, SocketAddr
from meshcore.model.bootstrap import AppCheck, RegistryConfig
from meshcore.registry import CONNECT_PROXY, SIDECAR_META_KEY, ProxySpec
from meshd.config import RuntimeConfig
from meshd.registration import (
    PlanInputs,
    ProbeResult,
    Registration,
    plan_registrations,
    probe_app,
)


def bootstrap(**fields: Any) -> Bootstrap:
    doc: dict[str, Any] = {
        "service": "web",
        "app": "127.0.0.1:8080",
        "snapshot": {"file": "snapshot.yaml"},
        "registry": {},
        **fields,
    }
    return Bootstrap.model_validate(doc)


def plan_for(boot: Bootstrap, inbound: str | None = "10.0.0.5:15006") -> Any:
    assert boot.registry is not None
    addr = SocketAddr.model_validate(inbound) if inbound else None
    return plan_registrations(PlanInputs(boot, addr), boot.registry, hostname="host-a")


def test_registry_section_defaults() -> None:
    boot = bootstrap()
    reg = boot.registry
    assert reg is not None
    assert reg.address == "http://127.0.0.1:8500"
    assert reg.token is None
    assert reg.check == AppCheck()
    assert reg.check.ttl == 15.0
    assert Bootstrap.model_validate({**boot.model_dump(), "registry": None}).registry is None


def test_token_is_not_dumped() -> None:
    boot = bootstrap(registry={"token": "s3cret"})
    assert boot.registry is not None and boot.registry.token is not None
    assert boot.registry.token.get_secret_value() == "s3cret"
    assert "s3cret" not in str(boot.model_dump(mode="json"))


@pytest.mark.parametrize(
    "registry",
    [
        {"address": "127.0.0.1:8500"},
        {"address": "http://127.0.0.1:8500/v1"},
        {"address": "http://127.0.0.1:99999"},
        {"check": {"kind": "grpc"}},
        {"check": {"path": "health"}},
        {"check": {"interval_s": 5, "ttl_s": 6}},
        {"check": {"interval_s": 0}},
        {"unknown": 1},
        {"token": "t", "token_file": "t.token"},
    ],
)
def test_bad_registry_sections(registry: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        bootstrap(registry=registry)


def test_plan_registers_service_and_sidecar() -> None:
    plan = plan_for(bootstrap(registry={"tags": ["v1"], "meta": {"team": "a"}}))
    service, proxy = plan.registrations
    assert service.name == "web"
    assert service.service_id == "web-host-a-8080"
    assert (service.address, service.port) == ("10.0.0.5", 8080)
    assert service.tags == ("v1",)
    # The marker tells watchers to reach this instance through its sidecar only.
    assert dict(service.meta) == {"team": "a", SIDECAR_META_KEY: "web-host-a-8080-sidecar-proxy"}
    assert service.kind is None
    (check,) = service.checks
    assert (check.check_id, check.ttl_s) == ("service:web-host-a-8080", 15.0)
    assert proxy.name == "web-sidecar-proxy"
    assert proxy.service_id == "web-host-a-8080-sidecar-proxy"
    assert (proxy.address, proxy.port, proxy.kind) == ("10.0.0.5", 15006, CONNECT_PROXY)
    assert proxy.proxy == ProxySpec("web", "web-host-a-8080", "127.0.0.1", 8080)
    assert proxy.checks[0].check_id == "service:web-host-a-8080-sidecar-proxy"
    assert plan.service_ids == {"web-host-a-8080", "web-host-a-8080-sidecar-proxy"}


def test_plan_ids_and_addresses() -> None:
    assert plan_for(bootstrap(node="edge-1")).service.service_id == "web-edge-1"
    named = plan_for(bootstrap(registry={"service_id": "web-7"}))
    assert named.service.service_id == "web-7"
    assert named.proxy.service_id == "web-7-sidecar-proxy"
    # A wildcard listener says nothing about the host's address: the node's is used.
    assert plan_for(bootstrap(), "0.0.0.0:15006").service.address == ""
    advertised = plan_for(bootstrap(registry={"advertise_address": "192.0.2.7"}), "0.0.0.0:1")
    assert advertised.service.address == advertised.proxy.address == "192.0.2.7"


def test_plan_carries_the_zone_in_service_meta() -> None:
    plan = plan_for(bootstrap(zone="eu-west-1a", registry={"meta": {"team": "a", "zone": "x"}}))
    # The bootstrap's zone wins over registry.meta; the proxy entry carries it too.
    assert plan.service.meta["zone"] == "eu-west-1a"
    assert plan.service.meta["team"] == "a"
    assert dict(plan.proxy.meta) == {"zone": "eu-west-1a"}
    assert plan.service.to_json()["Meta"]["zone"] == "eu-west-1a"
    # No zone: no zone meta (and registry.meta passes through as it is).
    plain = plan_for(bootstrap(registry={"meta": {"zone": "x"}}))
    assert plain.service.meta["zone"] == "x"
    assert not plan_for(bootstrap()).proxy.meta


def test_plan_without_inbound_listener_has_no_sidecar_entry() -> None:
    plan = plan_for(bootstrap(), None)
    assert plan.proxy is None
    assert SIDECAR_META_KEY not in plan.service.meta
    assert [r.name for r in plan.registrations] == ["web"]


def test_plan_ttl_and_deregistration() -> None:
    boot = bootstrap(
        registry={"check": {"interval_s": 2, "ttl_s": 10, "deregister_critical_after_s": 90}}
    )
    plan = plan_for(boot)
    for reg in plan.registrations:
        assert reg.checks[0].ttl_s == 10
        assert reg.checks[0].to_json()["DeregisterCriticalServiceAfter"] == "90s"


# ----------------------------------------------------------------------------------------------
# The probe, against real sockets on 127.0.0.1
# ----------------------------------------------------------------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve(nursery: trio.Nursery, handler: Handler) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def respond(head: bytes) -> Handler:
    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(head)

    return handler


async def closed_port() -> int:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def check(**fields: Any) -> AppCheck:
    return AppCheck.model_validate(fields)


async def test_tcp_probe(nursery: trio.Nursery) -> None:
    port = await serve(nursery, respond(b""))
    app = SocketAddr(host="127.0.0.1", port=port)
    assert await probe_app(check(), app) == ProbeResult(
        "passing", f"TCP connect 127.0.0.1:{port}: success"
    )
    down = SocketAddr(host="127.0.0.1", port=await closed_port())
    result = await probe_app(check(), down)
    assert result == ProbeResult("critical", f"TCP connect {down}: Connection refused")


@pytest.mark.parametrize(
    ("head", "status", "tail"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "passing", "200 OK"),
        (b"HTTP/1.0 204 No Content\r\n\r\n", "passing", "204 No Content"),
        (b"HTTP/1.1 429 Too Many Requests\r\n\r\n", "warning", "429 Too Many Requests"),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", "critical", "503 Service Unavailable"),
        (b"SSH-2.0-OpenSSH\r\n", "critical", "no valid HTTP response"),
        (b"", "critical", "no valid HTTP response"),
    ],
)
async def test_http_probe(nursery: trio.Nursery, head: bytes, status: str, tail: str) -> None:
    seen: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            seen.append(await stream.receive_some(65536))
            await stream.send_all(head)

    port = await serve(nursery, handler)
    app = SocketAddr(host="127.0.0.1", port=port)
    result = await probe_app(check(kind="http", path="/healthz"), app)
    assert result == ProbeResult(status, f"HTTP GET http://127.0.0.1:{port}/healthz: {tail}")  # type: ignore[arg-type]
    assert seen[0].startswith(b"GET /healthz HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}".encode() in seen[0]


async def test_http_probe_times_out(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    port = await serve(nursery, silent)
    result = await probe_app(
        check(kind="http", timeout_s=0.1), SocketAddr(host="127.0.0.1", port=port)
    )
    assert result == ProbeResult(
        "critical", f"HTTP GET http://127.0.0.1:{port}/: timed out after 0.1s"
    )


async def test_http_probe_refused() -> None:
    app = SocketAddr(host="127.0.0.1", port=await closed_port())
    result = await probe_app(check(kind="http"), app)
    assert result == ProbeResult("critical", f"HTTP GET http://{app}/: Connection refused")


def test_config_registry_is_read_from_yaml_shape() -> None:
    cfg = RegistryConfig.model_validate(
        {"address": "https://consul:8501", "check": {"kind": "http", "path": "/ready"}}
    )
    assert cfg.check.kind == "http"
    assert cfg.check.path == "/ready"


class _NoSidecar:
    """A sidecar before its first configuration (the plan has no inputs yet)."""

    def __init__(self) -> None:
        self.runtime: RuntimeConfig | None = None
        self.listeners: Any = None


def test_registry_token_file_is_read_relative_to_the_bootstrap(tmp_path: Path) -> None:
    (tmp_path / "web.registry-token").write_text("  s3cret-token\n")
    config = RegistryConfig(token_file=Path("web.registry-token"))
    reg = Registration.for_sidecar(_NoSidecar(), config, bootstrap_path=tmp_path / "web.yaml")
    assert reg.settings().token == "s3cret-token"
    missing = RegistryConfig(token_file=Path("gone.token"))
    with pytest.raises(ConfigError, match=r"registry\.token_file: .*gone\.token"):
        Registration.for_sidecar(_NoSidecar(), missing, bootstrap_path=tmp_path / "web.yaml")
    (tmp_path / "empty.token").write_text("\n")
    empty = RegistryConfig(token_file=Path("empty.token"))
    with pytest.raises(ConfigError, match="empty"):
        Registration.for_sidecar(_NoSidecar(), empty, bootstrap_path=tmp_path / "web.yaml")
