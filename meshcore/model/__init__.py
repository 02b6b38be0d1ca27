"""Pure, immutable configuration values shared by the data plane, control plane and tools.

Nothing here imports trio, hypercorn or textual (enforced by import-linter).
"""

from meshcore.model.base import SocketAddr
from meshcore.model.bootstrap import AccessLogConfig, Bootstrap, SnapshotSource
from meshcore.model.snapshot import (
    LOCAL_APP_CLUSTER,
    Backend,
    Cluster,
    Endpoint,
    HeaderMatch,
    Listener,
    PathMatch,
    Route,
    RouteMatch,
    RouteTable,
    Snapshot,
)

__all__ = [
    "LOCAL_APP_CLUSTER",
    "AccessLogConfig",
    "Backend",
    "Bootstrap",
    "Cluster",
    "Endpoint",
    "HeaderMatch",
    "Listener",
    "PathMatch",
    "Route",
    "RouteMatch",
    "RouteTable",
    "Snapshot",
    "SnapshotSource",
    "SocketAddr",
]
