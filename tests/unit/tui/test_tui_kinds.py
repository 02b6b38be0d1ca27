"""Kind names as operators type them."""

from __future__ import annotations

import pytest

from tui.cli.kinds import UnknownKind, resolve_kind


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("HTTPRoute", "HTTPRoute"),
        ("httproute", "HTTPRoute"),
        ("httproutes", "HTTPRoute"),
        ("route", "HTTPRoute"),
        ("Routes", "HTTPRoute"),
        ("mesh", "Mesh"),
        ("meshes", "Mesh"),
        ("servicedefaults", "ServiceDefaults"),
        ("sd", "ServiceDefaults"),
        ("serviceresolvers", "ServiceResolver"),
        ("resolver", "ServiceResolver"),
        ("accesspolicies", "AccessPolicy"),
        ("policy", "AccessPolicy"),
        ("ratelimit", "RateLimit"),
        ("RATELIMITS", "RateLimit"),
        ("rl", "RateLimit"),
    ],
)
def test_aliases(text: str, kind: str) -> None:
    assert resolve_kind(text) == kind


def test_unknown_kind_lists_known_ones() -> None:
    with pytest.raises(UnknownKind, match="known: AccessPolicy, HTTPRoute"):
        resolve_kind("gateway")


def test_kinds_from_the_server() -> None:
    assert resolve_kind("tcproutes", ["TCPRoute", "HTTPRoute"]) == "TCPRoute"
    with pytest.raises(UnknownKind):
        resolve_kind("route", ["TCPRoute"])
