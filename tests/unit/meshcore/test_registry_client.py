"""Tests for meshcore.registry: values and parsing (pure), backoff, and the client's edges.

The client tests run py-consul against a tiny stdlib HTTP server on 127.0.0.1 that answers
what each test scripts (status codes, bodies), to pin down how answers become our errors.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trio

from meshcore.errors import MeshError
from meshcore.registry import (
    CONNECT_PROXY,
    Backoff,
    CheckState,
    HealthEntry,
    ProxySpec,
    RegistryError,
    RegistryNotFound,
    RegistryPermissionDenied,
    RegistryProtocolError,
    RegistryRequestError,
    RegistryUnavailable,
    ServiceInstance,
    ServiceRegistration,
    TtlCheck,
    aggregate_status,
    go_duration,
    parse_catalog_services,
    parse_health_entries,
    parse_index,
)
from meshcore.registry.client import RegistryClient, RegistrySettings

# ----------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(15, "15s"), (15.0, "15s"), (0.25, "250ms"), (1.5, "1500ms"), (0, "0s"), (600, "600s")],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_go_duration_rejects_non_durations(bad: float) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        go_duration(bad)


def test_sidecar_registration_body() -> None:
    reg = ServiceRegistration(
        name="web-sidecar-proxy",
        service_id="web-1-sidecar-proxy",
        address="10.0.0.5",
        port=21000,
        kind=CONNECT_PROXY,
        proxy=ProxySpec("web", "web-1", "127.0.0.1", 8080),
        checks=(
            TtlCheck("service:web-1-sidecar-proxy", "alive", 15, deregister_critical_after_s=60),
        ),
    )
    assert reg.to_json() == {
        "Name": "web-sidecar-proxy",
        "ID": "web-1-sidecar-proxy",
        "Address": "10.0.0.5",
        "Port": 21000,
        "Kind": "connect-proxy",
        "Proxy": {
            "DestinationServiceName": "web",
            "DestinationServiceID": "web-1",
            "LocalServiceAddress": "127.0.0.1",
            "LocalServicePort": 8080,
        },
        "Checks": [
            {
                "CheckID": "service:web-1-sidecar-proxy",
                "Name": "alive",
                "TTL": "15s",
                "DeregisterCriticalServiceAfter": "60s",
            }
        ],
    }


def test_checks_can_start_with_a_status() -> None:
    reg = ServiceRegistration(
        "web", "web-1", "", 80, checks=(TtlCheck("a", "a", 5), TtlCheck("b", "b", 5))
    )
    started = reg.with_check_status("warning")
    assert [c["Status"] for c in started.to_json()["Checks"]] == ["warning", "warning"]
    assert "Status" not in reg.to_json()["Checks"][0]
    assert started.with_check_status("passing").checks[1].status == "passing"


def test_plain_registration_body_leaves_out_empty_fields() -> None:
    reg = ServiceRegistration(name="db", service_id="db-1", address="", port=5432)
    assert reg.to_json() == {"Name": "db", "ID": "db-1", "Port": 5432}
    tagged = ServiceRegistration("db", "db-1", "", 5432, tags=("v1",), meta={"az": "a"})
    assert tagged.to_json()["Tags"] == ["v1"]
    assert tagged.to_json()["Meta"] == {"az": "a"}


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((), "passing"),
        (("passing", "passing"), "passing"),
        (("passing", "warning"), "warning"),
        (("warning", "critical", "passing"), "critical"),
        (("passing", "bogus"), "critical"),
    ],
)
def test_aggregate_status(statuses: tuple[str, ...], expected: str) -> None:
    assert aggregate_status(statuses) == expected


# A /v1/health/service/web answer as Consul documents it (api-docs/health), trimmed.
HEALTH_BODY: list[dict[str, Any]] = [
    {
        "Node": {"ID": "n1", "Node": "host-a", "Address": "10.0.0.5", "Datacenter": "dc1"},
        "Service": {
            "ID": "web-1",
            "Service": "web",
            "Tags": ["v1"],
            "Address": "",
            "Meta": {"version": "1"},
            "Port": 8080,
            "Kind": "",
            "Proxy": {},
        },
        "Checks": [
            {"Node": "host-a", "CheckID": "serfHealth", "Name": "Serf", "Status": "passing"},
            {
                "Node": "host-a",
                "CheckID": "service:web-1",
                "Name": "app",
                "Status": "warning",
                "ServiceID": "web-1",
                "Output": "HTTP GET http://127.0.0.1:8080/: 429 Too Many Requests",
            },
        ],
    },
    {
        "Node": {"Node": "host-b", "Address": "10.0.0.6"},
        "Service": {
            "ID": "web-2-sidecar-proxy",
            "Service": "web-sidecar-proxy",
            "Tags": None,
            "Address": "10.0.0.60",
            "Port": 21000,
            "Kind": "connect-proxy",
            "Proxy": {
                "DestinationServiceName": "web",
                "DestinationServiceID": "web-2",
                "LocalServiceAddress": "127.0.0.1",
                "LocalServicePort": 8080,
            },
        },
        "Checks": [
            {"CheckID": "_service_maintenance:web-2-sidecar-proxy", "Status": "critical"},
        ],
    },
]


def test_parse_health_entries() -> None:
    plain, proxy = parse_health_entries(HEALTH_BODY)
    assert plain.node == "host-a"
    assert plain.address == "10.0.0.5"  # no service address: the node's
    assert plain.service.tags == ("v1",)
    assert dict(plain.service.meta) == {"version": "1"}
    assert plain.service.proxy is None
    assert plain.status == "warning"
    assert plain.checks[1] == CheckState(
        check_id="service:web-1",
        name="app",
        status="warning",
        service_id="web-1",
        output="HTTP GET http://127.0.0.1:8080/: 429 Too Many Requests",
    )
    assert proxy.address == "10.0.0.60"
    assert proxy.service.kind == CONNECT_PROXY
    assert proxy.service.proxy == ProxySpec("web", "web-2", "127.0.0.1", 8080)
    assert proxy.status == "maintenance"


def test_entries_compare_by_value() -> None:
    assert parse_health_entries(HEALTH_BODY) == parse_health_entries(
        json.loads(json.dumps(HEALTH_BODY))
    )
    entry = HealthEntry("n", "10.0.0.1", ServiceInstance("a-1", "a", "", 80))
    assert entry.status == "passing"  # no checks
    assert entry.address == "10.0.0.1"


@pytest.mark.parametrize(
    "body",
    [
        {"not": "a list"},
        [{"Node": {}}],
        [{"Node": {"Node": "n"}, "Service": {"Service": "x"}}],
        [1],
    ],
)
def test_malformed_health_body(body: object) -> None:
    with pytest.raises(RegistryProtocolError):
        parse_health_entries(body)


def test_empty_health_bodies() -> None:
    assert parse_health_entries([]) == ()
    assert parse_health_entries(None) == ()


def test_parse_catalog_services() -> None:
    assert parse_catalog_services({"consul": [], "web": ["v1", "v2"], "x": None}) == {
        "consul": (),
        "web": ("v1", "v2"),
        "x": (),
    }
    with pytest.raises(RegistryProtocolError):
        parse_catalog_services(["web"])
    with pytest.raises(RegistryProtocolError):
        parse_catalog_services({"web": "v1"})


def test_parse_index() -> None:
    assert parse_index("42") == 42
    for bad in ("", "x", "-1", None):
        with pytest.raises(RegistryProtocolError):
            parse_index(bad)


def test_error_hierarchy() -> None:
    assert issubclass(RegistryError, MeshError)
    assert issubclass(RegistryUnavailable, RegistryError)
    assert issubclass(RegistryPermissionDenied, RegistryRequestError)
    assert issubclass(RegistryNotFound, RegistryRequestError)
    assert not issubclass(RegistryRequestError, RegistryUnavailable)


# ----------------------------------------------------------------------------------------------
# Backoff
# ----------------------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_caps() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(7))
    steps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for step in steps:
        delay = backoff.next_delay()
        assert step / 2 <= delay <= step
    assert backoff.failures == len(steps)
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() <= 0.5


def test_backoff_jitter_spreads_clients() -> None:
    delays = {Backoff(1.0, 1.0, rng=random.Random(seed)).next_delay() for seed in range(20)}
    assert len(delays) == 20


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(0, 1)
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(2, 1)


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://127.0.0.1:8500", ("http", "127.0.0.1", 8500)),
        ("http://localhost", ("http", "localhost", 8500)),
        ("https://consul.internal", ("https", "consul.internal", 8501)),
        ("HTTP://[::1]:9000/", ("http", "::1", 9000)),
    ],
)
def test_settings_endpoint(url: str, endpoint: tuple[str, str, int]) -> None:
    assert RegistrySettings(url=url).endpoint() == endpoint


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8500", "ftp://x", "http://", "http://h/v1", "http://u@h", "http://h?x=1"]
)
def test_settings_reject_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="registry address"):
        RegistrySettings(url=url)


# ----------------------------------------------------------------------------------------------
# The client against a scripted HTTP server
# ----------------------------------------------------------------------------------------------

Reply = tuple[int, dict[str, str], bytes]


class ScriptedServer:
    """Answers every request with ``reply(method, path)``; records what it was sent."""

    def __init__(self, reply: Callable[[str, str], Reply]) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append((self.command, self.path, headers, body))
                status, extra, payload = reply(self.command, self.path)
                if status == 0:  # hang until released, then drop the connection
                    server.release.wait(30)
                    self.close_connection = True
                    return
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[str, str], Reply]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(reply: Callable[[str, str], Reply]) -> ScriptedServer:
        server = ScriptedServer(reply)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _client(port: int, **kwargs: Any) -> RegistryClient:
    return RegistryClient(RegistrySettings(url=f"http://127.0.0.1:{port}", **kwargs))


def _json(status: int, value: object, index: int | None = None) -> Reply:
    headers = {"Content-Type": "application/json"}
    if index is not None:
        headers["X-Consul-Index"] = str(index)
    return status, headers, json.dumps(value).encode()


async def test_register_sends_the_consul_body_and_token(scripted: Any) -> None:
    server = scripted(lambda m, p: _json(200, None))
    reg = ServiceRegistration(
        "web-sidecar-proxy",
        "web-1-sidecar-proxy",
        "127.0.0.1",
        21000,
        kind=CONNECT_PROXY,
        proxy=ProxySpec("web", "web-1", "127.0.0.1", 8080),
        checks=(TtlCheck("service:web-1-sidecar-proxy", "alive", 9),),
    )
    with _client(server.port, token="s3cret") as client:
        await client.register_service(reg)
    method, path, headers, body = server.requests[0]
    assert (method, path) == ("PUT", "/v1/agent/service/register?replace-existing-checks=true")
    assert headers["x-consul-token"] == "s3cret"
    sent = {k.lower(): v for k, v in json.loads(body).items()}
    assert sent["kind"] == "connect-proxy"
    assert sent["proxy"]["DestinationServiceID"] == "web-1"
    assert sent["checks"] == [
        {"CheckID": "service:web-1-sidecar-proxy", "Name": "alive", "TTL": "9s"}
    ]


async def test_ttl_update_reports_unknown_checks(scripted: Any) -> None:
    def reply(method: str, path: str) -> Reply:
        if "known" in path and "unknown" not in path:
            return 200, {}, b""
        return 404, {}, b'CheckID "unknown" does not have associated TTL'

    server = scripted(reply)
    with _client(server.port) as client:
        assert await client.update_ttl("known", "passing", "all good") is True
        assert await client.update_ttl("unknown", "critical") is False
        assert await client.ttl_warn("known") is True
    assert server.requests[0][1] == "/v1/agent/check/pass/known?note=all+good"
    assert server.requests[1][1] == "/v1/agent/check/fail/unknown"
    assert server.requests[2][1] == "/v1/agent/check/warn/known"


async def test_health_service_blocking_query(scripted: Any) -> None:
    server = scripted(lambda m, p: _json(200, HEALTH_BODY, index=17))
    with _client(server.port, datacenter="dc2") as client:
        index, entries = await client.health_service("web", index=12, wait_s=30)
    assert index == 17
    assert entries == parse_health_entries(HEALTH_BODY)
    path = server.requests[0][1]
    assert path.startswith("/v1/health/service/web?")
    assert {"index=12", "wait=30s", "dc=dc2"} <= set(path.split("?", 1)[1].split("&"))


async def test_catalog_services(scripted: Any) -> None:
    server = scripted(lambda m, p: _json(200, {"web": ["v1"], "consul": []}, index=5))
    with _client(server.port) as client:
        assert await client.catalog_services() == (5, {"web": ("v1",), "consul": ()})
    assert server.requests[0][1] == "/v1/catalog/services"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, RegistryRequestError),
        (401, RegistryPermissionDenied),
        (403, RegistryPermissionDenied),
        (405, RegistryRequestError),
        (500, RegistryUnavailable),
        (503, RegistryUnavailable),
    ],
)
async def test_http_errors_are_typed(scripted: Any, status: int, error: type[Exception]) -> None:
    server = scripted(lambda m, p: (status, {}, b"nope"))
    with _client(server.port) as client, pytest.raises(error) as info:
        await client.register_service(ServiceRegistration("a", "a-1", "", 1))
    assert getattr(info.value, "status", None) == status


async def test_missing_index_is_a_protocol_error(scripted: Any) -> None:
    server = scripted(lambda m, p: _json(200, {}))
    with _client(server.port) as client, pytest.raises(RegistryProtocolError):
        await client.catalog_services()


async def test_bad_json_is_a_protocol_error(scripted: Any) -> None:
    server = scripted(lambda m, p: (200, {"X-Consul-Index": "3"}, b"{not json"))
    with _client(server.port) as client, pytest.raises(RegistryProtocolError):
        await client.catalog_services()


async def test_connection_refused_is_unavailable() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # bound then closed: nothing listens there
    with _client(port) as client, pytest.raises(RegistryUnavailable) as info:
        await client.leader()
    assert info.value.status is None
    assert str(info.value) == f"registry http://127.0.0.1:{port} unreachable: Connection refused"


async def test_read_timeout_is_unavailable(scripted: Any) -> None:
    server = scripted(lambda m, p: (0, {}, b""))
    with _client(server.port, timeout_s=0.2) as client, pytest.raises(RegistryUnavailable) as info:
        await client.leader()
    assert str(info.value).endswith("unreachable: timed out")


async def test_cancelling_a_parked_query_returns_at_once(scripted: Any) -> None:
    server = scripted(lambda m, p: (0, {}, b""))  # never answers (until the test ends)
    with _client(server.port) as client:
        with trio.move_on_after(0.2) as scope:
            await client.catalog_services(index=5, wait_s=300)
        assert scope.cancelled_caught


async def test_closed_client_refuses_calls() -> None:
    client = _client(1)
    client.close()
    with pytest.raises(RegistryError, match="closed"):
        await client.leader()
