"""The CA's records in the registry KV: sealed by controld, read within bounds, checked.

Every record the CA keeps in the KV grants something (a join token, an identity and its
leaves, a revocation), so each is sealed with controld's :class:`~controld.sealed.RecordKey`:
a registry writer who is not controld can't forge one, copy one to another key or pass one
off as another kind. Reading opens the seal within size and depth bounds, then validates the
body against the record's schema (a frozen pydantic model, unknown fields refused).

A record that fails any of that is *invalid*: it is logged, counted in
``controld_ca_invalid_records_total{kind}`` and skipped by listings; a lookup of that one key
raises :class:`~controld.sealed.InvalidRecord`, which callers turn into a refusal. It never
stops controld.
"""

from __future__ import annotations

import json
from typing import TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ValidationError

from controld.ca.kv import KV
from controld.sealed import InvalidRecord, RecordKey
from meshcore.registry.model import KvEntry

__all__ = ["CARecords", "InvalidRecord"]

log = structlog.get_logger("controld.ca")

M = TypeVar("M", bound=BaseModel)


class CARecords:
    """Sealed, schema-checked records over a :class:`~controld.ca.kv.KV`."""

    def __init__(self, kv: KV, key: RecordKey, *, metrics: CollectorRegistry | None = None) -> None:
        self.kv = kv
        self._key = key
        self._invalid = Counter(
            "controld_ca_invalid_records",
            "CA records in the registry KV skipped as unsealed, forged, oversized, too deep "
            "or not of their schema.",
            ["kind"],
            registry=metrics if metrics is not None else CollectorRegistry(auto_describe=True),
        )
        #: Invalid records met so far, by kind (what the counter counts).
        self.invalid: dict[str, int] = {}

    def seal(self, kind: str, key: str, record: BaseModel) -> bytes:
        """The stored form of ``record`` as a ``kind`` record under ``key``."""
        return self._key.seal(kind, key, record.model_dump(mode="json"))

    def open(self, kind: str, entry: KvEntry, model: type[M]) -> M:
        """The record in ``entry``; :class:`InvalidRecord` (logged and counted) when it is
        not a valid sealed ``kind`` record."""
        try:
            body = self._key.open(kind, entry.key, entry.value)
            try:
                # JSON mode: strict types as JSON has them (an array is a tuple).
                return model.model_validate_json(json.dumps(body))
            except ValidationError as exc:
                raise InvalidRecord(
                    f"{kind} record {entry.key}: not of its schema: {_first_error(exc)}"
                ) from exc
        except InvalidRecord as exc:
            self.invalid[kind] = self.invalid.get(kind, 0) + 1
            self._invalid.labels(kind).inc()
            log.warning("invalid CA record skipped", kind=kind, key=entry.key, error=str(exc))
            raise

    async def get(self, kind: str, key: str, model: type[M]) -> tuple[M, KvEntry] | None:
        """The record under ``key`` and its entry; ``None`` when missing.

        Raises :class:`InvalidRecord` when the value there isn't a valid ``kind`` record.
        """
        entry = await self.kv.kv_get(key)
        if entry is None:
            return None
        return self.open(kind, entry, model), entry

    async def list(self, kind: str, prefix: str, model: type[M]) -> list[tuple[M, KvEntry]]:
        """Every valid ``kind`` record under ``prefix``; invalid ones are skipped."""
        _, entries = await self.kv.kv_list(prefix)
        found = []
        for entry in entries:
            try:
                found.append((self.open(kind, entry, model), entry))
            except InvalidRecord:
                continue
        return found

    async def put(self, kind: str, key: str, record: BaseModel, *, cas: int | None = None) -> bool:
        """Write ``record`` sealed; with ``cas`` only if the ModifyIndex matches."""
        return await self.kv.kv_put(key, self.seal(kind, key, record), cas=cas)


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"
