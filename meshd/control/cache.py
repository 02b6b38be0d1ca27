"""The snapshot cache: the last applied snapshot on disk, for a start while controld is away.

Each applied snapshot is written atomically (temporary file, fsync, rename; mode 0600) as
``{version, hash, snapshot}``; :func:`load_cache` reads it back and validates it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from meshcore.atomicfile import write_atomic
from meshcore.errors import ConfigError
from meshcore.model.hashing import snapshot_hash
from meshcore.model.loading import format_validation_error
from meshcore.model.snapshot import Snapshot

__all__ = ["CachedSnapshot", "load_cache", "validate_snapshot", "write_cache"]


@dataclass(frozen=True, slots=True)
class CachedSnapshot:
    """A snapshot as controld sent it: its version, its hash, the validated model."""

    version: int
    hash: str
    snapshot: Snapshot


def validate_snapshot(document: Any, version: int, source: str) -> Snapshot:
    """``document`` validated as the snapshot of ``version``; :class:`ConfigError` names
    ``source``."""
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: the snapshot is not a JSON object")
    try:
        return Snapshot.model_validate({**document, "version": version})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from exc


def load_cache(path: Path) -> CachedSnapshot:
    """Read a cache file written by :func:`write_cache`; raises :class:`ConfigError`."""
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), int):
        raise ConfigError(f"{path}: expected {{version, hash, snapshot}}")
    snapshot_doc = doc.get("snapshot")
    snapshot = validate_snapshot(snapshot_doc, doc["version"], str(path))
    digest = doc.get("hash")
    if not isinstance(digest, str) or not digest:
        digest = snapshot_hash(snapshot)
    return CachedSnapshot(doc["version"], digest, snapshot)


def write_cache(path: Path, version: int, digest: str, document: dict[str, Any]) -> None:
    """Write ``{version, hash, snapshot}`` to ``path`` atomically, readable by the owner only."""
    data = json.dumps(
        {"version": version, "hash": digest, "snapshot": {**document, "version": version}},
        separators=(",", ":"),
    ).encode("utf-8")
    write_atomic(path, data, 0o600)
