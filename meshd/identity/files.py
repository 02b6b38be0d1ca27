"""The identity on disk: key, leaf and bundle under a state directory, replaced atomically.

Layout::

    <state_dir>/            0700
        current -> gen-<id> symlink, swapped with one rename
        gen-<id>/           0700
            key.pem         0600
            cert.pem        0644
            bundle.pem      0644 (the roots, concatenated)
        sidecar.token       0600 (controld API token received at enrollment)

A renewal brings a new key *and* a new leaf: writing them as separate files, a crash in
between would leave a key that doesn't match its certificate. Each identity is written to a
fresh directory (files fsynced) and put in force by renaming a symlink over ``current``, so a
reader sees the old triple or the new one, never a mix.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from meshcore.atomicfile import write_atomic
from meshd.identity.errors import InvalidIdentity
from meshd.identity.keys import ensure_private_dir
from meshd.identity.material import Identity, parse_identity, split_pem_certificates

__all__ = ["IdentityStore"]

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
BUNDLE_FILE = "bundle.pem"
_CURRENT = "current"
_GEN_PREFIX = "gen-"
_SIDECAR_TOKEN_NAME = "sidecar.token"  # noqa: S105 -- a file name
_MAX_FILE = 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as exc:
        raise InvalidIdentity(f"{path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_FILE:
        raise InvalidIdentity(f"{path}: larger than {_MAX_FILE} bytes")
    return data


class IdentityStore:
    """Reads and writes the identity kept under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @property
    def current_dir(self) -> Path:
        """The directory holding the identity in force (through the ``current`` symlink)."""
        return self.state_dir / _CURRENT

    def exists(self) -> bool:
        """Whether an identity was saved (the ``current`` link exists)."""
        return os.path.lexists(self.current_dir)

    def load(self) -> Identity | None:
        """The saved identity, checked (key matches leaf, leaf chains to the bundle).

        ``None`` if none was saved; :class:`InvalidIdentity` if what is there is broken.
        """
        if not self.exists():
            return None
        where = self.current_dir
        key_pem = _read(where / KEY_FILE)
        cert_pem = _read(where / CERT_FILE)
        bundle = split_pem_certificates(_read(where / BUNDLE_FILE))
        return parse_identity(key_pem, cert_pem, bundle, source=str(where))

    def save(self, identity: Identity) -> Path:
        """Write ``identity`` to a new directory and make it ``current``; returns that directory.

        Older generation directories are removed afterwards.
        """
        ensure_private_dir(self.state_dir)
        name = f"{_GEN_PREFIX}{secrets.token_hex(6)}"
        gen = self.state_dir / name
        gen.mkdir(mode=0o700)
        try:
            write_atomic(gen / KEY_FILE, identity.key_pem, 0o600)
            write_atomic(gen / CERT_FILE, identity.cert_pem, 0o644)
            write_atomic(gen / BUNDLE_FILE, b"".join(identity.bundle_pems), 0o644)
            _fsync_dir(gen)
            link = self.state_dir / f".{_CURRENT}.{os.getpid()}.tmp"
            link.unlink(missing_ok=True)
            os.symlink(name, link)
            os.replace(link, self.current_dir)
            _fsync_dir(self.state_dir)
        except BaseException:
            shutil.rmtree(gen, ignore_errors=True)
            raise
        self._remove_old(keep=name)
        return gen

    def _remove_old(self, *, keep: str) -> None:
        for entry in self.state_dir.iterdir():
            if entry.name.startswith(_GEN_PREFIX) and entry.name != keep and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    def save_sidecar_token(self, token: str) -> None:
        """Keep the controld API token received at enrollment (0600)."""
        ensure_private_dir(self.state_dir)
        write_atomic(self.state_dir / _SIDECAR_TOKEN_NAME, token.encode("utf-8") + b"\n", 0o600)

    def load_sidecar_token(self) -> str | None:
        """The token saved by :meth:`save_sidecar_token`, if any."""
        path = self.state_dir / _SIDECAR_TOKEN_NAME
        if not path.exists():
            return None
        return _read(path).decode("utf-8", "replace").strip() or None
