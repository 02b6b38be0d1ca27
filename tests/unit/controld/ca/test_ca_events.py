"""The events the CA records: leaves issued at enrollment and renewal, rotation steps."""

from __future__ import annotations

from pathlib import Path

import pytest
from ca_support import RECORD_KEY, FakeKV, make_csr

from controld.ca import CertificateAuthority, IdentityService
from controld.events import EventJournal

pytestmark = pytest.mark.timeout(30)


async def test_issued_renewed_and_rotation_steps(tmp_path: Path) -> None:
    journal = EventJournal(16)
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    service = IdentityService(
        ca,
        FakeKV(),
        "meshd/",
        record_key=RECORD_KEY,
        trust_domain=lambda: "corp.example",
        events=journal,
    )
    token, _ = await service.join_tokens.create("web", "prod", 60)
    issued = await service.enroll(token, make_csr()[0], instance="web-1")
    await service.renew(make_csr()[0], issued.certificate)
    service.rotate("stage")
    page = await journal.wait_after(0, wait_s=0, limit=10)
    kinds = [(e.kind, e.subject) for e in page.events]
    spiffe = "spiffe://corp.example/ns/prod/svc/web"
    assert kinds == [("cert.issued", spiffe), ("cert.renewed", spiffe), ("ca.rotation", "stage")]
    assert ", proxy web-1, valid until 20" in page.events[0].detail
    assert page.events[2].detail.startswith("phase staged, signer ")
