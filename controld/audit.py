"""The audit log of control-plane changes: who, what, when, from where, and how it ended.

Every state-changing API request (POST, PUT, PATCH, DELETE) ends in one :class:`AuditEntry`
(the API's gate, :mod:`controld.api.gate`, builds it). Entries are stored in the registry KV as
records sealed with controld's record key (:mod:`controld.sealed`)::

    <prefix>audit/<time in ns, 20 digits>-<8 hex digits>   {"time", "actor", "method", ...}

so they sort by time, several controld replicas never collide, and nobody without the key can
add or alter an entry (deleting one stays possible for a registry writer: use ACLs). The count is
bounded (:attr:`AuditLog.max_entries`, oldest dropped, trimmed every tenth of it). Reading skips
(logs and counts, never fails on) values that aren't valid sealed entries.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import structlog
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from controld.sealed import InvalidRecord, RecordKey
from controld.store import InvalidRecords
from controld.store.records import rfc3339
from meshcore.api.audit import AuditEntry
from meshcore.registry import RegistryError
from meshcore.registry.client import RegistryClient

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "AuditEntry",
    "AuditLog",
    "entry_from_json",
    "entry_json",
    "parse_time",
]

log = structlog.get_logger("controld.audit")

#: Entries kept by default (the oldest beyond it are dropped).
DEFAULT_MAX_ENTRIES: Final = 10_000
#: Longest string kept in an entry's fields, and most items of a list (keeps records small).
MAX_TEXT: Final = 512
MAX_ITEMS: Final = 50
_KIND: Final = "audit"
_NS: Final = 1_000_000_000


def parse_time(text: str) -> float:
    """An RFC 3339 time (``2026-12-06T05:00:00Z``, an offset or fraction allowed) -> Unix
    seconds; ``ValueError`` for anything else (including a time without a zone)."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from exc
    if when.tzinfo is None:
        raise ValueError(f"an RFC 3339 time needs a zone (Z or +hh:mm): {text!r}")
    return when.timestamp()


def _clip(value: Any) -> Any:
    """``value`` as small JSON: long strings cut, long lists shortened, others as text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "..."
    if isinstance(value, list | tuple):
        items = [_clip(v) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"... {len(value) - MAX_ITEMS} more")
        return items
    return _clip(str(value))


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """The entry as stored (its ``details`` kept small: see :data:`MAX_TEXT`)."""
    doc = entry.model_dump(mode="json", exclude={"details"})
    doc["details"] = {str(k): _clip(v) for k, v in entry.details.items()}
    return doc


def entry_from_json(body: Mapping[str, Any]) -> AuditEntry:
    """Inverse of :func:`entry_json`; ``ValueError`` when a field is missing or mistyped."""
    # Strict: a stored status of "200" or true is a damaged record, not a number.
    return AuditEntry.model_validate(body, strict=True)


class AuditLog(Collector):
    """Stores and reads :class:`AuditEntry` records under ``<prefix>audit/``.

    Also a Prometheus collector: ``controld_audit_entries_total{result="stored"|"failed"}``.
    """

    def __init__(
        self,
        client: RegistryClient,
        prefix: str,
        key: RecordKey,
        invalid: InvalidRecords,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1:
            raise ValueError("the audit log keeps at least one entry")
        self._client = client
        self.prefix = (prefix if prefix.endswith("/") else prefix + "/") + "audit/"
        self._key = key
        self._invalid = invalid
        self.max_entries = max_entries
        self._clock = clock
        self._trim_every = max(1, max_entries // 10)
        # Trim at the first write: the log may have grown while controld was down.
        self._since_trim = self._trim_every
        self.stored = 0
        self.failed = 0

    def entry_time(self) -> str:
        """Now, as an entry's ``time``."""
        return rfc3339(self._clock())

    async def record(self, entry: AuditEntry) -> bool:
        """Store ``entry`` (and drop the oldest beyond the bound); False if the registry
        refused or couldn't be reached (logged and counted: the change itself stands)."""
        stamp = int(parse_time(entry.time) * _NS)
        kv_key = f"{self.prefix}{stamp:020d}-{secrets.token_hex(4)}"
        try:
            await self._client.kv_put(kv_key, self._key.seal(_KIND, kv_key, entry_json(entry)))
            self._since_trim += 1
            if self._since_trim >= self._trim_every:
                self._since_trim = 0
                await self._trim()
        except RegistryError as exc:
            self.failed += 1
            log.warning("audit entry not stored", key=kv_key, error=str(exc), **entry_json(entry))
            return False
        self.stored += 1
        return True

    async def _trim(self) -> None:
        _index, entries = await self._client.kv_list(self.prefix)
        keys = sorted(e.key for e in entries)
        for key in keys[: max(0, len(keys) - self.max_entries)]:
            await self._client.kv_delete(key)

    async def read(self, *, since: float | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` entries (newest first), at or after ``since`` (Unix seconds).

        Raises :class:`~meshcore.registry.RegistryError` when the registry can't be read.
        """
        _index, entries = await self._client.kv_list(self.prefix)
        floor = None if since is None else f"{self.prefix}{int(since * _NS):020d}"
        out: list[AuditEntry] = []
        for entry in sorted(entries, key=lambda e: e.key, reverse=True):
            if len(out) >= limit or (floor is not None and entry.key < floor):
                break
            try:
                body = self._key.open(_KIND, entry.key, entry.value)
                out.append(entry_from_json(body))
            except (InvalidRecord, ValueError) as exc:
                self._invalid.note(_KIND, entry.key, entry.modify_index, str(exc))
        return out

    def collect(self) -> list[Metric]:
        """``controld_audit_entries_total{result}``."""
        family = CounterMetricFamily(
            "controld_audit_entries",
            "Audit entries written to the registry KV (stored) or lost (failed).",
            labels=["result"],
        )
        family.add_metric(["stored"], self.stored)
        family.add_metric(["failed"], self.failed)
        return [family]
