"""The push bookkeeping of sidecar features: declared, unsupported in use, ACKed snapshot."""

from __future__ import annotations

import pytest

from controld.push.state import PushState
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.snapshot import Snapshot

pytestmark = pytest.mark.timeout(30)

T0 = 1_700_000_000.0
PLAIN = Snapshot(version=0)
MIRRORED = Snapshot.model_validate(
    {
        "version": 0,
        "route_tables": [
            {
                "name": "api",
                "routes": [
                    {"name": "m", "backends": [{"cluster": "api"}], "mirror": {"cluster": "api"}}
                ],
            }
        ],
        "clusters": [{"name": "api", "service": "api"}],
    }
)


def _state() -> PushState:
    state = PushState()
    state.register(ProxyDescriptor(proxy_id="web-1", service="web"))
    return state


def test_features_come_from_the_header_and_unknown_without_it() -> None:
    state = _state()
    assert state.get("web-1").features is None
    state.observe_poll("web-1", version=None, hash=None, wait_s=30, now=T0, features="a, b")
    assert state.get("web-1").features == frozenset({"a", "b"})
    # A registration without the header leaves them; a poll without it makes them unknown.
    state.register(ProxyDescriptor(proxy_id="web-1", service="web"))
    assert state.get("web-1").features == frozenset({"a", "b"})
    state.observe_poll("web-1", version=None, hash=None, wait_s=30, now=T0)
    assert state.get("web-1").features is None
    state.register(ProxyDescriptor(proxy_id="web-1", service="web"), features="")
    assert state.get("web-1").features == frozenset()


def test_status_names_unsupported_features_of_the_latest_snapshot() -> None:
    state = _state()
    state.publish({"web-1": (MIRRORED, "h1")}, revision=1, changed_at=T0, now=T0)
    [row] = state.statuses(T0)
    assert row.as_json()["features"] is None
    assert row.as_json()["unsupported"] == []  # unknown features: nothing to say
    state.observe_poll(
        "web-1", version=None, hash=None, wait_s=30, now=T0, features="route.redirect"
    )
    [row] = state.statuses(T0)
    assert row.as_json()["features"] == ["route.redirect"]
    assert row.as_json()["unsupported"] == [
        {"feature": "route.mirror", "path": "route_tables.0.routes.0.mirror"}
    ]


def test_the_acked_snapshot_is_kept_while_a_newer_one_is_refused() -> None:
    state = _state()
    state.publish({"web-1": (PLAIN, "h1")}, revision=1, changed_at=T0, now=T0)
    v1 = state.get("web-1").latest
    assert v1 is not None
    state.observe_poll("web-1", version=v1.version, hash="h1", wait_s=30, now=T0)
    state.publish({"web-1": (MIRRORED, "h2")}, revision=2, changed_at=T0, now=T0 + 1)
    latest = state.get("web-1").latest
    assert latest is not None
    state.nack("web-1", version=latest.version, hash="h2", error="unsupported", now=T0 + 1)
    state.observe_poll("web-1", version=v1.version, hash="h1", wait_s=30, now=T0 + 2)
    [info] = state.sidecars(T0 + 2)
    assert info.acked_version == v1.version
    assert info.acked_snapshot is PLAIN
    assert info.latest_snapshot is MIRRORED
    assert info.connected
    # A hash controld never compiled (it restarted): the ACKed content is unknown.
    state.observe_poll("web-1", version=5, hash="other", wait_s=30, now=T0 + 3)
    assert state.sidecars(T0 + 3)[0].acked_snapshot is None
