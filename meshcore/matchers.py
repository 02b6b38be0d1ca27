"""Request conditions shared by route tables, access policies and rate limits.

Pure and synchronous. The condition semantics (path, methods, headers, query) are described
in :mod:`meshcore.routing`; this module holds the compiled checks both
:class:`~meshcore.routing.CompiledRouteTable` (inlined in its per-request loop) and
:class:`RequestMatcher` (everything else) run, and the query-string parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import unquote, unquote_to_bytes

from meshcore.model.snapshot import HeaderMatch, PathMatch, QueryMatch, RouteMatch

__all__ = [
    "HeaderCheck",
    "QueryCheck",
    "RequestMatcher",
    "compile_header",
    "compile_path",
    "compile_query",
    "header_index",
    "headers_match",
    "parse_query",
    "query_match",
]

# Header matcher kinds; small ints keep the per-request dispatch a few comparisons.
_PRESENT: Final = 0
_ABSENT: Final = 1
_EXACT: Final = 2
_PREFIX: Final = 3
_REGEX: Final = 4

#: (lower-case name, kind, bytes operand, regex operand, invert)
HeaderCheck = tuple[bytes, int, bytes, "re.Pattern[str]", bool]
#: (name, kind, str operand, regex operand)
QueryCheck = tuple[str, int, str, "re.Pattern[str]"]
_NO_PATTERN: Final = re.compile(r"(?!)")


def _encode(value: str) -> bytes:
    # surrogateescape round-trips values that came from decoding arbitrary header bytes.
    return value.encode("utf-8", "surrogateescape")


def compile_header(match: HeaderMatch) -> HeaderCheck:
    """The check tuple of a header matcher."""
    name = _encode(match.name.lower())
    if match.exact is not None:
        return (name, _EXACT, _encode(match.exact), _NO_PATTERN, match.invert)
    if match.prefix is not None:
        return (name, _PREFIX, _encode(match.prefix), _NO_PATTERN, match.invert)
    if match.regex is not None:
        return (name, _REGEX, b"", re.compile(match.regex), match.invert)
    kind = _ABSENT if match.present is False else _PRESENT
    return (name, kind, b"", _NO_PATTERN, match.invert)


def compile_query(match: QueryMatch) -> QueryCheck:
    """The check tuple of a query-parameter matcher."""
    if match.exact is not None:
        return (match.name, _EXACT, match.exact, _NO_PATTERN)
    if match.regex is not None:
        return (match.name, _REGEX, "", re.compile(match.regex))
    kind = _ABSENT if match.present is False else _PRESENT
    return (match.name, kind, "", _NO_PATTERN)


def compile_path(path: PathMatch | None) -> Callable[[str], object] | None:
    """A predicate on the path (truthy: matches), None when there is no path condition."""
    if path is None:
        return None
    if path.exact is not None:
        return path.exact.__eq__
    if path.prefix is not None:
        prefix = path.prefix

        def starts(value: str) -> bool:
            return value.startswith(prefix)

        return starts
    assert path.regex is not None  # PathMatch guarantees exactly one kind
    return re.compile(path.regex).fullmatch


def header_index(
    headers: Sequence[tuple[bytes, bytes]], wanted: frozenset[bytes]
) -> dict[bytes, bytes]:
    """Lower-case name -> value of the ``wanted`` headers; repeats joined with "," (Envoy)."""
    index: dict[bytes, bytes] = {}
    for name, value in headers:
        key = name.lower()
        if key in wanted:
            prev = index.get(key)
            index[key] = value if prev is None else prev + b"," + value
    return index


def headers_match(checks: tuple[HeaderCheck, ...], index: dict[bytes, bytes]) -> bool:
    """Whether every header check holds against a :func:`header_index`."""
    for name, kind, operand, pattern, invert in checks:
        value = index.get(name)
        if kind == _PRESENT:
            ok = value is not None
        elif kind == _ABSENT:
            ok = value is None
        elif value is None:
            ok = False
        elif kind == _EXACT:
            ok = value == operand
        elif kind == _PREFIX:
            ok = value.startswith(operand)
        else:
            ok = pattern.fullmatch(value.decode("utf-8", "surrogateescape")) is not None
        if ok is invert:
            return False
    return True


def query_match(checks: tuple[QueryCheck, ...], params: dict[str, str]) -> bool:
    """Whether every query check holds against :func:`parse_query`'s result."""
    for name, kind, operand, pattern in checks:
        value = params.get(name)
        if kind == _PRESENT:
            ok = value is not None
        elif kind == _ABSENT:
            ok = value is None
        elif value is None:
            ok = False
        elif kind == _EXACT:
            ok = value == operand
        else:
            ok = pattern.fullmatch(value) is not None
        if not ok:
            return False
    return True


