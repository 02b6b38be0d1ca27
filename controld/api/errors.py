"""Errors of the HTTP API and their JSON form ``{"error": "...", "problems": [...]}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from controld.auth import Forbidden, Unauthenticated
from controld.store import ResourceNotFound, StoreConflict, StoreError, StoreUnavailable

__all__ = ["ApiError", "error_response", "install_error_handlers", "loc_path"]


class ApiError(Exception):
    """An error answer: HTTP ``status`` with ``{"error": message, "problems": problems}``."""

    def __init__(
        self, status: int, message: str, problems: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or []


def error_response(
    status: int,
    message: str,
    problems: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON error answer."""
    return JSONResponse(
        {"error": message, "problems": problems or []}, status_code=status, headers=headers
    )


def loc_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """A pydantic error location as a dotted path (``spec.rules.0.backends``)."""
    return ".".join(str(part) for part in loc)


_REASONS = {404: "not found", 405: "method not allowed"}


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.problems)


async def _unauthenticated(_: Request, exc: Exception) -> Response:
    return error_response(401, str(exc), headers={"WWW-Authenticate": "Bearer"})


async def _forbidden(_: Request, exc: Exception) -> Response:
    return error_response(403, str(exc))


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = _REASONS.get(exc.status_code) or str(exc.detail)
    return error_response(exc.status_code, message, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        # FastAPI prefixes locations with where the value came from ("body", "query", ...).
        {"path": loc_path(err.get("loc", ())), "message": str(err.get("msg", ""))}
        for err in exc.errors()
    ]
    return error_response(422, "invalid request", problems)


async def _store_error(_: Request, exc: Exception) -> Response:
    if isinstance(exc, ResourceNotFound):
        return error_response(404, str(exc))
    if isinstance(exc, StoreConflict):
        return error_response(409, f"conflicting change, retry: {exc}")
    if isinstance(exc, StoreUnavailable):
        return error_response(503, f"store unavailable: {exc}", headers={"Retry-After": "1"})
    return error_response(500, f"store error: {exc}")


async def _internal(_: Request, exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware sends this, then re-raises for the server to log.
    return error_response(500, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error answer JSON, including 404/405 of unknown routes and 500s."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(Unauthenticated, _unauthenticated)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(Exception, _internal)
