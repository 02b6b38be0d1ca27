"""The registry KV as the CA uses it (``meshcore.registry.client.RegistryClient`` fits)."""

from __future__ import annotations

from typing import Protocol

from meshcore.registry.model import KvEntry

__all__ = ["KV"]


class KV(Protocol):
    """The KV calls of :class:`~meshcore.registry.client.RegistryClient` the CA needs."""

    async def kv_get(self, key: str) -> KvEntry | None:
        """The entry, or ``None``."""
        ...

    async def kv_list(self, prefix: str) -> tuple[int, list[KvEntry]]:
        """``(index, entries)`` of every key under ``prefix``."""
        ...

    async def kv_put(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        """Write; with ``cas`` only if the ModifyIndex matches (0: only if missing)."""
        ...

    async def kv_delete(self, key: str, *, cas: int | None = None) -> bool:
        """Delete; with ``cas`` only if the ModifyIndex matches."""
        ...
