"""meshcore.model: validation rules, and load_model errors naming file, field path and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from meshcore.errors import ConfigError
from meshcore.model import (
    LOCAL_APP_CLUSTER,
    Bootstrap,
    Cluster,
    HeaderMatch,
    Listener,
    PathMatch,
    Route,
    RouteMatch,
    RouteTable,
    Snapshot,
    SocketAddr,
)
from meshcore.model.loading import field_path, load_model, model_from_data

# -- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:15001", "127.0.0.1", 15001),
        ("localhost:0", "localhost", 0),
        ("[::1]:8080", "::1", 8080),
        ("::1:8080", "::1", 8080),
    ],
)
def test_socket_addr_from_text(text: str, host: str, port: int) -> None:
    addr = SocketAddr.model_validate(text)
    assert (addr.host, addr.port) == (host, port)


def test_socket_addr_from_mapping_and_str() -> None:
    assert str(SocketAddr.model_validate({"host": "10.0.0.1", "port": 80})) == "10.0.0.1:80"
    assert str(SocketAddr.model_validate("[::1]:80")) == "[::1]:80"


@pytest.mark.parametrize("text", ["nope", "host:", ":80", "host:http", "h:70000", "h:-1"])
def test_socket_addr_rejects(text: str) -> None:
    with pytest.raises(ValidationError):
        SocketAddr.model_validate(text)


def test_models_are_frozen_and_strict() -> None:
    addr = SocketAddr(host="h", port=1)
    with pytest.raises(ValidationError):
        addr.port = 2
    with pytest.raises(ValidationError, match="Extra inputs"):
        SocketAddr.model_validate({"host": "h", "port": 1, "prot": 2})


# -- listeners, routes, clusters ---------------------------------------------------------------


def listener(**fields: Any) -> Listener:
    base: dict[str, Any] = {"name": "l", "direction": "outbound", "address": "127.0.0.1:1"}
    return Listener.model_validate({**base, **fields})


def test_listener_defaults_and_target() -> None:
    out = listener(cluster="api")
    assert out.protocol == "http"
    assert out.target_cluster == "api"
    assert out.max_request_headers_kb == 60
    inbound = Listener.model_validate(
        {"name": "in", "direction": "inbound", "address": "127.0.0.1:2"}
    )
    assert inbound.target_cluster == LOCAL_APP_CLUSTER
    assert listener(route_table="main").target_cluster is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cluster": "a", "route_table": "t"}, "set route_table or cluster, not both"),
        ({"protocol": "tcp", "route_table": "t"}, "route_table is for http"),
        ({}, "needs a route_table or a cluster"),
        ({"cluster": "a", "protocol": "udp"}, "protocol"),
        ({"cluster": "a", "idle_timeout_s": 0}, "greater than 0"),
        ({"cluster": "a", "max_request_headers_kb": 0}, "greater than or equal to 1"),
        ({"cluster": "a", "direction": "sideways"}, "direction"),
    ],
)
def test_listener_rejects(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        listener(**fields)


def test_path_match_exactly_one() -> None:
    assert PathMatch(prefix="/v2").prefix == "/v2"
    with pytest.raises(ValidationError, match="exactly one"):
        PathMatch()
    with pytest.raises(ValidationError, match="exactly one"):
        PathMatch(exact="/a", prefix="/a")
    with pytest.raises(ValidationError, match="invalid regular expression"):
        PathMatch(regex="(")


def test_header_match() -> None:
    assert HeaderMatch(name="X-User").name == "x-user"
    with pytest.raises(ValidationError, match="not a valid header name"):
        HeaderMatch(name="bad name")
    with pytest.raises(ValidationError, match="at most one"):
        HeaderMatch(name="x", exact="a", prefix="b")


def test_route_match_methods() -> None:
    assert RouteMatch(methods=("get", "Post")).methods == ("GET", "POST")
    with pytest.raises(ValidationError, match="not a valid HTTP method"):
        RouteMatch(methods=("GE T",))


def test_route_rules() -> None:
    route = Route.model_validate({"name": "r", "backends": [{"cluster": "a"}]})
    assert route.timeout_s == 15.0
    assert route.match == RouteMatch()
    with pytest.raises(ValidationError, match="at least one backend needs a weight"):
        Route.model_validate({"name": "r", "backends": [{"cluster": "a", "weight": 0}]})
    with pytest.raises(ValidationError, match="at least 1 item"):
        Route.model_validate({"name": "r", "backends": []})
    with pytest.raises(ValidationError, match="duplicate route names: r"):
        RouteTable.model_validate(
            {"name": "t", "routes": [{"name": "r", "backends": [{"cluster": "a"}]}] * 2}
        )


def test_cluster_rules() -> None:
    c = Cluster.model_validate(
        {"name": "api", "service": "api", "endpoints": [{"host": "h", "port": 1}]}
    )
    assert c.lb_policy == "round_robin"
    assert c.endpoints[0].weight == 1
    with pytest.raises(ValidationError, match="reserved"):
        Cluster.model_validate({"name": LOCAL_APP_CLUSTER, "service": "x"})
    with pytest.raises(ValidationError, match="less than or equal to 65535"):
        Cluster.model_validate(
            {"name": "a", "service": "a", "endpoints": [{"host": "h", "port": 65536}]}
        )
    with pytest.raises(ValidationError, match="lb_policy"):
        Cluster.model_validate({"name": "a", "service": "a", "lb_policy": "fastest"})


# -- snapshot ---------------------------------------------------------------------------------


def snapshot_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": 3,
        "listeners": [
            {
                "name": "api",
                "direction": "outbound",
                "address": "127.0.0.1:15001",
                "cluster": "api",
            },
            {
                "name": "routed",
                "direction": "outbound",
                "address": "127.0.0.1:15003",
                "route_table": "main",
            },
            {"name": "inbound", "direction": "inbound", "address": "127.0.0.1:15006"},
        ],
        "route_tables": [
            {
                "name": "main",
                "routes": [
                    {
                        "name": "v2",
                        "match": {"path": {"prefix": "/v2"}},
                        "backends": [{"cluster": "api"}],
                    }
                ],
            }
        ],
        "clusters": [
            {"name": "api", "service": "api", "endpoints": [{"host": "127.0.0.1", "port": 15006}]}
        ],
    }
    data.update(changes)
    return data


def test_snapshot_valid_and_lookups() -> None:
    snap = Snapshot.model_validate(snapshot_data())
    assert snap.version == 3
    assert snap.cluster("api") is not None and snap.cluster("nope") is None
    assert snap.route_table("main") is not None and snap.route_table("nope") is None


def test_snapshot_may_name_local_app() -> None:
    data = snapshot_data(
        listeners=[
            {
                "name": "x",
                "direction": "outbound",
                "address": "127.0.0.1:1",
                "cluster": LOCAL_APP_CLUSTER,
            }
        ]
    )
    assert Snapshot.model_validate(data).listeners[0].cluster == LOCAL_APP_CLUSTER


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": -1}, "greater than or equal to 0"),
        (
            {
                "listeners": [
                    {"name": "a", "direction": "inbound", "address": "127.0.0.1:1"},
                    {"name": "a", "direction": "inbound", "address": "127.0.0.1:2"},
                ]
            },
            "duplicate listeners: a",
        ),
        (
            {
                "listeners": [
                    {"name": "a", "direction": "inbound", "address": "127.0.0.1:1"},
                    {"name": "b", "direction": "inbound", "address": "127.0.0.1:1"},
                ]
            },
            "duplicate listener address",
        ),
        (
            {"clusters": [{"name": "api", "service": "a"}, {"name": "api", "service": "b"}]},
            "duplicate clusters: api",
        ),
        (
            {
                "listeners": [
                    {
                        "name": "a",
                        "direction": "outbound",
                        "address": "127.0.0.1:1",
                        "cluster": "nope",
                    }
                ]
            },
            "listener 'a' names unknown cluster 'nope'",
        ),
        (
            {
                "listeners": [
                    {
                        "name": "a",
                        "direction": "outbound",
                        "address": "127.0.0.1:1",
                        "route_table": "nope",
                    }
                ]
            },
            "listener 'a' names unknown route table 'nope'",
        ),
        (
            {
                "route_tables": [
                    {"name": "main", "routes": [{"name": "r", "backends": [{"cluster": "gone"}]}]}
                ]
            },
            "route main/r names unknown cluster 'gone'",
        ),
    ],
)
def test_snapshot_rejects(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Snapshot.model_validate(snapshot_data(**change))


# -- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_defaults() -> None:
    boot = Bootstrap.model_validate(
        {"service": "web", "app": "127.0.0.1:8080", "snapshot": {"file": "s.yaml"}}
    )
    assert boot.node_id == "web-sidecar"
    assert str(boot.admin) == "127.0.0.1:15000"
    assert boot.snapshot.file == Path("s.yaml")
    assert boot.access_log.enabled is False
    assert boot.workers == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"service": "Web_1"}, "should match pattern"),
        ({"snapshot": {}}, "set file"),
        ({"trace_sample_rate": 2}, "less than or equal to 1"),
        ({"drain_timeout_s": -1}, "greater than or equal to 0"),
        ({"access_log": {"sample_rate": 1.5}}, "less than or equal to 1"),
    ],
)
def test_bootstrap_rejects(change: dict[str, Any], message: str) -> None:
    data = {"service": "web", "app": "127.0.0.1:8080", "snapshot": {"file": "s.yaml"}, **change}
    with pytest.raises(ValidationError, match=message):
        Bootstrap.model_validate(data)


# -- load_model -------------------------------------------------------------------------------


def test_field_path() -> None:
    assert field_path(("listeners", 0, "address", "port")) == "listeners[0].address.port"
    assert field_path((0, "a")) == "[0].a"
    assert field_path(()) == "(top level)"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_lines(model: type[Any], path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_model(model, path)
    return str(info.value).splitlines()


def test_load_model_valid(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "snap.yaml",
        "version: 1\nlisteners:\n"
        "  - {name: api, direction: outbound, address: '127.0.0.1:0', cluster: api}\n"
        "clusters:\n  - {name: api, service: api, endpoints: [{host: 127.0.0.1, port: 1}]}\n",
    )
    snap = load_model(Snapshot, path)
    assert snap.listeners[0].address.port == 0


def test_load_model_json_is_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "snap.json", '{"version": 7}')
    assert load_model(Snapshot, path).version == 7


def test_error_names_file_field_path_and_reason(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "snap.yaml",
        "version: 1\n"
        "listeners:\n"
        "  - {name: a, direction: outbound, address: nope, cluster: api}\n"
        "  - {name: b, direction: outbound, address: '127.0.0.1:1', adress: x, cluster: api}\n"
        "  - {name: c, direction: outbound, address: '127.0.0.1:2', cluster: api, route_table: t}\n"
        "clusters:\n"
        "  - {name: api, service: api, endpoints: [{host: h, port: 70000}]}\n",
    )
    assert error_lines(Snapshot, path) == [
        f"{path}: listeners[0].address: expected 'host:port', got 'nope'",
        f"{path}: listeners[1].adress: Extra inputs are not permitted",
        f"{path}: listeners[2]: set route_table or cluster, not both",
        f"{path}: clusters[0].endpoints[0].port: Input should be less than or equal to 65535",
    ]


def test_error_of_whole_snapshot_check(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "snap.yaml",
        "version: 1\nlisteners:\n"
        "  - {name: a, direction: outbound, address: '127.0.0.1:1', cluster: nope}\n",
    )
    assert error_lines(Snapshot, path) == [
        f"{path}: (top level): listener 'a' names unknown cluster 'nope'"
    ]


def test_error_missing_field(tmp_path: Path) -> None:
    path = write(tmp_path, "bootstrap.yaml", "service: web\nsnapshot: {file: s.yaml}\n")
    assert error_lines(Bootstrap, path) == [f"{path}: app: Field required"]


def test_error_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "snap.yaml", "version: one\n")
    [line] = error_lines(Snapshot, path)
    assert line.startswith(f"{path}: version: ")
    assert "integer" in line


def test_error_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "snap.yaml", "version: 1\nlisteners: [\n  - x\n")
    [line] = error_lines(Snapshot, path)
    assert line.startswith(f"{path}:3:3: invalid YAML: ")


def test_error_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "snap.yaml", "- 1\n- 2\n")
    assert error_lines(Snapshot, path) == [f"{path}: (top level): expected a mapping, got list"]
    empty = write(tmp_path, "empty.yaml", "")
    assert error_lines(Snapshot, empty) == [
        f"{empty}: (top level): expected a mapping, got NoneType"
    ]


def test_error_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert error_lines(Snapshot, missing) == [f"{missing}: cannot read: No such file or directory"]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"version: \xff\xfe\n")
    [line] = error_lines(Snapshot, binary)
    assert line.startswith(f"{binary}: not UTF-8 text")


def test_model_from_data_source_label() -> None:
    with pytest.raises(ConfigError) as info:
        model_from_data(Snapshot, {"version": -1}, source="snap.yaml")
    assert str(info.value) == "snap.yaml: version: Input should be greater than or equal to 0"


def test_http_settings_on_a_tcp_listener_are_refused() -> None:
    """A tcp listener parses no HTTP: its HTTP limits would be accepted and ignored."""
    base = {
        "name": "db",
        "direction": "outbound",
        "address": {"host": "127.0.0.1", "port": 5432},
        "protocol": "tcp",
        "cluster": "db",
    }
    Listener.model_validate(base)
    Listener.model_validate({**base, "max_connections": 10, "first_byte_timeout_s": 5})
    with pytest.raises(ValidationError, match="max_request_header_count: http listener"):
        Listener.model_validate({**base, "max_request_header_count": 50})
