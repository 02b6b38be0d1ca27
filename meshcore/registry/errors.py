"""Errors of the registry client, rooted in :class:`meshcore.errors.MeshError`.

Callers usually need one distinction: :class:`RegistryUnavailable` means "try again later"
(nothing answered, the request timed out, or the registry failed with a 5xx); every other
:class:`RegistryError` means the registry understood the request and refused it.
"""

from __future__ import annotations

from meshcore.errors import MeshError

__all__ = [
    "RegistryError",
    "RegistryNotFound",
    "RegistryPermissionDenied",
    "RegistryProtocolError",
    "RegistryRequestError",
    "RegistryUnavailable",
]


class RegistryError(MeshError):
    """Base of every error the registry client raises."""


class RegistryUnavailable(RegistryError):
    """No usable answer: connection refused or reset, timeout, or a 5xx from the registry.

    ``status`` is the HTTP status when the registry answered with a 5xx, else ``None``.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RegistryRequestError(RegistryError):
    """The registry rejected the request with a 4xx status (``status``)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RegistryPermissionDenied(RegistryRequestError):
    """401 or 403: the ACL token is missing, unknown or lacks the permission."""


class RegistryNotFound(RegistryRequestError):
    """404 where the caller needed the object to exist."""


class RegistryProtocolError(RegistryError):
    """The registry answered with something that is not what the Consul API promises."""
