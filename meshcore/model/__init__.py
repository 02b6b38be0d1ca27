"""Pure, immutable configuration values shared by the data plane, control plane and tools.

Nothing here imports trio, hypercorn or textual (enforced by import-linter).
"""

from meshcore.model.base import SocketAddr
from meshcore.model.bootstrap import AccessLogConfig, Bootstrap, SnapshotSource
from meshcore.model.match import HeaderMatch, PathMatch, QueryMatch, RouteMatch
from meshcore.model.policy import (
    AccessRule,
    ConnectionLimits,
    FaultAbort,
    FaultDelay,
    FaultPolicy,
    HeaderMutation,
    HealthCheck,
    JwtRequirement,
    OutlierDetection,
    Permission,
    Redirect,
    RetryPolicy,
    Rewrite,
)
from meshcore.model.proxy import ProxyDescriptor, Upstream
from meshcore.model.snapshot import (
    LOCAL_APP_CLUSTER,
    Backend,
    Cluster,
    Endpoint,
    InboundPolicy,
    Listener,
    RateLimitRule,
    Route,
    RouteMirror,
    RouteTable,
    Snapshot,
    WorkloadIdentity,
)

__all__ = [
    "LOCAL_APP_CLUSTER",
    "AccessLogConfig",
    "AccessRule",
    "Backend",
    "Bootstrap",
    "Cluster",
    "ConnectionLimits",
    "Endpoint",
    "FaultAbort",
    "FaultDelay",
    "FaultPolicy",
    "HeaderMatch",
    "HeaderMutation",
    "HealthCheck",
    "InboundPolicy",
    "JwtRequirement",
    "Listener",
    "OutlierDetection",
    "PathMatch",
    "Permission",
    "ProxyDescriptor",
    "QueryMatch",
    "RateLimitRule",
    "Redirect",
    "RetryPolicy",
    "Rewrite",
    "Route",
    "RouteMatch",
    "RouteMirror",
    "RouteTable",
    "Snapshot",
    "SnapshotSource",
    "SocketAddr",
    "Upstream",
    "WorkloadIdentity",
]
