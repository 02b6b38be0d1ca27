"""Wire models of the operator's view of the sidecars (``meshctl status``, the dashboard).

Paths (admin listener, admin token):

* ``GET /v1/proxies`` -> :class:`ProxyList`
* ``POST /v1/proxies/{id}/drain`` -> ``202`` :class:`DrainAnswer`

What the sidecars themselves call (registration, the snapshot long-poll, NACK) is in
:mod:`meshcore.api.sidecar`.
"""

from __future__ import annotations

from meshcore.api.base import Answer

__all__ = [
    "PROXIES_PATH",
    "DrainAnswer",
    "Nack",
    "ProxyList",
    "ProxyState",
    "UnsupportedFeature",
    "drain_path",
]

PROXIES_PATH = "/v1/proxies"


def drain_path(proxy_id: str) -> str:
    """``/v1/proxies/{id}/drain`` (POST: ask that sidecar to drain)."""
    return f"{PROXIES_PATH}/{proxy_id}/drain"


class Nack(Answer):
    """The last snapshot a sidecar rejected."""

    version: int
    hash: str
    error: str
    #: When (Unix seconds).
    time: float


class UnsupportedFeature(Answer):
    """A snapshot feature the sidecar's latest snapshot uses and the sidecar doesn't declare."""

    feature: str
    #: The first field of the snapshot using it.
    path: str


class ProxyState(Answer):
    """One registered sidecar: connection, ACKed and latest snapshot, last NACK, features."""

    proxy_id: str
    service: str
    namespace: str = "default"
    #: A poll parked now or recently.
    connected: bool = False
    #: Unix seconds.
    last_contact: float | None = None
    acked_version: int | None = None
    acked_hash: str | None = None
    #: The snapshot compiled for it (None: nothing yet).
    latest_version: int | None = None
    latest_hash: str | None = None
    nack: Nack | None = None
    #: The features it declares (None: it declares none, an older meshd: unknown).
    features: tuple[str, ...] | None = None
    unsupported: tuple[UnsupportedFeature, ...] = ()
    #: When an operator asked it to drain (Unix seconds), else None.
    drain_requested: float | None = None


class ProxyList(Answer):
    """Answer of ``GET /v1/proxies``."""

    proxies: tuple[ProxyState, ...]


class DrainAnswer(Answer):
    """Answer of ``POST /v1/proxies/{proxy_id}/drain``."""

    proxy_id: str
    #: When the drain was first asked for (Unix seconds).
    drain_requested: float
