"""The CA's files under ``<data-dir>/ca/`` (mode 0700).

* ``<id>.crt`` the root certificate (PEM, 0644), ``<id>.key`` its private key (PEM, 0600);
  ``<id>`` is :attr:`~controld.ca.authority.RootCA.id`.
* ``state.json``: ``{"active": "<id>", "bundle": ["<id>", ...]}``, the rotation state.
* ``revoked.json``: the revoked leaves not yet expired (:mod:`controld.ca.revocations`), so a
  revocation outlives a registry writer deleting its record and a restart.

Every file is written to a temporary name, synced and renamed, so a crash leaves either the
old or the new content. A key file or the directory accessible by group or others is refused
(not silently fixed): someone changed it, and the operator should know.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from controld.ca.authority import RootCA
from controld.ca.errors import CAFileError
from meshcore.atomicfile import write_atomic
from meshcore.boundedjson import BoundedJsonError, loads_bounded

__all__ = ["CAStore"]

_STATE = "state.json"
_REVOKED = "revoked.json"
#: Bound of ``revoked.json`` (about 100 bytes a leaf).
_MAX_REVOKED_BYTES = 64 << 20


class CAStore:
    """Reads and writes the CA directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def ensure_dir(self) -> None:
        """Create the directory (0700) if missing; refuse one open to group or others."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            mode = self.directory.stat().st_mode
        except OSError as exc:
            raise CAFileError(f"cannot create CA directory {self.directory}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CAFileError(
                f"CA directory {self.directory} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 700 {self.directory}"
            )

    def cert_path(self, root_id: str) -> Path:
        """Where the certificate of root ``root_id`` is."""
        return self.directory / f"{root_id}.crt"

    def key_path(self, root_id: str) -> Path:
        """Where the key of root ``root_id`` is."""
        return self.directory / f"{root_id}.key"

    def write_root(self, root: RootCA) -> None:
        """Store a root's certificate and key (key first: a cert alone is useless)."""
        self._write(self.key_path(root.id), root.key_pem(), 0o600)
        self._write(self.cert_path(root.id), root.cert_pem().encode("ascii"), 0o644)

    def load_root(self, root_id: str) -> RootCA:
        """Load a root; refuses a key file accessible by group or others."""
        key_path = self.key_path(root_id)
        try:
            with key_path.open("rb") as src:
                mode = os.fstat(src.fileno()).st_mode
                if mode & (stat.S_IRWXG | stat.S_IRWXO):
                    raise CAFileError(
                        f"CA key file {key_path} is accessible by group or others "
                        f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {key_path}"
                    )
                key_pem = src.read()
            cert_pem = self.cert_path(root_id).read_bytes()
        except OSError as exc:
            raise CAFileError(f"cannot read CA root {root_id} in {self.directory}: {exc}") from exc
        root = RootCA.from_pem(cert_pem, key_pem, source=str(key_path))
        if root.id != root_id:
            raise CAFileError(f"{self.cert_path(root_id)} holds root {root.id}, not {root_id}")
        return root

    def remove_root(self, root_id: str) -> None:
        """Delete a retired root's files (a missing one is fine)."""
        for path in (self.key_path(root_id), self.cert_path(root_id)):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise CAFileError(f"cannot remove {path}: {exc}") from exc

    def read_state(self) -> tuple[str, list[str]] | None:
        """``(active id, bundle ids)``, or ``None`` for a CA never started."""
        path = self.directory / _STATE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CAFileError(f"cannot read CA state {path}: {exc}") from exc
        active = raw.get("active") if isinstance(raw, dict) else None
        bundle = raw.get("bundle") if isinstance(raw, dict) else None
        if (
            not isinstance(active, str)
            or not isinstance(bundle, list)
            or not all(isinstance(b, str) for b in bundle)
            or active not in bundle
        ):
            raise CAFileError(f"CA state {path} is malformed")
        return active, list(bundle)

    def write_state(self, active: str, bundle: list[str]) -> None:
        """Persist the rotation state."""
        body = json.dumps({"active": active, "bundle": bundle}, indent=2) + "\n"
        self._write(self.directory / _STATE, body.encode("utf-8"), 0o600)

    def read_revoked(self) -> Any:
        """The decoded ``revoked.json`` (``None`` when missing); :class:`CAFileError` when
        it can't be read or isn't JSON within bounds."""
        path = self.directory / _REVOKED
        try:
            return loads_bounded(path.read_bytes(), max_bytes=_MAX_REVOKED_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, BoundedJsonError) as exc:
            raise CAFileError(f"cannot read {path}: {exc}") from exc

    def write_revoked(self, value: Any) -> None:
        """Persist the revoked leaves (0600)."""
        body = json.dumps(value, separators=(",", ":")) + "\n"
        self._write(self.directory / _REVOKED, body.encode("utf-8"), 0o600)

    def _write(self, path: Path, data: bytes, mode: int) -> None:
        try:
            write_atomic(path, data, mode, sync_dir=True)
        except OSError as exc:
            raise CAFileError(f"cannot write {path}: {exc}") from exc
