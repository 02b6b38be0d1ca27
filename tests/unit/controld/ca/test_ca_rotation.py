"""The CA directory (files, modes) and the root rotation steps (``controld.ca``)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from ca_support import make_csr
from cryptography import x509

from controld.ca import CAFileError, CertificateAuthority, RenewalRefused, RotationError
from controld.ca.authority import generate_root, load_csr

WEB = "spiffe://mesh.local/ns/default/svc/web"


def aki(cert: x509.Certificate) -> bytes | None:
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_creates_root_with_private_modes(tmp_path: Path) -> None:
    ca_dir = tmp_path / "data" / "ca"
    ca = CertificateAuthority.load_or_create(ca_dir)
    root = ca.signer
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / f"{root.id}.key") == 0o600
    assert (ca_dir / f"{root.id}.crt").read_text() == root.cert_pem()
    assert json.loads((ca_dir / "state.json").read_text()) == {
        "active": root.id,
        "bundle": [root.id],
    }
    assert ca.state.phase == "stable" and ca.bundle_pem() == [root.cert_pem()]
    # Restart: the same root is loaded, not a new one generated.
    again = CertificateAuthority.load_or_create(ca_dir)
    assert again.signer.id == root.id
    assert not list(ca_dir.glob(".*.tmp"))


def test_import_on_first_start_only(tmp_path: Path) -> None:
    imported = generate_root()
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", import_root=imported)
    assert ca.signer.id == imported.id
    later = CertificateAuthority.load_or_create(tmp_path / "ca", import_root=generate_root())
    assert later.signer.id == imported.id


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    root = CertificateAuthority.load_or_create(ca_dir).signer
    key = ca_dir / f"{root.id}.key"
    key.chmod(0o640)
    with pytest.raises(CAFileError, match=r"accessible by group or others.*chmod 600"):
        CertificateAuthority.load_or_create(ca_dir)
    key.chmod(0o600)
    ca_dir.chmod(0o755)
    with pytest.raises(CAFileError, match="chmod 700"):
        CertificateAuthority.load_or_create(ca_dir)
    ca_dir.chmod(0o700)
    assert CertificateAuthority.load_or_create(ca_dir).signer.id == root.id


def test_broken_state_is_refused(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_create(ca_dir)
    (ca_dir / "state.json").write_text('{"active": "x", "bundle": []}')
    with pytest.raises(CAFileError, match="malformed"):
        CertificateAuthority.load_or_create(ca_dir)
    (ca_dir / "state.json").write_text('{"active": "x", "bundle": ["x"]}')
    with pytest.raises(CAFileError, match="cannot read CA root x"):
        CertificateAuthority.load_or_create(ca_dir)


def test_rotation_steps_persist_and_change_bundle_then_signer(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca = CertificateAuthority.load_or_create(ca_dir)
    old = ca.signer
    _, public = load_csr(make_csr()[0])
    old_leaf = ca.sign(public, WEB)

    with pytest.raises(RotationError):
        ca.activate()
    with pytest.raises(RotationError):
        ca.retire_old()

    new = ca.stage_new_root()
    assert ca.state.phase == "staged"
    assert ca.signer.id == old.id  # still signing with the old root
    assert [c.fingerprint for c in ca.bundle()] == [old.cert.fingerprint, new.cert.fingerprint]
    with pytest.raises(RotationError):
        ca.stage_new_root()
    restarted = CertificateAuthority.load_or_create(ca_dir)
    assert restarted.state == ca.state

    ca.activate()
    assert ca.state.phase == "active"
    assert ca.signer.id == new.id
    assert ca.state.bundle == (old.id, new.id)
    new_leaf = ca.sign(public, WEB)
    assert aki(new_leaf) == ski(new.cert) != aki(old_leaf)
    # Both generations of leaves verify against the bundle while it holds both roots.
    assert ca.verify(old_leaf) == WEB
    assert ca.verify(new_leaf) == WEB
    assert CertificateAuthority.load_or_create(ca_dir).signer.id == new.id

    assert ca.retire_old() == old.id
    retired = ca.state
    assert retired.phase == "stable"
    assert retired.bundle == (new.id,)
    assert not (ca_dir / f"{old.id}.key").exists()
    with pytest.raises(RenewalRefused):
        ca.verify(old_leaf)
    assert ca.verify(new_leaf) == WEB
    restarted = CertificateAuthority.load_or_create(ca_dir)
    assert restarted.state == ca.state
    assert restarted.bundle_pem() == [new.cert_pem()]
