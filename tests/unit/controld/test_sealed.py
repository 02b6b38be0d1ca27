"""Sealed KV records: only the key's holder can write what controld reads as a grant."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from controld.sealed import InvalidRecord, RecordKey

pytestmark = pytest.mark.timeout(30)


def test_round_trip_and_binding(tmp_path: Path) -> None:
    key = RecordKey.load_or_create(tmp_path / "record-key")
    raw = key.seal("join-token", "meshd/join-tokens/a", {"service": "web", "n": 1})
    assert key.open("join-token", "meshd/join-tokens/a", raw) == {"service": "web", "n": 1}
    with pytest.raises(InvalidRecord, match="seal does not verify"):
        key.open("join-token", "meshd/join-tokens/b", raw)  # copied to another key
    with pytest.raises(InvalidRecord, match="seal does not verify"):
        key.open("revocation", "meshd/join-tokens/a", raw)  # passed off as another kind


def test_forged_and_malformed_records_are_refused(tmp_path: Path) -> None:
    key = RecordKey.load_or_create(tmp_path / "record-key")
    other = RecordKey(os.urandom(32))
    forged = other.seal("join-token", "k", {"service": "payments"})
    with pytest.raises(InvalidRecord, match="forged"):
        key.open("join-token", "k", forged)
    record = json.loads(key.seal("join-token", "k", {"service": "web"}))
    record["body"]["service"] = "payments"
    with pytest.raises(InvalidRecord, match="forged"):
        key.open("join-token", "k", json.dumps(record).encode())
    for raw in (b'{"service": "web"}', b"[" * 50_000, b"x" * 70_000, b"\xff"):
        with pytest.raises(InvalidRecord):
            key.open("join-token", "k", raw)


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "record-key"
    first = RecordKey.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = RecordKey.load_or_create(path)
    assert again.open("k", "x", first.seal("k", "x", {"a": 1})) == {"a": 1}
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="open to group or others"):
        RecordKey.load_or_create(path)
