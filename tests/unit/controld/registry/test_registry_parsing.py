"""Pure helpers: Go durations, request key normalization, bexpr filters."""

from __future__ import annotations

import pytest

from controld.registry.bexpr import compile_filter
from controld.registry.durations import format_duration, parse_duration
from controld.registry.errors import BadRequest
from controld.registry.jsonkeys import normalize


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1m30s", 90.0), ("250ms", 0.25), ("0", 0.0), ("1h", 3600.0), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "10x", "1m-"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(20, "20s"), (90, "1m30s"), (3600, "1h0m0s"), (0.25, "250ms"), (0, "0s"), (86400, "24h0m0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_normalize_keys_but_not_user_maps() -> None:
    body = {
        "name": "web",
        "service_id": "x",
        "enable_tag_override": True,
        "meta": {"some_key": "v", "CamelKey": "w"},
        "tagged_addresses": {"lan_ipv4": {"address": "1.2.3.4", "port": 80}},
        "connect": {"sidecar_service": {"proxy": {"config": {"a_b": 1}}}},
        "check": {"http": "http://x", "header": {"x_token": ["t"]}},
    }
    assert normalize(body) == {
        "Name": "web",
        "ServiceID": "x",
        "EnableTagOverride": True,
        "Meta": {"some_key": "v", "CamelKey": "w"},
        "TaggedAddresses": {"lan_ipv4": {"Address": "1.2.3.4", "Port": 80}},
        "Connect": {"SidecarService": {"Proxy": {"Config": {"a_b": 1}}}},
        "Check": {"HTTP": "http://x", "Header": {"x_token": ["t"]}},
    }


SVC = {
    "Node": "n1",
    "ServiceTags": ["prod", "v1"],
    "ServicePort": 80,
    "Service": {"Tags": ["a"], "Meta": {"env": "prod"}},
    "Checks": [],
    "Enabled": True,
}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('Node == "n1"', True),
        ('Node != "n1"', False),
        ('"prod" in ServiceTags', True),
        ('"dev" not in ServiceTags', True),
        ("ServiceTags contains v1", True),
        ('Service.Meta.env == "prod"', True),
        ('Service.Meta["env"] == prod', True),
        ("ServicePort == 80", True),
        ("Enabled == true", True),
        ("Checks is empty", True),
        ("ServiceTags is not empty", True),
        ('Node matches "^n[0-9]$"', True),
        ('Node == "n1" and "dev" in ServiceTags', False),
        ('Node == "n2" or "a" in Service.Tags', True),
        ('not (Node == "n2")', True),
        ("Node != ``", True),
    ],
)
def test_filters(expr: str, expected: bool) -> None:
    assert compile_filter(expr)(SVC) is expected


@pytest.mark.parametrize("expr", ["not a valid expression((", "Node ==", "(Node == x", "== x"])
def test_malformed_filters(expr: str) -> None:
    with pytest.raises(BadRequest):
        compile_filter(expr)
