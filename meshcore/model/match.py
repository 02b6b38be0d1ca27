"""Request matchers shared by snapshot routes, policy resources and access rules.

They live apart from :mod:`meshcore.model.snapshot` so that :mod:`meshcore.model.policy`
can use them without an import cycle; :mod:`meshcore.model.snapshot` re-exports them.
"""

from __future__ import annotations

import re
from collections import Counter

from pydantic import Field, field_validator, model_validator

from meshcore.model.base import Frozen

HTTP_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def check_regex(value: str | None) -> str | None:
    """Reject a regular expression that does not compile."""
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
    return value


def check_methods(value: tuple[str, ...]) -> tuple[str, ...]:
    """Validate HTTP method tokens and upper-case them."""
    for method in value:
        if not HTTP_TOKEN.match(method):
            raise ValueError(f"not a valid HTTP method: {method!r}")
    return tuple(m.upper() for m in value)


def header_name(value: str) -> str:
    """Validate an HTTP header name and lower-case it."""
    if not HTTP_TOKEN.match(value):
        raise ValueError(f"not a valid header name: {value!r}")
    return value.lower()


def duplicates(names: list[str]) -> list[str]:
    """Names that occur more than once, sorted."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


class PathMatch(Frozen):
    """Exactly one of ``exact``, ``prefix`` or ``regex`` (full match)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    _check = field_validator("regex")(check_regex)

    @model_validator(mode="after")
    def _one_of(self) -> PathMatch:
        given = [v for v in (self.exact, self.prefix, self.regex) if v is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of exact, prefix, regex")
        return self


class HeaderMatch(Frozen):
    """Match one request header; with no matcher set, the header must be present."""

    name: str = Field(min_length=1)
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None
    invert: bool = False

    _check = field_validator("regex")(check_regex)

    @field_validator("name")
    @classmethod
    def _token(cls, value: str) -> str:
        return header_name(value)

    @model_validator(mode="after")
    def _at_most_one(self) -> HeaderMatch:
        given = [v for v in (self.exact, self.prefix, self.regex, self.present) if v is not None]
        if len(given) > 1:
            raise ValueError("set at most one of exact, prefix, regex, present")
        return self


class QueryMatch(Frozen):
    """Match one query parameter (decoded); with no matcher set, it must be present."""

    name: str = Field(min_length=1)
    exact: str | None = None
    regex: str | None = None
    present: bool | None = None

    _check = field_validator("regex")(check_regex)

    @model_validator(mode="after")
    def _at_most_one(self) -> QueryMatch:
        given = [v for v in (self.exact, self.regex, self.present) if v is not None]
        if len(given) > 1:
            raise ValueError("set at most one of exact, regex, present")
        return self


class RouteMatch(Frozen):
    """All given conditions must hold. An empty match matches every request."""

    path: PathMatch | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()

    _methods = field_validator("methods")(check_methods)