def _unquote(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        if raw.find(b"%") < 0:  # not `in` (meshcore.pathnorm.normalize_target says why)
            return raw.decode("utf-8", "surrogateescape")
        return unquote_to_bytes(raw).decode("utf-8", "surrogateescape")
    return unquote(raw, errors="surrogateescape") if "%" in raw else raw


def parse_query(query: bytes | str, names: frozenset[str] | None = None) -> dict[str, str]:
    """``a=1&b&c=%41`` -> ``{"a": "1", "b": "", "c": "A"}`` (first value of a repeated name;
    empty parts, as in ``a&&b``, are skipped).

    With ``names``, only those parameters are kept (the matcher needs no others).
    """
    params: dict[str, str] = {}
    if not query:
        return params
    if isinstance(query, bytes):
        for part in query.split(b"&"):
            if not part:
                continue
            raw_name, _, raw_value = part.partition(b"=")
            name = _unquote(raw_name)
            if (names is None or name in names) and name not in params:
                params[name] = _unquote(raw_value)
    else:
        for spart in query.split("&"):
            if not spart:
                continue
            sname, _, svalue = spart.partition("=")
            name = _unquote(sname)
            if (names is None or name in names) and name not in params:
                params[name] = _unquote(svalue)
    return params


class RequestMatcher:
    """Route-match conditions on their own: methods, path, headers and query, all must hold.

    Used where a condition gates something other than a route (access-policy permissions,
    rate limits); the semantics are exactly those of a route's match.
    """

    __slots__ = (
        "_header_checks",
        "_header_names",
        "_methods",
        "_path_ok",
        "_query_checks",
        "_query_names",
    )

    def __init__(
        self,
        *,
        path: PathMatch | None = None,
        methods: Sequence[str] = (),
        headers: Sequence[HeaderMatch] = (),
        query: Sequence[QueryMatch] = (),
    ) -> None:
        self._methods: frozenset[str] | None = frozenset(m.upper() for m in methods) or None
        self._path_ok = compile_path(path)
        self._header_checks = tuple(compile_header(h) for h in headers)
        self._header_names = frozenset(check[0] for check in self._header_checks)
        self._query_checks = tuple(compile_query(q) for q in query)
        self._query_names = frozenset(check[0] for check in self._query_checks)

    @classmethod
    def from_route_match(cls, match: RouteMatch) -> RequestMatcher:
        """The matcher for a route's ``match``."""
        return cls(path=match.path, methods=match.methods, headers=match.headers, query=match.query)

    @property
    def matches_everything(self) -> bool:
        """True when there is no condition at all."""
        return (
            self._methods is None
            and self._path_ok is None
            and not self._header_checks
            and not self._query_checks
        )

    def matches(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        query: bytes | str = "",
    ) -> bool:
        """Whether the request satisfies every condition (arguments as for a route table)."""
        methods = self._methods
        if methods is not None and method not in methods and method.upper() not in methods:
            return False
        if self._path_ok is not None and not self._path_ok(path):
            return False
        checks = self._header_checks
        if checks and not headers_match(checks, header_index(headers, self._header_names)):
            return False
        qchecks = self._query_checks
        return not qchecks or query_match(qchecks, parse_query(query, self._query_names))
