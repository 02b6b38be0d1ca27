"""The error shape of controld's API: the JSON body of every 4xx and 5xx answer.

``{"error": "<message>", "problems": [{"path": "spec.rules.0.backends", "message": "..."}]}``

``problems`` is empty except for invalid requests (422): FastAPI's validation names where the
bad value came from (``body.service``, ``query.limit``); invalid policy resources add the
0-based ``document`` of the request, the resource's ``kind`` and ``name`` (``document`` is
null for a resource already stored that the change would break).

:func:`error_of` reads an error answer the way both clients (``meshctl`` and the dashboard)
need it: leniently, since a proxy or a non-controld server in between may answer with
anything.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from meshcore.api.base import JSON_OBJECT, Answer, JsonObject
from meshcore.errors import MeshError

__all__ = [
    "ErrorBody",
    "Problem",
    "UnexpectedAnswer",
    "error_of",
    "loc_path",
    "parse_answer",
    "parse_object",
]

M = TypeVar("M", bound=BaseModel)

#: Longest message kept from a non-JSON error answer.
MAX_TEXT_MESSAGE = 200


class Problem(Answer):
    """One thing wrong with a request: a dotted field ``path`` and a ``message``.

    ``document``, ``kind`` and ``name`` are sent only for policy resources; :meth:`as_json`
    sends exactly the fields given (``document`` may be given as null).
    """

    document: int | None = None
    kind: str | None = None
    name: str | None = None
    path: str = ""
    message: str = ""

    def as_json(self) -> dict[str, Any]:
        """The problem as controld sends it (only the fields it was given)."""
        return self.model_dump(mode="json", exclude_unset=True)


class ErrorBody(Answer):
    """The JSON body of an error answer."""

    error: str
    problems: tuple[Problem, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The body as controld sends it (``problems`` always present)."""
        return {"error": self.error, "problems": [p.as_json() for p in self.problems]}


def loc_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """A pydantic error location as a dotted path (``spec.rules.0.backends``)."""
    return ".".join(str(part) for part in loc)


def _problems(raw: object) -> tuple[Problem, ...]:
    """The well-formed problems of ``raw`` (a malformed one is left out, not fatal)."""
    if not isinstance(raw, list):
        return ()
    found = []
    for item in raw:
        try:
            found.append(Problem.model_validate(item))
        except ValidationError:
            continue
    return tuple(found)


def error_of(content: bytes, reason: str = "") -> ErrorBody:
    """The :class:`ErrorBody` of an error answer's ``content``.

    controld's JSON shape gives its ``error`` and ``problems``; another JSON object its
    ``detail`` (a plain FastAPI or Starlette answer); anything else the first line of the
    text, else ``reason`` (the HTTP reason phrase).
    """
    fallback = reason or "error"
    try:
        body = json.loads(content)
    except ValueError:
        text = content.decode("utf-8", "replace").strip()
        return ErrorBody(error=text.splitlines()[0][:MAX_TEXT_MESSAGE] if text else fallback)
    if not isinstance(body, dict):
        return ErrorBody(error=fallback)
    message = body.get("error", body.get("detail"))
    return ErrorBody(
        error=fallback if message is None else str(message),
        problems=_problems(body.get("problems")),
    )


class UnexpectedAnswer(MeshError):
    """A success answer that doesn't have the shape the API promises (a different server, a
    proxy in between, or a controld of another version); the message says where."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"unexpected answer from controld to {path}: {detail}")
        self.path = path
        self.detail = detail


def _first(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    first = errors[0]
    where = loc_path(first.get("loc", ()))
    text = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
    return text + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")


def parse_answer(model: type[M], path: str, body: object) -> M:
    """``body`` (decoded JSON) as ``model``; :class:`UnexpectedAnswer` naming ``path`` and the
    first bad field when it isn't one."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise UnexpectedAnswer(path, _first(exc)) from exc


def parse_object(path: str, body: object) -> JsonObject:
    """``body`` when it is a JSON object (an answer not modelled field by field), else
    :class:`UnexpectedAnswer`."""
    try:
        return JSON_OBJECT.validate_python(body)
    except ValidationError as exc:
        raise UnexpectedAnswer(path, "not a JSON object") from exc
