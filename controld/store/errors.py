"""Errors of the policy resource store, rooted in :class:`meshcore.errors.MeshError`."""

from __future__ import annotations

from meshcore.errors import MeshError

__all__ = ["ResourceNotFound", "StoreConflict", "StoreError", "StoreUnavailable"]


class StoreError(MeshError):
    """Base of every error the store raises (also: the registry refused a request, or the
    stored revision counter is corrupt)."""


class StoreUnavailable(StoreError):
    """The registry holding the store can't be reached (or failed with a 5xx): retry later."""


class ResourceNotFound(StoreError):
    """The resource to delete (or read) is not stored."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind}/{name} not found")
        self.kind = kind
        self.name = name


class StoreConflict(StoreError):
    """Another writer changed the same resource (or kept winning the revision counter)
    between this writer's read and its write; nothing is lost, re-read and retry."""
