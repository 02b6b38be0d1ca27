"""What the HTTP API needs from the daemon: the :class:`ControlPlane` protocol.

The daemon (``controld/daemon.py``) passes an object with these attributes and methods to
:func:`controld.api.build_api`. The protocols are structural: the real
:class:`~controld.push.PushHub` and :class:`~controld.store.ResourceStore` satisfy them, and
unit tests use small fakes. Everything is read on the Trio thread (every endpoint is
``async def``), so no locking is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from controld.discovery import DiscoveryView
from controld.push.state import SidecarInfo
from controld.store import ApplyResult, RevisionRecord, StoredResource
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.resources import Resource, ResourceSet

__all__ = [
    "ControlPlane",
    "EnvelopeLike",
    "PushHubAPI",
    "ResourceStoreAPI",
]


class EnvelopeLike(Protocol):
    """A compiled snapshot ready to send (``controld.push.Envelope``)."""

    @property
    def version(self) -> int: ...

    @property
    def hash(self) -> str: ...

    #: ``{"version": V, "hash": H, "snapshot": {...}}`` serialized once by the hub.
    @property
    def body(self) -> bytes: ...


class PushHubAPI(Protocol):
    """The push hub as the API uses it (``controld.push.PushHub``).

    ``poll`` and ``nack`` raise ``controld.push.UnknownProxy`` for a proxy id that isn't
    registered (the API answers 404 and the sidecar re-registers).
    """

    def register(self, descriptor: ProxyDescriptor, *, features: str | None = None) -> None:
        """Register or refresh a sidecar's descriptor (compiles its snapshot); ``features``:
        the registration's features header, if any."""
        ...

    def descriptor(self, proxy_id: str) -> ProxyDescriptor | None:
        """The registered descriptor of ``proxy_id`` (scope check of sidecar tokens), or None."""
        ...

    async def poll(
        self,
        proxy_id: str,
        *,
        version: int | None,
        hash: str | None,
        wait: float,
        features: str | None = None,
    ) -> EnvelopeLike | None:
        """ACK ``version``/``hash`` and record the declared ``features`` (the header; None:
        none); a newer envelope at once or within ``wait`` s, else None."""
        ...

    def nack(self, proxy_id: str, *, version: int, hash: str, error: str) -> None:
        """Record that the sidecar rejected ``version``/``hash``."""
        ...

    def proxies(self) -> list[dict[str, Any]]:
        """The ``GET /v1/proxies`` entries (JSON-ready dicts, see Contract 5)."""
        ...

    def sidecars(self) -> list[SidecarInfo]:
        """Each sidecar's declared features and ACKed snapshot (apply warnings, explain)."""
        ...

    def request_drain(self, proxy_id: str) -> float:
        """Ask ``proxy_id`` to drain (its poll answers now, with the drain header)."""
        ...

    def take_drain(self, proxy_id: str) -> bool:
        """True once per drain request: the answering poll carries it."""
        ...

    def drain_requested(self, proxy_id: str) -> float | None:
        """When a drain of ``proxy_id`` was asked for, or None."""
        ...


class ResourceStoreAPI(Protocol):
    """The resource store as the API uses it (``controld.store.ResourceStore``).

    Errors: ``StoreUnavailable`` (503), ``ResourceNotFound`` (404), ``StoreConflict`` (409),
    other ``StoreError`` (500).
    """

    async def apply(
        self,
        resources: Sequence[Resource],
        *,
        author: str,
        dry_run: bool = False,
        check: Callable[[ResourceSet], None] | None = None,
    ) -> ApplyResult:
        """Store the resources as one revision; ``check`` may refuse the resulting set."""
        ...

    async def delete(self, kind: str, name: str, *, author: str) -> ApplyResult:
        """Delete one resource as one revision."""
        ...

    async def history(self, limit: int = 50) -> Sequence[RevisionRecord]:
        """The newest revision records first."""
        ...

    async def get(self, kind: str, name: str) -> StoredResource | None:
        """One stored resource with its ``revision``, ``author`` and ``time``."""
        ...

    async def wait_changed(self, after_revision: int) -> ResourceSet:
        """The followed set once its revision is greater than ``after_revision``."""
        ...


class ControlPlane(Protocol):
    """What the daemon gives :func:`controld.api.build_api`.

    * ``hub``: the push hub (proxy registration, long-poll, NACK, proxy list).
    * ``store``: the resource store (apply/delete/history/get/wait_changed).
    * ``view()``: the current discovery view (for ``/v1/explain``).
    * ``resources()``: the current resource set (the store's ``current``), the base of PUT's
      validation and dry-run, GET's answers and explain.
    * ``status()``: the ``/v1/status`` document (``status_json`` plus ``push`` and ``store``).
    """

    @property
    def hub(self) -> PushHubAPI: ...

    @property
    def store(self) -> ResourceStoreAPI: ...

    def view(self) -> DiscoveryView:
        """The current discovery view."""
        ...

    def resources(self) -> ResourceSet:
        """The current resource set."""
        ...

    def status(self) -> dict[str, Any]:
        """The ``/v1/status`` document."""
        ...
