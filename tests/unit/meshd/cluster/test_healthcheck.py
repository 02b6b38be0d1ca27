"""Health checker pieces tested with values: status lines, and which probes a snapshot wants."""

from __future__ import annotations

import pytest

from meshcore.model.snapshot import Cluster
from meshd.cluster.healthcheck import HealthChecker, parse_status_line
from meshd.cluster.state import ClusterStates

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"HTTP/1.1 200 OK\r\n", 200),
        (b"HTTP/1.0 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n", 503),
        (b"HTTP/1.1 204\r\n", 204),
        (b"HTTP/1.1 200 OK", None),  # incomplete
        (b"SSH-2.0-OpenSSH\r\n", None),
        (b"HTTP/1.1 abc OK\r\n", None),
        (b"\r\n", None),
    ],
)
def test_parse_status_line(data: bytes, status: int | None) -> None:
    assert parse_status_line(data) == status


def _cluster(name: str, ports: list[int], **fields: object) -> Cluster:
    return Cluster.model_validate(
        {
            "name": name,
            "service": name,
            "endpoints": [{"host": "127.0.0.1", "port": p} for p in ports],
            **fields,
        }
    )


def test_probes_follow_the_snapshot() -> None:
    checker = HealthChecker(ClusterStates())
    checker.update([_cluster("a", [1, 2], health_check={}), _cluster("b", [3])])
    assert checker.probes == 2  # b has no health check
    checker.update([_cluster("a", [2, 4], health_check={"interval_s": 1})])
    assert checker.probes == 2
    # TLS changes the connection path: a new probe for the same address.
    tls = {"spiffe_id": "spiffe://mesh.local/ns/default/svc/a"}
    checker.update([_cluster("a", [2], health_check={}, tls=tls)])
    assert checker.probes == 1
    checker.update([])
    assert checker.probes == 0
