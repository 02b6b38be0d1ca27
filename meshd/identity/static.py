"""A workload identity read from files (bootstrap ``identity.static``), reloaded on demand.

For operators with their own PKI, and for tests: no enrollment, no renewal. The files are
read at start and again by :meth:`StaticIdentity.reload` (SIGHUP); a new identity applies to
new connections, as with :class:`~meshd.identity.service.IdentityService`.
"""

from __future__ import annotations

from pathlib import Path

from meshcore.errors import ConfigError
from meshcore.model.bootstrap import StaticIdentityFiles
from meshd.identity.errors import InvalidIdentity
from meshd.identity.holder import IdentityHolder
from meshd.identity.material import Identity, parse_identity, split_pem_certificates

__all__ = ["StaticIdentity"]


class StaticIdentity(IdentityHolder):
    """The identity source for ``identity.static`` (same consumer API as IdentityService)."""

    def __init__(self, files: StaticIdentityFiles, base_dir: Path) -> None:
        super().__init__()
        self.files = files
        self.base_dir = base_dir
        self.reload()

    def _path(self, path: Path) -> Path:
        return path if path.is_absolute() else self.base_dir / path

    def reload(self) -> Identity:
        """Read the files again; raises :class:`ConfigError` (keeping the old identity)."""
        files = self.files
        try:
            cert = self._path(files.cert_file).read_bytes()
            key = self._path(files.key_file).read_bytes()
            bundle = split_pem_certificates(self._path(files.bundle_file).read_bytes())
            identity = parse_identity(key, cert, bundle, source="identity.static")
        except OSError as exc:
            raise ConfigError(f"identity.static: {exc.strerror or exc}: {exc.filename}") from exc
        except InvalidIdentity as exc:
            raise ConfigError(str(exc)) from exc
        return self._put(identity)

    def describe(self) -> dict[str, object]:
        """State for ``/config_dump`` (no key material)."""
        return {
            "identity": None if self._current is None else self._current.describe(),
            "static": True,
        }
