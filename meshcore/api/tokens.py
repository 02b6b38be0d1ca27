"""Wire models of the tokens an operator mints for sidecars (``meshctl token ...``).

Paths (admin listener, admin token; minting and revoking are audited):

* ``POST /v1/tokens/sidecar`` (:class:`SidecarTokenRequest`) -> :class:`SidecarToken`
* ``GET /v1/tokens/sidecar`` -> :class:`SidecarTokenList` (never a secret)
* ``DELETE /v1/tokens/sidecar/{id}`` -> :class:`TokenRevoked`
* ``POST /v1/tokens/registry`` (:class:`RegistryTokenRequest`) -> :class:`RegistryToken`
* ``POST /v1/tokens/join`` (:class:`JoinTokenRequest`) -> :class:`JoinToken` (single use:
  a sidecar enrolls with it)

Times are RFC 3339 strings.
"""

from __future__ import annotations

from typing import Final

from pydantic import Field

from meshcore.api.base import Answer, Request
from meshcore.model.policy import SERVICE_PATTERN

__all__ = [
    "DEFAULT_JOIN_TTL_S",
    "DEFAULT_SIDECAR_TTL_S",
    "JOIN_TOKENS_PATH",
    "MAX_JOIN_TTL_S",
    "MAX_SIDECAR_TTL_S",
    "REGISTRY_TOKENS_PATH",
    "SIDECAR_TOKENS_PATH",
    "TOKEN_ID_PATTERN",
    "JoinToken",
    "JoinTokenRequest",
    "RegistryToken",
    "RegistryTokenRequest",
    "SidecarToken",
    "SidecarTokenInfo",
    "SidecarTokenList",
    "SidecarTokenRequest",
    "TokenRevoked",
    "sidecar_token_path",
]

SIDECAR_TOKENS_PATH = "/v1/tokens/sidecar"
REGISTRY_TOKENS_PATH = "/v1/tokens/registry"
JOIN_TOKENS_PATH = "/v1/tokens/join"

#: A sidecar token's lifetime unless asked otherwise (30 days).
DEFAULT_SIDECAR_TTL_S: Final = 30 * 86400
#: The longest a sidecar token may live (a year).
MAX_SIDECAR_TTL_S: Final = 365 * 86400
DEFAULT_JOIN_TTL_S: Final = 3600
#: Longest lifetime of a join token (30 days).
MAX_JOIN_TTL_S: Final = 30 * 86400
#: A sidecar token's id (32 hex digits).
TOKEN_ID_PATTERN: Final = r"^[0-9a-f]{32}$"  # noqa: S105 (a pattern, not a secret)


def sidecar_token_path(token_id: str) -> str:
    """``/v1/tokens/sidecar/{id}`` (DELETE revokes that token)."""
    return f"{SIDECAR_TOKENS_PATH}/{token_id}"


class SidecarTokenRequest(Request):
    """Body of ``POST /v1/tokens/sidecar``."""

    service: str = Field(pattern=SERVICE_PATTERN)
    namespace: str = Field(default="default", pattern=SERVICE_PATTERN)
    ttl_s: int = Field(default=DEFAULT_SIDECAR_TTL_S, ge=1, le=MAX_SIDECAR_TTL_S)


class SidecarToken(Answer):
    """A new sidecar token (``sidecar.<id>.<secret>``), its id and expiry."""

    token: str
    id: str
    expires: str


class SidecarTokenInfo(Answer):
    """One unexpired sidecar token as listed (never its secret)."""

    id: str
    service: str
    namespace: str = "default"
    #: The SPIFFE ID it is bound to (a token handed out at enrollment), else None.
    identity: str | None = None
    #: Serial (hex) of the leaf it is bound to, else None.
    serial: str | None = None
    created: str
    expires: str


class SidecarTokenList(Answer):
    """Answer of ``GET /v1/tokens/sidecar``."""

    tokens: tuple[SidecarTokenInfo, ...]


class TokenRevoked(Answer):
    """Answer of ``DELETE /v1/tokens/sidecar/{id}``."""

    id: str
    #: ``"true"`` (a string, as controld has always sent it).
    revoked: str = "true"


class RegistryTokenRequest(Request):
    """Body of ``POST /v1/tokens/registry``."""

    service: str = Field(pattern=SERVICE_PATTERN)
    #: Lifetime in seconds (the registry allows 60 s to 24 h); none: never expires.
    ttl_s: float | None = Field(default=None, ge=60, le=86400)


class RegistryToken(Answer):
    """The created registry token: ``secret_id`` goes to the sidecar (``registry.token_file``)."""

    accessor_id: str
    secret_id: str
    service: str
    expires: str | None = None


class JoinTokenRequest(Request):
    """Body of ``POST /v1/tokens/join``."""

    service: str = Field(pattern=SERVICE_PATTERN)
    namespace: str = Field(default="default", pattern=SERVICE_PATTERN)
    ttl_s: int = Field(default=DEFAULT_JOIN_TTL_S, ge=1, le=MAX_JOIN_TTL_S)


class JoinToken(Answer):
    """A single-use join token and its expiry."""

    token: str
    expires: str
