"""Records only controld can write: JSON in the registry KV sealed with a key only it holds.

Anyone who can write the registry's KV could otherwise forge what controld reads back as a
grant (a join token, a revocation, CA state, a policy revision). Each such record is stored as::

    {"v": 1, "body": {...}, "mac": "<base64url HMAC-SHA256>"}

The MAC covers the record kind, the KV key it is stored under and the canonical JSON of the
body, so a sealed record can't be copied to another key or passed off as another kind. The key
is 32 random bytes in ``<data-dir>/record-key`` (0600), made at first start.

Reading is bounded (:mod:`meshcore.boundedjson`): an oversized, deeply nested, non-JSON,
unsealed or forged value raises :class:`InvalidRecord`, which callers log, count and skip.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from meshcore.boundedjson import DEFAULT_MAX_DEPTH, BoundedJsonError, loads_bounded

__all__ = ["RECORD_KEY_FILE", "InvalidRecord", "RecordKey"]

#: Name of the key file in controld's data directory.
RECORD_KEY_FILE: Final = "record-key"
_KEY_BYTES: Final = 32
#: Largest sealed record read back (64 KiB: a record is a few hundred bytes).
MAX_RECORD_BYTES: Final = 64 * 1024


class InvalidRecord(ValueError):
    """A KV value that is not a well-formed record sealed by this controld."""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class RecordKey:
    """Seals and opens records with one HMAC key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a record key has at least 16 bytes")
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path) -> RecordKey:
        """The key in ``path``; made (0600, random) when the file is missing.

        A key file that group or others can read is refused: someone changed it, and the
        records it seals can no longer be trusted to come from controld alone.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(base64.b64encode(secrets.token_bytes(_KEY_BYTES)) + b"\n")
                out.flush()
                os.fsync(out.fileno())
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(f"{path} is open to group or others (mode {mode & 0o777:o})")
        key = base64.b64decode(path.read_bytes().strip(), validate=True)
        return cls(key)

    def _mac(self, kind: str, kv_key: str, body: Mapping[str, Any]) -> str:
        message = _canonical([kind, kv_key, body])
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def seal(self, kind: str, kv_key: str, body: Mapping[str, Any]) -> bytes:
        """The stored form of ``body`` as a ``kind`` record under ``kv_key``."""
        record = {"v": 1, "body": dict(body), "mac": self._mac(kind, kv_key, body)}
        return _canonical(record)

    def open(
        self,
        kind: str,
        kv_key: str,
        raw: bytes,
        *,
        max_bytes: int = MAX_RECORD_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> dict[str, Any]:
        """The body of the ``kind`` record stored under ``kv_key``.

        Raises :class:`InvalidRecord` when ``raw`` is too large, too deep, not JSON, not a
        sealed record, or sealed with another key, kind or KV key.
        """
        try:
            record = loads_bounded(raw, max_bytes=max_bytes, max_depth=max_depth + 1)
        except BoundedJsonError as exc:
            raise InvalidRecord(f"{kind} record {kv_key}: {exc}") from exc
        if (
            not isinstance(record, dict)
            or record.get("v") != 1
            or not isinstance(record.get("body"), dict)
            or not isinstance(record.get("mac"), str)
        ):
            raise InvalidRecord(f"{kind} record {kv_key}: not a sealed record")
        body: dict[str, Any] = record["body"]
        if not hmac.compare_digest(record["mac"], self._mac(kind, kv_key, body)):
            raise InvalidRecord(f"{kind} record {kv_key}: seal does not verify (forged?)")
        return body
