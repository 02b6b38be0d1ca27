"""The drain delay of a real ``meshd run`` process, with the real registry (ACLs on).

On SIGTERM the sidecar answers 503 on ``/ready`` and leaves the registry at once, but keeps
serving for ``drain_delay_s``: new connections are accepted and kept-alive ones answered. Then
its listeners close and the requests still in flight finish. A second SIGTERM or SIGINT ends
the delay early. The bootstrap's ``zone`` is registered as service meta ``zone``.
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lifecycle_support import (
    SidecarProcess,
    UpstreamApp,
    bootstrap_doc,
    free_port,
    http_get,
    running_sidecar,
    snapshot_doc,
    wait_for,
    write_yaml,
)

from .compat_support import RegistryProcess
from .discovery_support import py_consul, service_token

pytestmark = pytest.mark.timeout(120)

SERVICE_ID = "web-1"
PROXY_ID = "web-1-sidecar-proxy"


@pytest.fixture
def upstream() -> Iterator[UpstreamApp]:
    with UpstreamApp() as app:
        yield app


@pytest.fixture
def client(acl_registry: RegistryProcess) -> Iterator[Any]:
    c = py_consul(acl_registry)
    try:
        yield c
    finally:
        c.http.session.close()


def _write_config(
    tmp_path: Path, upstream: UpstreamApp, registry: RegistryProcess, *, drain_delay_s: float
) -> Path:
    boot = tmp_path / "bootstrap.yaml"
    section = {
        "address": registry.url,
        "token": service_token(registry, "web"),
        "service_id": SERVICE_ID,
        "check": {"kind": "tcp", "interval_s": 0.2, "ttl_s": 30},
    }
    doc = bootstrap_doc(
        app_port=upstream.port,
        drain_timeout_s=20,
        drain_delay_s=drain_delay_s,
        zone="zone-a",
        registry=section,
    )
    write_yaml(boot, doc)
    # Distinct ports: the snapshot refuses two listeners on the same address (even port 0).
    inbound = {"name": "inbound", "direction": "inbound", "address": f"127.0.0.1:{free_port()}"}
    snapshot = snapshot_doc(version=1, upstream_port=upstream.port, extra_listeners=[inbound])
    write_yaml(tmp_path / "snapshot.yaml", snapshot)
    return boot


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def _registered(client: Any) -> set[str]:
    return set(client.agent.services().keys())


def _drain_phase(sc: SidecarProcess) -> str:
    return str(sc.stat("drain.phase"))


class _Request(threading.Thread):
    """A GET in a thread, keeping the status or the exception."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.status: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.status = http_get(self.port, self.path, timeout=30)[0]
        except (OSError, http.client.HTTPException) as exc:
            self.error = exc


def test_drain_delay_keeps_serving_while_callers_learn(
    tmp_path: Path, upstream: UpstreamApp, acl_registry: RegistryProcess, client: Any
) -> None:
    delay_s = 3.0
    boot = _write_config(tmp_path, upstream, acl_registry, drain_delay_s=delay_s)
    with running_sidecar(boot) as sc:
        port = sc.listener_port("inbound")
        wait_for(lambda: {SERVICE_ID, PROXY_ID} <= _registered(client), timeout=20, what="reg")
        services = client.agent.services()
        # Bootstrap.zone goes into the registry as service meta, on both instances.
        assert services[SERVICE_ID]["Meta"]["zone"] == "zone-a"
        assert services[PROXY_ID]["Meta"]["zone"] == "zone-a"
        _index, nodes = client.catalog.service("web")
        assert [n["ServiceMeta"]["zone"] for n in nodes] == ["zone-a"]

        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        slow: _Request | None = None
        try:
            kept.request("GET", "/")
            assert kept.getresponse().read() == b"ok\n"
            assert sc.admin("/ready")[0] == 200

            sc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            wait_for(lambda: sc.admin("/ready")[0] == 503, timeout=10, what="/ready 503")
            wait_for(lambda: not _registered(client), timeout=10, what="deregistration")
            # Still within the delay: the registry has forgotten us, the listener has not.
            assert _drain_phase(sc) == "delay", sc.output()
            assert http_get(port, "/")[0] == 200, "a new connection during the delay"
            kept.request("GET", "/")
            assert kept.getresponse().read() == b"ok\n", "a kept-alive connection"
            # A request that outlives the delay: it must finish after the listener closes.
            slow = _Request(port, f"/slow?ms={int(delay_s * 1000) + 1500}")
            slow.start()
            upstream.wait_slow_in_flight(1)
            assert _drain_phase(sc) == "delay", "the delay ended before the checks were done"

            wait_for(lambda: _refused(port), timeout=delay_s + 15, what="listener closed")
            # A lower bound only: the listener may close late on a busy machine, never early.
            assert time.monotonic() - signalled >= delay_s * 0.9
            slow.join(timeout=30)
            assert (slow.status, slow.error) == (200, None)
            assert sc.wait_exit(timeout=30) == 0
        finally:
            kept.close()
            if slow is not None:
                slow.join(timeout=30)
    names = [e["event"] for e in sc.events()]
    assert names.index("deregistered") < names.index("drain delay, still serving")
    assert names.index("drain delay, still serving") < names.index("drained")
    assert "drain delay skipped" not in names


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_second_signal_skips_the_rest_of_the_delay(
    tmp_path: Path,
    upstream: UpstreamApp,
    acl_registry: RegistryProcess,
    client: Any,
    second: signal.Signals,
) -> None:
    # A delay far longer than the test's waits: only the second signal can end it in time.
    boot = _write_config(tmp_path, upstream, acl_registry, drain_delay_s=600)
    with running_sidecar(boot) as sc:
        port = sc.listener_port("inbound")
        wait_for(lambda: {SERVICE_ID, PROXY_ID} <= _registered(client), timeout=20, what="reg")
        sc.send_signal(signal.SIGTERM)
        wait_for(lambda: _drain_phase(sc) == "delay", timeout=10, what="the delay")
        wait_for(lambda: not _registered(client), timeout=10, what="deregistration")
        assert http_get(port, "/")[0] == 200
        sc.send_signal(second)
        assert sc.wait_exit(timeout=30) == 0
    names = [e["event"] for e in sc.events()]
    assert names.index("drain delay skipped") < names.index("drained")
