"""Pushing compiled snapshots to sidecars: long-poll hub, ACK/NACK bookkeeping, reconciler.

* :class:`PushHub` (Trio): registrations, ``poll`` (the long-poll; a poll is the ACK of the
  version it reports), ``nack``, ``publish`` of compiled snapshots, the proxy list.
* :mod:`controld.push.state`: the rules as plain synchronous code (versions, NACKs, rollouts).
* :class:`Reconciler`: recompiles on discovery, resource and registration changes.
* :class:`PresenceWatch`: sidecars connecting, going quiet, unsupported features (events).
* :class:`PushMetrics`: the ``controld_snapshot_*``, convergence, ACK and compile metrics.
"""

from controld.push.hub import MAX_WAIT_S, Envelope, PushHub
from controld.push.metrics import PushMetrics
from controld.push.presence import PresenceWatch
from controld.push.reconciler import Reconciler, ResourceSource, SnapshotCompiler, ViewSource
from controld.push.state import (
    NackRecord,
    ProxyStatus,
    PushState,
    SidecarInfo,
    UnknownProxy,
    next_version,
)

__all__ = [
    "MAX_WAIT_S",
    "Envelope",
    "NackRecord",
    "PresenceWatch",
    "ProxyStatus",
    "PushHub",
    "PushMetrics",
    "PushState",
    "Reconciler",
    "ResourceSource",
    "SidecarInfo",
    "SnapshotCompiler",
    "UnknownProxy",
    "ViewSource",
    "next_version",
]
