"""The policy resource store: resources in the registry KV, a revision per change, a watch.

See :mod:`controld.store.store` for the write protocol and :mod:`controld.store.records` for
the KV layout.
"""

from __future__ import annotations

from controld.store.errors import ResourceNotFound, StoreConflict, StoreError, StoreUnavailable
from controld.store.invalid import InvalidRecords
from controld.store.metrics import StoreCollector
from controld.store.records import (
    ApplyResult,
    Change,
    ChangeAction,
    InvalidValue,
    KeyLayout,
    RecordCodec,
    RevisionRecord,
    StoredResource,
)
from controld.store.store import ResourceStore
from controld.store.watch import StoreStatus

__all__ = [
    "ApplyResult",
    "Change",
    "ChangeAction",
    "InvalidRecords",
    "InvalidValue",
    "KeyLayout",
    "RecordCodec",
    "ResourceNotFound",
    "ResourceStore",
    "RevisionRecord",
    "StoreCollector",
    "StoreConflict",
    "StoreError",
    "StoreStatus",
    "StoreUnavailable",
    "StoredResource",
]
