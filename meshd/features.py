"""The snapshot features this meshd enforces, and the check that refuses the others.

meshd never accepts a snapshot it would partly ignore: :func:`check_features` raises
:class:`~meshd.errors.SnapshotRejected` naming the first field of each feature the snapshot
uses that is not in :data:`ENFORCED` (a NACK to controld, a refused start or reload with a
snapshot file). meshd declares :data:`ENFORCED` to controld on every request
(:data:`~meshcore.model.features.FEATURES_HEADER`), so ``meshctl apply`` can warn first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from meshcore.model.features import format_features, unsupported, unsupported_message
from meshcore.model.snapshot import Snapshot
from meshd.errors import SnapshotRejected

__all__ = ["ENFORCED", "NOT_YET", "check_features", "features_header"]

#: The snapshot features this meshd enforces (names of :data:`meshcore.model.features.FEATURES`).
#: Listed one by one on purpose: a feature added to the vocabulary is refused by meshd until
#: the change that makes meshd enforce it adds it here.
ENFORCED: Final[frozenset[str]] = frozenset(
    {
        "route.redirect",
        "route.match.headers",
        "route.match.query",
        # Every tier kept; the selector fails over at run time, on health.
        "cluster.failover",
        "lb_policy:random",
        "lb_policy:least_request",
        "inbound_policy.jwt",
        # meshd.ratelimit and meshd.http.mirror.
        "rate_limits",
        "route.mirror",
        # meshd.http.decide / forward / retry.
        "route.retries",
        "route.fault",
        "route.fault.headers",
        "route.request_headers",
        "route.response_headers",
        "route.rewrite",
        "listener.path_with_escaped_slashes:reject",
        "listener.path_with_escaped_slashes:unescape",
        "listener.path_with_escaped_slashes:redirect",
        # meshd.cluster.breaker / budget / outlier / healthcheck / state.
        "cluster.limits",
        "cluster.outlier_detection",
        "cluster.outlier_detection.success_rate",
        "cluster.health_check",
        # meshd.cluster.selector / priority / lb_ewma / lb_hash.
        "cluster.locality",
        "cluster.panic_threshold",
        "lb_policy:ewma",
        "lb_policy:ring_hash",
        "lb_policy:maglev",
    }
)

#: Features of the vocabulary this meshd does not enforce yet (refused when used).
NOT_YET: Final[frozenset[str]] = frozenset()


def check_features(snapshot: Snapshot, enforced: Iterable[str] = ENFORCED) -> None:
    """Raise :class:`SnapshotRejected` if ``snapshot`` uses a feature not in ``enforced``."""
    missing = unsupported(snapshot, enforced)
    if missing:
        raise SnapshotRejected(unsupported_message(missing))


def features_header(enforced: Iterable[str] = ENFORCED) -> str:
    """The value of the features header meshd sends controld."""
    return format_features(enforced)
