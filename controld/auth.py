"""Bearer-token (and client-certificate) authentication of controld's HTTP API.

Two kinds of token:

* The **admin token**, a random secret kept in a file (``--admin-token-file``; created with
  mode 0600 on first start, which is also how ``meshctl`` on the same host finds it). It may do
  everything.
* **Sidecar tokens** ``sidecar.<id>.<secret>``, each a sealed record in the registry KV
  (:mod:`controld.sidecar_tokens`): they expire, can be revoked one by one, and those handed
  out at enrollment are bound to the enrolled identity. A sidecar token may only register and
  poll proxies of its own service. Old ``sidecar.<service>.<hmac>`` tokens are refused with a
  message saying so.

On the mutual-TLS listener a request that presents a client certificate is the workload of
the certificate's SPIFFE ID; a bearer token sent with it must be a sidecar token of the same
service (and, if bound, of the same identity), else the request is refused.

Every comparison of secret material is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controld.sidecar_tokens import (
    DEFAULT_TTL_S,
    WORKLOAD_ID_RE,
    SidecarTokenRecord,
    SidecarTokens,
    TokenRefused,
)
from meshcore.errors import MeshError

__all__ = [
    "AuthError",
    "Forbidden",
    "Principal",
    "TokenAuth",
    "TokenFileError",
    "Unauthenticated",
    "load_admin_token",
]

_SIDECAR_PREFIX = "sidecar."
#: Shortest admin token accepted from a file (``token_urlsafe(32)`` gives 43 characters).
_MIN_ADMIN_TOKEN_LEN = 16


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
    #: The service of a sidecar; ``None`` for the admin.
    service: str | None = None
    namespace: str | None = None
    #: The SPIFFE ID of the client certificate, or the identity the token is bound to.
    identity: str | None = None
    #: The id of the sidecar token used (None: admin, or a client certificate alone).
    token_id: str | None = None

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


def _sidecar(record: SidecarTokenRecord) -> Principal:
    return Principal("sidecar", record.service, record.namespace, record.identity, record.id)


class TokenAuth:
    """Checks bearer tokens (admin, sidecar) and client certificates' SPIFFE IDs."""

    __slots__ = ("_admin", "tokens")

    def __init__(self, admin_token: str, tokens: SidecarTokens | None = None) -> None:
        if len(admin_token) < _MIN_ADMIN_TOKEN_LEN or not admin_token.isascii():
            raise ValueError(
                f"the admin token must be at least {_MIN_ADMIN_TOKEN_LEN} ASCII characters"
            )
        self._admin = admin_token.encode("ascii")
        #: The sidecar token records; None: sidecar tokens are refused (no registry).
        self.tokens = tokens

    @classmethod
    def from_file(cls, path: Path, tokens: SidecarTokens | None = None) -> TokenAuth:
        """Load the admin token from ``path``, creating it (mode 0600) if missing.

        A missing parent directory is created with mode 0700. Raises :class:`TokenFileError`
        when the file can't be read or written, is empty, or is readable by group or others.
        """
        return cls(load_admin_token(path), tokens)

    def replace_admin(self, admin_token: str) -> bool:
        """Accept ``admin_token`` instead of the current one (a rotated token file re-read
        on SIGHUP); True when it changed. ValueError, as the constructor, for a bad token."""
        if len(admin_token) < _MIN_ADMIN_TOKEN_LEN or not admin_token.isascii():
            raise ValueError(
                f"the admin token must be at least {_MIN_ADMIN_TOKEN_LEN} ASCII characters"
            )
        new = admin_token.encode("ascii")
        changed = not hmac.compare_digest(new, self._admin)
        self._admin = new
        return changed

    def _store(self) -> SidecarTokens:
        if self.tokens is None:
            raise ValueError("sidecar tokens need the registry KV, which is not configured")
        return self.tokens

    async def mint_sidecar(
        self,
        service: str,
        namespace: str = "default",
        *,
        ttl_s: float = DEFAULT_TTL_S,
        identity: str | None = None,
        serial: str | None = None,
    ) -> tuple[str, SidecarTokenRecord]:
        """A new sidecar token and its record (see :meth:`SidecarTokens.mint`)."""
        return await self._store().mint(
            service, namespace, ttl_s=ttl_s, identity=identity, serial=serial
        )

    async def authenticate(
        self, authorization: str | None, *, peer_id: str | None = None
    ) -> Principal:
        """The principal of a request: its ``Authorization`` header value (``Bearer
        <token>``) and the SPIFFE ID of its verified client certificate, if any.

        Raises :class:`Unauthenticated` when neither identifies a caller (or the token is
        not valid), :class:`Forbidden` when the token names another workload than the
        certificate.
        """
        workload = WORKLOAD_ID_RE.match(peer_id) if peer_id is not None else None
        if not authorization:
            if workload is not None:
                return Principal("sidecar", workload.group(2), workload.group(1), peer_id)
            raise Unauthenticated("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("expected 'Authorization: Bearer <token>'")
        principal = await self.verify(token.strip())
        if workload is None:
            return principal
        namespace, service = workload.group(1), workload.group(2)
        if (
            principal.kind != "sidecar"
            or principal.service != service
            or principal.namespace != namespace
            or (principal.identity is not None and principal.identity != peer_id)
        ):
            raise Forbidden(
                f"the bearer token ({principal.name}) does not belong to the client "
                f"certificate's workload {peer_id}"
            )
        return Principal("sidecar", service, namespace, peer_id, principal.token_id)

    async def verify(self, token: str) -> Principal:
        """The principal of a bare token; raises :class:`Unauthenticated` if invalid."""
        if not token.isascii():
            raise Unauthenticated("invalid token")
        if token.startswith(_SIDECAR_PREFIX):
            if self.tokens is None:
                raise Unauthenticated("invalid token")
            try:
                return _sidecar(await self.tokens.verify(token))
            except TokenRefused as exc:
                raise Unauthenticated(str(exc)) from exc
        if hmac.compare_digest(token.encode("ascii"), self._admin):
            return ADMIN
        raise Unauthenticated("invalid token")


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
