"""meshd's enforced features and the check that refuses a snapshot using any other."""

from __future__ import annotations

from typing import Any

import pytest

from meshcore.model import Snapshot
from meshcore.model.features import FEATURES, parse_features
from meshd.errors import SnapshotRejected
from meshd.features import ENFORCED, NOT_YET, check_features, features_header

pytestmark = pytest.mark.timeout(30)


def _snapshot(**route: Any) -> Snapshot:
    return Snapshot.model_validate(
        {
            "version": 1,
            "listeners": [
                {"name": "o", "direction": "outbound", "address": "127.0.0.1:1", "route_table": "t"}
            ],
            "route_tables": [
                {
                    "name": "t",
                    "routes": [
                        {"name": "a", "match": {"path": {"prefix": "/a"}}, "redirect": {}},
                        {"name": "b", "backends": [{"cluster": "api"}], **route},
                    ],
                }
            ],
            "clusters": [{"name": "api", "service": "api"}],
        }
    )


def test_enforced_names_known_features() -> None:
    assert set(FEATURES) >= ENFORCED
    assert set(FEATURES) >= NOT_YET
    assert ENFORCED.isdisjoint(NOT_YET)
    # Every feature is decided: enforced, or known to be missing (refused).
    assert set(FEATURES) == ENFORCED | NOT_YET
    # On main before issue 12's parts land: what meshd did already.
    assert {"route.redirect", "route.match.headers", "route.match.query"} <= ENFORCED
    assert parse_features(features_header()) == ENFORCED


def test_a_snapshot_within_the_enforced_features_passes() -> None:
    check_features(_snapshot())
    check_features(_snapshot(mirror={"cluster": "api"}), FEATURES)


def test_an_unsupported_feature_is_refused_with_its_field_path() -> None:
    snap = _snapshot(mirror={"cluster": "api"}, retries={})
    with pytest.raises(SnapshotRejected) as caught:
        check_features(snap, set(FEATURES) - {"route.mirror", "route.retries"})
    assert str(caught.value) == (
        "unsupported feature route.retries at route_tables.0.routes.1.retries; "
        "unsupported feature route.mirror at route_tables.0.routes.1.mirror"
    )
    with pytest.raises(SnapshotRejected, match=r"route\.redirect at route_tables\.0\.routes\.0"):
        check_features(_snapshot(), set(FEATURES) - {"route.redirect"})
