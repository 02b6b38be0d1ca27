"""The one place where proxy-side failures become HTTP answers.

Every error the proxy answers itself is a :class:`~meshd.errors.ProxyError` (its reason and
the status :data:`~meshd.errors.PROXY_ERRORS` gives it) or an :class:`~meshd.http.decide.Answer`
the decision step made (rate limit, no route, redirect, fault abort, escaped slash, access
refusal). This module turns either into bytes: ``x-meshd-error: <reason>`` on every error, a
``Location`` on redirects. Nobody else picks a status.
"""

from __future__ import annotations

from meshd.errors import PROXY_ERRORS, ProxyError
from meshd.http.decide import Answer
from meshd.http.responses import location_response, synthetic_response

__all__ = ["answer_for", "error_answer", "render"]


def error_answer(exc: ProxyError) -> Answer:
    """The answer to a failure (an error type carries its reason and status)."""
    return Answer(exc.status, exc.reason, exc.detail)


def answer_for(reason: str, detail: str = "") -> Answer:
    """The answer for ``reason`` (a key of :data:`PROXY_ERRORS`)."""
    return Answer(PROXY_ERRORS[reason], reason, detail)


def render(
    answer: Answer, *, close: bool, request_id: bytes | None = None, head_only: bool = False
) -> bytes:
    """The complete response for ``answer``."""
    location = answer.location
    if location is None:
        return synthetic_response(
            answer.status,
            answer.reason,
            close=close,
            request_id=request_id,
            detail=answer.detail,
            head_only=head_only,
            extra_headers=answer.headers,
        )
    return location_response(answer.status, location, close=close, request_id=request_id)
