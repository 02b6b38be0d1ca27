from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from meshd.identity.errors import InvalidIdentity
from meshd.identity.keys import (
    ensure_private_dir,
    generate_key,
    key_from_pem,
    key_to_pem,
    same_public_key,
    sign,
    verify,
)


def test_generated_key_is_p256_and_round_trips() -> None:
    key = generate_key()
    assert isinstance(key.curve, ec.SECP256R1)
    pem = key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    again = key_from_pem(pem)
    assert same_public_key(again, key.public_key())
    assert not same_public_key(generate_key(), key.public_key())


def test_other_keys_are_refused() -> None:
    other = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidIdentity, match="P-256"):
        key_from_pem(other, "k")
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidIdentity, match="P-256"):
        key_from_pem(p384, "k")
    with pytest.raises(InvalidIdentity, match="not a PEM private key"):
        key_from_pem(b"garbage", "k")


def test_sign_and_verify() -> None:
    key = generate_key()
    signature = sign(key, b"data")
    assert verify(key.public_key(), signature, b"data")
    assert not verify(key.public_key(), signature, b"other data")
    assert not verify(generate_key().public_key(), signature, b"data")


def test_private_dir_is_0700_even_if_it_existed(tmp_path: Path) -> None:
    made = tmp_path / "a" / "state"
    ensure_private_dir(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    existing = tmp_path / "open"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    ensure_private_dir(existing)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o700
