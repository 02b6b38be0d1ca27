"""Errors of the HTTP API and their JSON form ``{"error": "...", "problems": [...]}``
(:class:`meshcore.api.errors.ErrorBody`, which the clients parse)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from controld.auth import Forbidden, Unauthenticated
from controld.store import ResourceNotFound, StoreConflict, StoreError, StoreUnavailable
from meshcore.api.errors import ErrorBody, Problem, loc_path

__all__ = ["ApiError", "ProblemLike", "error_response", "install_error_handlers", "loc_path"]

#: A problem as a model, or as its JSON mapping (``path``, ``message``, ...).
ProblemLike = Problem | Mapping[str, Any]


def _problems(problems: Sequence[ProblemLike] | None) -> tuple[Problem, ...]:
    return tuple(
        p if isinstance(p, Problem) else Problem.model_validate(dict(p)) for p in problems or ()
    )


class ApiError(Exception):
    """An error answer: HTTP ``status`` with ``{"error": message, "problems": problems}``."""

    def __init__(
        self, status: int, message: str, problems: Sequence[ProblemLike] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = _problems(problems)


def error_response(
    status: int,
    message: str,
    problems: Sequence[ProblemLike] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON error answer (:class:`~meshcore.api.errors.ErrorBody`)."""
    body = ErrorBody(error=message, problems=_problems(problems))
    return JSONResponse(body.as_json(), status_code=status, headers=headers)


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
        Problem(path=loc_path(err.get("loc", ())), message=str(err.get("msg", "")))
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
