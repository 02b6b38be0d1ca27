from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meshcore.atomicfile import write_atomic
from meshd.identity.errors import InvalidIdentity
from meshd.identity.files import IdentityStore
from meshd.identity.keys import generate_key, key_to_pem
from meshd.identity.material import Identity, parse_identity, split_pem_certificates

from .identity_testca import TestCA

SPIFFE = "spiffe://mesh.test/ns/default/svc/web"


def make_identity(ca: TestCA, *, roots: tuple[bytes, ...] | None = None) -> Identity:
    key = generate_key()
    now = datetime.now(UTC).replace(microsecond=0)
    cert = ca.sign(key.public_key(), SPIFFE, not_before=now, not_after=now + timedelta(hours=1))
    return parse_identity(key_to_pem(key), cert, roots or (ca.pem,))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_replaces_with_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_nothing_saved_loads_none(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path / "state")
    assert not store.exists()
    assert store.load() is None
    assert store.load_sidecar_token() is None


def test_save_then_load_with_private_modes(tmp_path: Path, ca: TestCA) -> None:
    store = IdentityStore(tmp_path / "state")
    identity = make_identity(ca)
    gen = store.save(identity)
    assert mode(store.state_dir) == 0o700
    assert mode(gen) == 0o700
    assert mode(gen / "key.pem") == 0o600
    assert mode(gen / "cert.pem") == 0o644
    assert store.current_dir.resolve() == gen.resolve()
    loaded = store.load()
    assert loaded == identity
    assert loaded.spiffe_id == SPIFFE


def test_a_new_save_replaces_the_whole_triple(tmp_path: Path, ca: TestCA) -> None:
    store = IdentityStore(tmp_path / "state")
    first = make_identity(ca)
    store.save(first)
    second = make_identity(ca)
    gen = store.save(second)
    assert store.load() == second
    # Only the generation in force is left (the old key is gone from disk).
    gens = sorted(p.name for p in store.state_dir.iterdir() if p.name.startswith("gen-"))
    assert gens == [gen.name]
    assert not any(p.name.endswith(".tmp") for p in store.state_dir.iterdir())


def test_mismatched_files_are_refused(tmp_path: Path, ca: TestCA) -> None:
    store = IdentityStore(tmp_path / "state")
    gen = store.save(make_identity(ca))
    (gen / "key.pem").write_bytes(key_to_pem(generate_key()))
    with pytest.raises(InvalidIdentity, match="not for this key"):
        store.load()
    (gen / "cert.pem").unlink()
    with pytest.raises(InvalidIdentity, match=r"cert\.pem"):
        store.load()


def test_leaf_must_chain_to_a_bundle_root(tmp_path: Path, ca: TestCA) -> None:
    other = TestCA("other root")
    with pytest.raises(InvalidIdentity, match="not issued by a bundle root"):
        make_identity(ca, roots=(other.pem,))
    # A bundle with an extra root (rotation) is fine whichever order.
    both = make_identity(ca, roots=(other.pem, ca.pem))
    store = IdentityStore(tmp_path / "state")
    store.save(both)
    loaded = store.load()
    assert loaded is not None and loaded.bundle_pems == (other.pem, ca.pem)


def test_a_leaf_is_presented_with_the_bundle_root_that_issued_it(ca: TestCA) -> None:
    # So OpenSSL sends that chain as it is instead of building it (and verifying the leaf)
    # from the verify store on every handshake.
    other = TestCA("other root")
    identity = make_identity(ca, roots=(other.pem, ca.pem))
    assert split_pem_certificates(identity.presented_pem) == (identity.cert_pem, ca.pem)
    assert identity.cert_pem in identity.presented_pem
    assert "chain_pem" not in repr(identity)


def test_a_certificate_file_with_its_chain_is_presented_as_given(ca: TestCA) -> None:
    leaf = make_identity(ca)
    chained = parse_identity(leaf.key_pem, leaf.cert_pem + ca.pem, (ca.pem,))
    assert chained.presented_pem == leaf.cert_pem + ca.pem


def test_split_pem_certificates(ca: TestCA) -> None:
    other = TestCA("other root")
    assert split_pem_certificates(ca.pem + other.pem) == (ca.pem, other.pem)
    assert split_pem_certificates(b"") == ()


def test_sidecar_token_is_kept_private(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path / "state")
    store.save_sidecar_token("sidecar.web.abc")
    assert store.load_sidecar_token() == "sidecar.web.abc"
    assert mode(store.state_dir / "sidecar.token") == 0o600
