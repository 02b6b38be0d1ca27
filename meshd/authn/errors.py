"""Errors of request authentication; the proxy turns them into 401 answers."""

from __future__ import annotations

from typing import Literal

from meshd.errors import MeshdError

__all__ = ["AuthnError", "InvalidReason", "JwksUnavailable", "JwtInvalid", "JwtMissing"]

#: Why a token was refused; goes into ``x-meshd-error`` / the access log as ``jwt_<reason>``.
InvalidReason = Literal[
    "malformed",
    "disallowed_algorithm",
    "unknown_kid",
    "bad_signature",
    "missing_claim",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
]


class AuthnError(MeshdError):
    """The request could not be authenticated."""


class JwtMissing(AuthnError):
    """The request carries no bearer token."""

    def __init__(self) -> None:
        super().__init__("no bearer token")


class JwtInvalid(AuthnError):
    """The bearer token was refused; ``reason`` says why (never echoes the token)."""

    def __init__(self, reason: InvalidReason) -> None:
        super().__init__(reason)
        self.reason: InvalidReason = reason


class JwksUnavailable(AuthnError):
    """No key set could be loaded yet from the JWKS source (file unreadable, URL down).

    Once a set has been loaded, later failures keep it in service instead of raising.
    """
