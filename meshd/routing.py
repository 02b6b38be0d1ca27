"""Route matching: a :class:`~meshcore.model.RouteTable` compiled into a per-request matcher.

Sans-IO and synchronous. The HTTP layer calls :meth:`CompiledRouteTable.match` once per request
with the method, the path (query string already stripped) and the raw header pairs, then
:meth:`CompiledRoute.pick_cluster` to split traffic between the route's backends.

Matching semantics:

* Routes are tried in order; the first whose every condition holds wins.
* Path: ``exact`` (equality), ``prefix`` (``str.startswith``), ``regex`` (``re.fullmatch``).
* Methods: compared upper-case; an empty list means any method.
* Headers: names compare case-insensitively. A header sent several times is matched as its
  values joined with ``","`` (as Envoy does). Values are compared as bytes against the
  UTF-8 encoding of ``exact``/``prefix``; a ``regex`` sees the value decoded as UTF-8
  (undecodable bytes become surrogate escapes, so they never match a printable pattern).
  ``present: true`` or no matcher at all: the header must be present; ``present: false``:
  it must be absent. ``invert`` negates the matcher's result, so an absent header *does*
  match an inverted ``exact``/``prefix``/``regex`` (unlike Envoy's default, which never
  matches an absent header with a value matcher).
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Final

from meshcore.model import Backend, HeaderMatch, Route, RouteMatch, RouteTable

__all__ = ["CompiledRoute", "CompiledRouteTable", "catch_all"]

# Header matcher kinds; small ints keep the per-request dispatch a few comparisons.
_PRESENT: Final = 0
_ABSENT: Final = 1
_EXACT: Final = 2
_PREFIX: Final = 3
_REGEX: Final = 4

#: (lower-case name, kind, bytes operand, regex operand, invert)
_HeaderCheck = tuple[bytes, int, bytes, "re.Pattern[str]", bool]
_NO_PATTERN: Final = re.compile(r"(?!)")


def _encode(value: str) -> bytes:
    # surrogateescape round-trips values that came from decoding arbitrary header bytes.
    return value.encode("utf-8", "surrogateescape")


def _compile_header(match: HeaderMatch) -> _HeaderCheck:
    name = _encode(match.name.lower())
    if match.exact is not None:
        return (name, _EXACT, _encode(match.exact), _NO_PATTERN, match.invert)
    if match.prefix is not None:
        return (name, _PREFIX, _encode(match.prefix), _NO_PATTERN, match.invert)
    if match.regex is not None:
        return (name, _REGEX, b"", re.compile(match.regex), match.invert)
    kind = _ABSENT if match.present is False else _PRESENT
    return (name, kind, b"", _NO_PATTERN, match.invert)


def _compile_path(match: RouteMatch) -> Callable[[str], object] | None:
    path = match.path
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


class CompiledRoute:
    """One route, ready to test against requests and to split traffic between its backends."""

    __slots__ = (
        "_clusters",
        "_cumulative",
        "_header_checks",
        "_last",
        "_methods",
        "_path_ok",
        "_rng",
        "_single",
        "_total",
        "name",
        "route",
        "timeout_s",
    )

    route: Route
    name: str
    timeout_s: float

    def __init__(self, route: Route, rng: random.Random) -> None:
        self.route = route
        self.name = route.name
        self.timeout_s = route.timeout_s
        match = route.match
        self._methods: frozenset[str] | None = frozenset(match.methods) or None
        self._path_ok = _compile_path(match)
        self._header_checks: tuple[_HeaderCheck, ...] = tuple(
            _compile_header(h) for h in match.headers
        )
        live: list[Backend] = [b for b in route.backends if b.weight > 0]
        self._clusters: tuple[str, ...] = tuple(b.cluster for b in live)
        cumulative: list[int] = []
        total = 0
        for backend in live:
            total += backend.weight
            cumulative.append(total)
        self._cumulative: tuple[int, ...] = tuple(cumulative)
        self._total = float(total)
        self._last = len(live) - 1
        # Route validation guarantees some weight > 0; several backends may name one cluster.
        distinct = set(self._clusters)
        self._single: str | None = self._clusters[0] if len(distinct) == 1 else None
        self._rng = rng

    @property
    def is_catch_all(self) -> bool:
        """True when the route matches every request (its match is empty)."""
        return self._methods is None and self._path_ok is None and not self._header_checks

    def pick_cluster(self) -> str:
        """The cluster for one request, chosen by backend weight (backends of weight 0 never)."""
        single = self._single
        if single is not None:
            return single
        point = self._rng.random() * self._total
        # hi= guards against float rounding ever landing on the total itself.
        return self._clusters[bisect_right(self._cumulative, point, 0, self._last)]

    def __repr__(self) -> str:
        return f"CompiledRoute({self.name!r})"


class CompiledRouteTable:
    """A route table compiled for matching; immutable once built, rebuilt per snapshot."""

    __slots__ = ("_fallback", "_header_names", "_routes", "routes", "table")

    table: RouteTable
    #: Every route of the table, in order (including ones a catch-all makes unreachable).
    routes: tuple[CompiledRoute, ...]

    def __init__(self, table: RouteTable, *, rng: random.Random | None = None) -> None:
        self.table = table
        shared_rng = rng if rng is not None else random.Random()  # noqa: S311 - not crypto
        self.routes = tuple(CompiledRoute(route, shared_rng) for route in table.routes)
        # Routes after the first catch-all can never win; the catch-all itself needs no test.
        checked: list[CompiledRoute] = []
        fallback: CompiledRoute | None = None
        for compiled in self.routes:
            if compiled.is_catch_all:
                fallback = compiled
                break
            checked.append(compiled)
        self._routes: tuple[CompiledRoute, ...] = tuple(checked)
        self._fallback = fallback
        self._header_names: frozenset[bytes] = frozenset(
            check[0] for compiled in checked for check in compiled._header_checks
        )

    def match(
        self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> CompiledRoute | None:
        """The first route matching the request, or None.

        ``path`` excludes the query string; ``headers`` are the raw (name, value) pairs.
        """
        index: dict[bytes, bytes] | None = None
        upper: str | None = None
        for compiled in self._routes:
            methods = compiled._methods
            if methods is not None and method not in methods:
                if upper is None:
                    upper = method.upper()
                if upper not in methods:
                    continue
            path_ok = compiled._path_ok
            if path_ok is not None and not path_ok(path):
                continue
            checks = compiled._header_checks
            if checks:
                if index is None:
                    index = self._index(headers)
                if not _headers_match(checks, index):
                    continue
            return compiled
        return self._fallback

    def _index(self, headers: Sequence[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
        # Only the headers some matcher looks at; repeats joined with "," as Envoy does.
        wanted = self._header_names
        index: dict[bytes, bytes] = {}
        for name, value in headers:
            key = name.lower()
            if key in wanted:
                prev = index.get(key)
                index[key] = value if prev is None else prev + b"," + value
        return index

    def __repr__(self) -> str:
        return f"CompiledRouteTable({self.table.name!r}, routes={len(self.routes)})"


def _headers_match(checks: tuple[_HeaderCheck, ...], index: dict[bytes, bytes]) -> bool:
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


def catch_all(
    cluster: str, *, name: str = "default", timeout_s: float = 15.0
) -> CompiledRouteTable:
    """A table with one route that sends every request to ``cluster``."""
    route = Route(name=name, backends=(Backend(cluster=cluster),), timeout_s=timeout_s)
    return CompiledRouteTable(RouteTable(name=name, routes=(route,)))
