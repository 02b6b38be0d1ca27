"""The revoked leaves the bundle carries: only revoked records, pruned at expiry, kept on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from controld.ca.identities import IdentityRecord, LeafRecord
from controld.ca.revocations import RevokedSerials
from controld.ca.storage import CAStore

pytestmark = pytest.mark.timeout(30)

ROOT = "0123456789abcdef"


def record(ident: str, *leaves: tuple[int, float], revoked: float | None = 1.0) -> IdentityRecord:
    return IdentityRecord(
        id=ident,
        service="web",
        namespace="default",
        spiffe_id="spiffe://mesh.local/ns/default/svc/web",
        enrolled=0.0,
        leaves=tuple(
            LeafRecord(serial=format(s, "x"), root=ROOT, not_after=na) for s, na in leaves
        ),
        revoked=revoked,
    )


def test_only_revoked_unexpired_leaves_pruned_and_persisted(tmp_path: Path) -> None:
    store = CAStore(tmp_path / "ca")
    store.ensure_dir()
    revoked = RevokedSerials(store, now=100.0)
    assert revoked.merge([record("a" * 16, (1, 200.0), revoked=None)], now=100.0) is False
    assert revoked.merge([record("b" * 16, (2, 200.0), (3, 300.0), (4, 50.0))], now=100.0)
    assert not revoked.merge([record("b" * 16, (2, 200.0))], now=100.0)  # nothing new
    assert [leaf.serial for leaf in revoked.current(now=100.0)] == [2, 3]
    assert [e["serial"] for e in revoked.as_json(now=100.0)] == ["2", "3"]
    # Expired leaves leave the list (the cache too).
    assert [e["serial"] for e in revoked.as_json(now=250.0)] == ["3"]
    assert 2 not in revoked and 3 in revoked

    # A new controld on the same directory knows them without the records.
    again = RevokedSerials(store, now=250.0)
    assert [leaf.serial for leaf in again.current(now=250.0)] == [3]
    # An unreadable file is logged; the records still count.
    (tmp_path / "ca" / "revoked.json").write_bytes(b"[" * 100 + b"]" * 100)
    assert RevokedSerials(store, now=250.0).current(now=250.0) == []
