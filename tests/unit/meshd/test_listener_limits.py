"""The listener's HTTP message limits: bounds in the model, and what a sidecar's runtime gets."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from meshcore.model import Bootstrap, Listener, Snapshot
from meshd.cluster.pool import PoolManager
from meshd.config import build_runtime
from meshd.http.config import HttpListenerConfig

LIMITS = {
    "max_request_header_count": 7,
    "max_response_headers_kb": 3,
    "max_response_header_count": 9,
    "max_requests_per_connection": 11,
}


def listener(**fields: Any) -> Listener:
    base = {"name": "in", "direction": "inbound", "address": "127.0.0.1:1"}
    return Listener.model_validate({**base, **fields})


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("max_request_header_count", 0),
        ("max_request_header_count", 10001),
        ("max_response_headers_kb", 0),
        ("max_response_headers_kb", 1025),
        ("max_response_header_count", 0),
        ("max_requests_per_connection", 0),
    ],
)
def test_limits_out_of_range_are_refused_with_the_field(field: str, bad: int) -> None:
    with pytest.raises(ValidationError, match=field):
        listener(**{field: bad})


def test_runtime_gets_the_listener_limits() -> None:
    snapshot = Snapshot.model_validate(
        {"version": 1, "listeners": [listener(**LIMITS).model_dump(mode="json")]}
    )
    bootstrap = Bootstrap.model_validate(
        {"service": "api", "app": "127.0.0.1:9", "snapshot": {"file": "snapshot.yaml"}}
    )
    cfg = build_runtime(bootstrap, snapshot, PoolManager()).listeners["in"]
    assert isinstance(cfg, HttpListenerConfig)
    assert (
        cfg.max_headers,
        cfg.max_response_head_bytes,
        cfg.max_response_headers,
        cfg.max_requests_per_connection,
    ) == (7, 3 * 1024, 9, 11)


def test_runtime_defaults_match_the_model() -> None:
    model = listener()
    snapshot = Snapshot.model_validate({"version": 1, "listeners": [model.model_dump(mode="json")]})
    bootstrap = Bootstrap.model_validate(
        {"service": "api", "app": "127.0.0.1:9", "snapshot": {"file": "snapshot.yaml"}}
    )
    cfg = build_runtime(bootstrap, snapshot, PoolManager()).listeners["in"]
    assert isinstance(cfg, HttpListenerConfig)
    assert cfg.max_headers == model.max_request_header_count == 100
    assert cfg.max_response_head_bytes == model.max_response_headers_kb * 1024
    assert cfg.max_response_headers == model.max_response_header_count
    assert cfg.max_requests_per_connection == model.max_requests_per_connection
