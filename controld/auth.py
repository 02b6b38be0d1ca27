"""Bearer-token authentication of controld's HTTP API.

Two kinds of token:

* The **admin token**, a random secret kept in a file (``--admin-token-file``; created with
  mode 0600 on first start, which is also how ``meshctl`` on the same host finds it). It may do
  everything.
* **Sidecar tokens** ``sidecar.<service>.<hex hmac-sha256>``, minted by the admin for one
  service. The MAC key is derived from the admin token, so nothing besides that file has to be
  stored, and rotating the admin token revokes every sidecar token at once. A sidecar token may
  only register and poll proxies of its own service.

Every comparison of secret material is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from meshcore.errors import MeshError
from meshcore.model.policy import SERVICE_PATTERN

__all__ = [
    "AuthError",
    "Forbidden",
    "Principal",
    "TokenAuth",
    "TokenFileError",
    "Unauthenticated",
]

#: Domain separation of the sidecar MAC key from any other use of the admin token.
_SIDECAR_KEY_INFO = b"meshd sidecar token v1"
_SIDECAR_PREFIX = "sidecar."
_MAC_HEX_LEN = 64
#: Shortest admin token accepted from a file (``token_urlsafe(32)`` gives 43 characters).
_MIN_ADMIN_TOKEN_LEN = 16
#: Service names a sidecar token may carry: the names proxy descriptors may use.
_SERVICE_RE = re.compile(SERVICE_PATTERN)
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


class AuthError(MeshError):
    """Root of the authentication errors."""


class TokenFileError(AuthError):
    """The admin token file can't be created or read, or is readable by others."""


class Unauthenticated(AuthError):
    """No token, a malformed header or a token that is not valid (HTTP 401)."""


class Forbidden(AuthError):
    """A valid token that may not do what was asked (HTTP 403)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request."""

    kind: Literal["admin", "sidecar"]
    #: The service of a sidecar token; ``None`` for the admin.
    service: str | None = None

    @property
    def name(self) -> str:
        """``"admin"`` or ``"sidecar:<service>"`` (the audit log's and store's author)."""
        return "admin" if self.kind == "admin" else f"sidecar:{self.service}"

    @property
    def is_admin(self) -> bool:
        """True for the admin token."""
        return self.kind == "admin"

    def require_admin(self) -> None:
        """Raise :class:`Forbidden` unless this is the admin."""
        if self.kind != "admin":
            raise Forbidden(f"{self.name} may not use this endpoint")

    def require_service(self, service: str) -> None:
        """Raise :class:`Forbidden` unless this is the admin or a sidecar of ``service``."""
        if self.kind != "admin" and self.service != service:
            raise Forbidden(f"{self.name} may not act for service {service!r}")


ADMIN = Principal("admin")


class TokenAuth:
    """Checks bearer tokens against the admin token and the sidecar tokens derived from it."""

    __slots__ = ("_admin", "_key", "_sidecars")

    def __init__(self, admin_token: str) -> None:
        if len(admin_token) < _MIN_ADMIN_TOKEN_LEN or not admin_token.isascii():
            raise ValueError(
                f"the admin token must be at least {_MIN_ADMIN_TOKEN_LEN} ASCII characters"
            )
        self._admin = admin_token.encode("ascii")
        self._key = hmac.new(self._admin, _SIDECAR_KEY_INFO, hashlib.sha256).digest()
        # Principal per service, so a poll doesn't allocate one per request.
        self._sidecars: dict[str, Principal] = {}

    @classmethod
    def from_file(cls, path: Path) -> TokenAuth:
        """Load the admin token from ``path``, creating it (mode 0600) if missing.

        A missing parent directory is created with mode 0700. Raises :class:`TokenFileError`
        when the file can't be read or written, is empty, or is readable by group or others.
        """
        return cls(load_admin_token(path))

    def mint_sidecar(self, service: str) -> str:
        """A token for the sidecars of ``service``; raises ``ValueError`` for a bad name."""
        if not _SERVICE_RE.match(service):
            raise ValueError(f"invalid service name {service!r}")
        return f"{_SIDECAR_PREFIX}{service}.{self._mac(service)}"

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value (``Bearer <token>``).

        Raises :class:`Unauthenticated` when the header is missing, not a bearer token, or
        the token is not valid.
        """
        if not authorization:
            raise Unauthenticated("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("expected 'Authorization: Bearer <token>'")
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        """The principal of a bare token; raises :class:`Unauthenticated` if invalid."""
        if not token.isascii():
            raise Unauthenticated("invalid token")
        if token.startswith(_SIDECAR_PREFIX):
            service, _, mac = token[len(_SIDECAR_PREFIX) :].rpartition(".")
            if (
                _SERVICE_RE.match(service)
                and _HEX_RE.match(mac)
                and hmac.compare_digest(mac, self._mac(service))
            ):
                principal = self._sidecars.get(service)
                if principal is None:
                    principal = self._sidecars[service] = Principal("sidecar", service)
                return principal
            raise Unauthenticated("invalid token")
        if hmac.compare_digest(token.encode("ascii"), self._admin):
            return ADMIN
        raise Unauthenticated("invalid token")

    def _mac(self, service: str) -> str:
        return hmac.new(self._key, service.encode("utf-8"), hashlib.sha256).hexdigest()


def load_admin_token(path: Path) -> str:
    """Read the admin token from ``path``, creating the file with a fresh token if missing.

    See :meth:`TokenAuth.from_file` for the rules.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TokenFileError(f"cannot create {path.parent}: {exc.strerror}") from exc
    token = secrets.token_urlsafe(32)
    try:
        # O_EXCL: two daemons starting at once must not overwrite each other's token.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_token(path)
    except OSError as exc:
        raise TokenFileError(f"cannot create admin token file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
    return token


def _read_token(path: Path) -> str:
    try:
        with path.open("r", encoding="ascii") as src:
            mode = os.fstat(src.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise TokenFileError(
                    f"admin token file {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
                )
            token = src.read().strip()
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"admin token file {path} is not ASCII text") from exc
    except OSError as exc:
        raise TokenFileError(f"cannot read admin token file {path}: {exc.strerror}") from exc
    if len(token) < _MIN_ADMIN_TOKEN_LEN:
        raise TokenFileError(
            f"admin token file {path} holds no token of at least {_MIN_ADMIN_TOKEN_LEN} characters"
        )
    return token
