"""Errors of the workload identity: enrollment, renewal and the files kept on disk."""

from __future__ import annotations

from meshd.errors import MeshdError

__all__ = ["EnrollmentRefused", "IdentityError", "InvalidIdentity"]


class IdentityError(MeshdError):
    """Getting or keeping the workload certificate failed."""


class InvalidIdentity(IdentityError):
    """A key, leaf or bundle (on disk or from controld) is unreadable or they do not match."""


class EnrollmentRefused(IdentityError):
    """controld refused an enrollment or a renewal (4xx): the token or the proof was rejected."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
