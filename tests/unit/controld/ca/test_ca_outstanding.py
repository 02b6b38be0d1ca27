"""Outstanding leaves per root and the retire check (``controld.ca.outstanding``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ca_support import RECORD_KEY, FakeKV, make_csr
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from controld.ca import CertificateAuthority, IdentityService, RotationError
from controld.ca.authority import generate_root, sign_leaf
from controld.ca.outstanding import OutstandingLeaves

WEB = "spiffe://mesh.local/ns/default/svc/web"
T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


def leaf(ttl_s: float, *, now: datetime = T0) -> x509.Certificate:
    root = generate_root(now=now - timedelta(days=1))
    key = ec.generate_private_key(ec.SECP256R1())
    return sign_leaf(root, key.public_key(), WEB, ttl=timedelta(seconds=ttl_s), now=now)


def test_counts_until_renewed_or_expired() -> None:
    tracker = OutstandingLeaves(started=T0, roots_at_start=())
    short, long_ = leaf(60), leaf(600)
    tracker.issued("old", short, now=T0)
    tracker.issued("old", long_, now=T0)
    tracker.issued("new", leaf(600), now=T0)
    out = tracker.outstanding("old", now=T0, leaf_ttl=timedelta(hours=1))
    assert (out.count, out.last_expiry, out.untracked_until) == (
        2,
        long_.not_valid_after_utc,
        None,
    )
    assert not out.clear and "2 leaf certificate(s)" in out.describe()
    tracker.renewed(long_)
    later = T0 + timedelta(seconds=120)
    out = tracker.outstanding("old", now=later, leaf_ttl=timedelta(hours=1))
    assert out.clear and out.describe() == "no outstanding leaves"
    assert tracker.outstanding("new", now=later, leaf_ttl=timedelta(hours=1)).count == 1
    tracker.sweep(T0 + timedelta(hours=1))
    assert len(tracker) == 0


def test_roots_at_start_are_blind_for_one_leaf_lifetime() -> None:
    tracker = OutstandingLeaves(started=T0, roots_at_start=("old",))
    ttl = timedelta(minutes=10)
    out = tracker.outstanding("old", now=T0 + timedelta(minutes=1), leaf_ttl=ttl)
    assert out.untracked_until == T0 + ttl and not out.clear
    assert "not tracked" in out.describe()
    assert tracker.outstanding("old", now=T0 + ttl, leaf_ttl=ttl).clear
    # A root staged after the start: everything it signed is known.
    assert tracker.outstanding("staged", now=T0, leaf_ttl=ttl).clear


def test_sweeps_expired_records_as_it_goes() -> None:
    tracker = OutstandingLeaves(started=T0, roots_at_start=())
    expired = leaf(1)
    tracker.issued("old", expired, now=T0)
    for _ in range(1100):
        tracker.issued("old", expired, now=T0 + timedelta(minutes=1))
    assert len(tracker) <= 1


async def test_retire_refused_until_renewed_force_skips(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    service = IdentityService(
        ca,
        FakeKV(),
        "meshd/",
        record_key=RECORD_KEY,
        trust_domain=lambda: "mesh.local",
        leaf_ttl=timedelta(0),
    )
    service.leaf_ttl = timedelta(hours=1)
    token, _ = await service.join_tokens.create("web", "default", 60)
    csr, key = make_csr()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    issued = await service.enroll(token, csr)
    old = ca.state.active
    assert issued.bundle_index == ca.index
    service.rotate("stage")
    service.rotate("activate")
    # Started with leaf_ttl 0: no blind window, only the tracked leaf stands in the way.
    service.outstanding = OutstandingLeaves(started=datetime.now(UTC), roots_at_start=())
    service.outstanding.issued(old, issued.certificate, now=datetime.now(UTC))
    with pytest.raises(RotationError, match=rf"retire root {old}: 1 leaf certificate"):
        service.rotate("retire")
    status = service.status()
    assert status["phase"] == "active"
    roots = status["roots"]
    assert isinstance(roots, list) and roots[0]["outstanding"]["count"] == 1

    new_csr, _ = make_csr()
    await service.renew(new_csr, issued.certificate)
    assert service.rotate("retire").phase == "stable"
    assert ca.state.bundle == (ca.state.active,)


async def test_force_retires_with_leaves_outstanding(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    service = IdentityService(
        ca, FakeKV(), "meshd/", record_key=RECORD_KEY, trust_domain=lambda: "mesh.local"
    )
    service.rotate("stage")
    service.rotate("activate")
    with pytest.raises(RotationError, match="not tracked"):
        service.rotate("retire")
    assert service.rotate("retire", force=True).phase == "stable"
    with pytest.raises(RotationError, match="no old root"):
        service.rotate("retire", force=True)
    with pytest.raises(RotationError, match="unknown"):
        service.rotate("bogus")
