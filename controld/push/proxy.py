"""One sidecar's push state: its compiled snapshot, what it ACKed, NACKed and declares.

Plain values and bookkeeping used by :class:`~controld.push.state.PushState` (which decides
when they change); :class:`ProxyStatus` and :class:`SidecarInfo` are what it reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshcore.model.features import features_used, parse_features
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.snapshot import Snapshot

__all__ = ["Compiled", "NackRecord", "ProxyState", "ProxyStatus", "SidecarInfo", "proxy_status"]


class Compiled:
    """One compiled snapshot of a proxy under its assigned version."""

    __slots__ = ("_body", "_features", "acked", "compiled_at", "hash", "snapshot", "version")

    def __init__(
        self,
        version: int,
        hash: str,
        snapshot: Snapshot,
        compiled_at: float,
        *,
        acked: bool = False,
    ) -> None:
        self.version = version
        self.hash = hash
        #: As compiled (its own ``version`` field is set only in :meth:`body`).
        self.snapshot = snapshot
        self.compiled_at = compiled_at
        #: The sidecar has reported running it.
        self.acked = acked
        self._body: bytes | None = None
        self._features: dict[str, str] | None = None

    def features(self) -> dict[str, str]:
        """The features the snapshot uses (feature -> first field path), computed once."""
        if self._features is None:
            self._features = features_used(self.snapshot)
        return self._features

    def body(self) -> bytes:
        """The JSON ``{"version", "hash", "snapshot"}`` (a
        :class:`~meshcore.api.sidecar.SnapshotAnswer`), serialized on first use only.

        Built by hand: the snapshot is dumped once, not copied into an answer model."""
        if self._body is None:
            snapshot = self.snapshot.model_copy(update={"version": self.version})
            self._body = b'{"version":%d,"hash":"%s","snapshot":%s}' % (
                self.version,
                self.hash.encode("ascii"),
                snapshot.model_dump_json().encode(),
            )
        return self._body

    def with_version(self, version: int) -> Compiled:
        """The same snapshot under another version."""
        other = Compiled(version, self.hash, self.snapshot, self.compiled_at, acked=self.acked)
        other._features = self._features
        return other


@dataclass(frozen=True, slots=True)
class NackRecord:
    """A sidecar's rejection of one snapshot."""

    version: int
    hash: str
    error: str
    time: float


class ProxyState:
    """Everything the hub knows about one sidecar."""

    __slots__ = (
        "acked",
        "acked_hash",
        "acked_version",
        "descriptor",
        "features",
        "features_raw",
        "last_contact",
        "last_wait_s",
        "latest",
        "nack",
        "nacked_hash",
        "parked",
        "stale",
    )

    def __init__(self, descriptor: ProxyDescriptor) -> None:
        self.descriptor = descriptor
        self.latest: Compiled | None = None
        #: The latest snapshot was compiled for an older descriptor: hold it back.
        self.stale = False
        #: What the sidecar said it runs on its last poll.
        self.acked_version: int | None = None
        self.acked_hash: str | None = None
        #: The compiled snapshot the sidecar ACKed (None: not known here, e.g. controld
        #: restarted and has not compiled that content again).
        self.acked: Compiled | None = None
        #: The features it declares (None: unknown, it sends no features header) and the
        #: header they were parsed from (parsed again only when it changes).
        self.features: frozenset[str] | None = None
        self.features_raw: str | None = None
        #: The last NACK (reported in the status).
        self.nack: NackRecord | None = None
        #: The hash not to send again (cleared by a registration: a restarted sidecar may
        #: cope with it now).
        self.nacked_hash: str | None = None
        self.last_contact: float | None = None
        self.last_wait_s = 0.0
        #: Polls parked now.
        self.parked = 0

    def connected(self, now: float) -> bool:
        """A poll is parked now, or the last one ended within twice its wait."""
        if self.parked:
            return True
        if self.last_contact is None:
            return False
        return now - self.last_contact <= 2 * max(self.last_wait_s, 1.0)

    def declare(self, raw: str | None) -> None:
        """Record the features header of a request (None: the sidecar declares none)."""
        if raw != self.features_raw or (raw is None) != (self.features is None):
            self.features_raw = raw
            self.features = None if raw is None else parse_features(raw)

    def unsupported(self) -> dict[str, str]:
        """Features the latest snapshot uses that the sidecar doesn't declare ({}: none, or
        it declares nothing, which says nothing)."""
        latest = self.latest
        features = self.features
        if latest is None or features is None:
            return {}
        return {f: p for f, p in latest.features().items() if f not in features}

    def pending(self) -> Compiled | None:
        """The snapshot to hand over now, if any (the sidecar runs another, not NACKed one)."""
        latest = self.latest
        if latest is None or self.stale or latest.hash == self.acked_hash:
            return None
        if latest.hash == self.nacked_hash:
            return None
        return latest


@dataclass(frozen=True, slots=True)
class ProxyStatus:
    """One row of ``GET /v1/proxies``."""

    proxy_id: str
    service: str
    namespace: str
    connected: bool
    last_contact: float | None
    acked_version: int | None
    acked_hash: str | None
    latest_version: int | None
    latest_hash: str | None
    nack: NackRecord | None
    #: Declared features (None: unknown, an older sidecar).
    features: frozenset[str] | None = None
    #: Features the latest snapshot uses that the sidecar doesn't declare -> first field path.
    unsupported: Mapping[str, str] | None = None

    def as_json(self) -> dict[str, Any]:
        """The JSON row of the API."""
        nack = self.nack
        nack_json = None
        if nack is not None:
            nack_json = {
                "version": nack.version,
                "hash": nack.hash,
                "error": nack.error,
                "time": nack.time,
            }
        return {
            "proxy_id": self.proxy_id,
            "service": self.service,
            "namespace": self.namespace,
            "connected": self.connected,
            "last_contact": self.last_contact,
            "acked_version": self.acked_version,
            "acked_hash": self.acked_hash,
            "latest_version": self.latest_version,
            "latest_hash": self.latest_hash,
            "nack": nack_json,
            "features": None if self.features is None else sorted(self.features),
            "unsupported": [{"feature": f, "path": p} for f, p in (self.unsupported or {}).items()],
        }


@dataclass(frozen=True, slots=True)
class SidecarInfo:
    """What controld knows of one sidecar, for feature checks (apply warnings, explain)."""

    proxy_id: str
    descriptor: ProxyDescriptor
    connected: bool
    #: Declared features (None: unknown).
    features: frozenset[str] | None
    acked_version: int | None
    #: The snapshot it ACKed, when controld has it.
    acked_snapshot: Snapshot | None
    latest_version: int | None
    latest_snapshot: Snapshot | None


def proxy_status(pid: str, state: ProxyState, now: float) -> ProxyStatus:
    """The status row of ``state`` (registered as ``pid``) at ``now``."""
    desc = state.descriptor
    latest = state.latest
    return ProxyStatus(
        proxy_id=pid,
        service=desc.service,
        namespace=desc.namespace,
        connected=state.connected(now),
        last_contact=state.last_contact,
        acked_version=state.acked_version,
        acked_hash=state.acked_hash,
        latest_version=None if latest is None else latest.version,
        latest_hash=None if latest is None else latest.hash,
        nack=state.nack,
        features=state.features,
        unsupported=state.unsupported(),
    )
