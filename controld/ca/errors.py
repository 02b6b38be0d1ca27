"""Errors of controld's certificate authority."""

from __future__ import annotations

from meshcore.errors import MeshError

__all__ = [
    "CAError",
    "CAFileError",
    "CSRError",
    "IdentityNotFound",
    "JoinTokenInvalid",
    "RenewalRefused",
    "RotationError",
]


class CAError(MeshError):
    """Root of the CA's errors."""


class CAFileError(CAError):
    """The CA directory or a file in it can't be read or written, is malformed, or a key
    file is accessible by group or others."""


class CSRError(CAError):
    """A certificate signing request that is malformed, badly signed or of a refused key type
    (HTTP 400)."""


class IdentityNotFound(CAError):
    """No identity (or leaf) by that id or serial (HTTP 404)."""


class JoinTokenInvalid(CAError):
    """A join token that is unknown, already used or expired (HTTP 401)."""


class RenewalRefused(CAError):
    """A renewal whose current certificate or proof of possession is not acceptable (401)."""


class RotationError(CAError):
    """A root rotation step that doesn't apply to the current state (HTTP 409)."""
