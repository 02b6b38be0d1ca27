"""ProxyDescriptor: what a sidecar registers with controld."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from meshcore.model import ProxyDescriptor, SocketAddr, Upstream


def test_defaults_and_round_trip() -> None:
    proxy = ProxyDescriptor.model_validate(
        {
            "proxy_id": "web-1:sidecar",
            "service": "web",
            "inbound": "127.0.0.1:15006",
            "upstreams": [{"service": "api", "port": 15001}, {"service": "db", "port": 15002}],
        }
    )
    assert proxy.namespace == "default"
    assert proxy.inbound == SocketAddr(host="127.0.0.1", port=15006)
    assert proxy.upstreams[0] == Upstream(service="api", port=15001, host="127.0.0.1")
    assert proxy.meshd_version == ""
    assert ProxyDescriptor.model_validate(proxy.model_dump(mode="json")) == proxy
    assert ProxyDescriptor(proxy_id="p", service="s").inbound is None


@pytest.mark.parametrize("proxy_id", ["", "-x", "a b", "a/b", "x" * 129])
def test_bad_proxy_ids(proxy_id: str) -> None:
    with pytest.raises(ValidationError, match="proxy_id"):
        ProxyDescriptor(proxy_id=proxy_id, service="web")


def test_upstreams_unique_by_service_and_port() -> None:
    with pytest.raises(ValidationError, match="duplicate upstream services: api"):
        ProxyDescriptor.model_validate(
            {
                "proxy_id": "p",
                "service": "web",
                "upstreams": [{"service": "api", "port": 1}, {"service": "api", "port": 2}],
            }
        )
    with pytest.raises(ValidationError, match="duplicate upstream ports: 1"):
        ProxyDescriptor.model_validate(
            {
                "proxy_id": "p",
                "service": "web",
                "upstreams": [{"service": "api", "port": 1}, {"service": "db", "port": 1}],
            }
        )


def test_upstream_port_range() -> None:
    for port in (0, 65536):
        with pytest.raises(ValidationError, match="port"):
            Upstream(service="api", port=port)


def test_inbound_must_not_be_an_upstream_address() -> None:
    with pytest.raises(ValidationError, match="also an upstream"):
        ProxyDescriptor.model_validate(
            {
                "proxy_id": "p",
                "service": "web",
                "inbound": "127.0.0.1:15001",
                "upstreams": [{"service": "api", "port": 15001}],
            }
        )
