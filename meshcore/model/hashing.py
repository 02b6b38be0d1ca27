"""The content hash of a snapshot, computed the same way by controld and meshd.

Both sides must agree byte for byte: controld decides whether a sidecar runs the current
snapshot by comparing the hash the sidecar reports with its own. The version is left out,
so the same content compiled again (after a controld restart, say) hashes the same.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from meshcore.model.snapshot import Snapshot

__all__ = ["canonical_json", "document_hash", "snapshot_hash"]


def canonical_json(document: Any) -> bytes:
    """``document`` as compact JSON with sorted keys (the form that is hashed)."""
    # Exactly json.dumps' defaults otherwise (ensure_ascii): controld hashes the same way.
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def document_hash(document: dict[str, Any]) -> str:
    """sha256 hex of a snapshot's JSON document (``model_dump(mode="json")``) minus ``version``."""
    body = {k: v for k, v in document.items() if k != "version"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def snapshot_hash(snapshot: Snapshot) -> str:
    """sha256 hex of the canonical JSON of ``snapshot`` without its version."""
    return document_hash(snapshot.model_dump(mode="json"))
