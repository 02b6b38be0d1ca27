"""Errors of the embedded registry.

Request-level errors carry the HTTP status and the plain-text body Consul answers with; the
HTTP layer turns them into responses at the edge.
"""

from __future__ import annotations

from meshcore.errors import MeshError

__all__ = [
    "BadRequest",
    "DataDirError",
    "Forbidden",
    "MethodNotAllowed",
    "NotFound",
    "RegistryError",
    "RequestError",
]


class RegistryError(MeshError):
    """Root of the registry's errors."""


class DataDirError(RegistryError):
    """The data directory can't be used; the message names the path and the reason."""


class RequestError(RegistryError):
    """A request failed; ``status`` and ``str(self)`` are the HTTP status and body."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class BadRequest(RequestError):
    """400: the request is malformed (Consul's ``BadRequestError`` / ``HTTPError{400}``)."""

    status = 400


class Forbidden(RequestError):
    """403: ACLs deny the request."""

    status = 403


class NotFound(RequestError):
    """404 with a reason body."""

    status = 404


class MethodNotAllowed(RequestError):
    """405; ``allow`` lists the methods the endpoint accepts."""

    status = 405

    def __init__(self, method: str, allow: tuple[str, ...]) -> None:
        super().__init__(f"method {method} not allowed")
        self.allow = allow
