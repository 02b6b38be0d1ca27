"""Route matching: a :class:`~meshcore.model.RouteTable` compiled into a per-request matcher.

Pure, sans-IO and synchronous (shared by meshd's proxy and controld's ``explain``). The HTTP
layer calls :meth:`CompiledRouteTable.match` once per request with the method, the path (query
string stripped), the raw header pairs and optionally the raw query string, then
:meth:`CompiledRoute.pick_cluster` to split traffic between the route's backends.
:class:`RequestMatcher` (from :mod:`meshcore.matchers`) applies the same conditions outside a
route table (access-policy permissions, rate-limit matches).

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
* Query: the raw query string (without ``?``) is split on ``&``; each part on its first ``=``
  (a part without ``=`` is a parameter with an empty value). Names and values are
  percent-decoded as UTF-8 (``+`` stays ``+``); names are case-sensitive; a parameter given
  several times is matched by its first value. ``exact`` is equality, ``regex`` a full match,
  ``present: true`` or no matcher: the parameter must be present, ``present: false``: absent.
  The query is parsed only when a route that has query matchers is reached.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence

from meshcore.matchers import (
    HeaderCheck,
    QueryCheck,
    RequestMatcher,
    compile_header,
    compile_path,
    compile_query,
    header_index,
    headers_match,
    parse_query,
    query_match,
)
from meshcore.model.snapshot import Backend, Route, RouteTable

# RequestMatcher and parse_query are re-exported: callers match requests through this module.
__all__ = ["CompiledRoute", "CompiledRouteTable", "RequestMatcher", "catch_all", "parse_query"]


class CompiledRoute:
    """One route, ready to test against requests and to split traffic between its backends."""

    __slots__ = (
        "_clusters",
        "_cumulative",
        "_extra",
        "_header_checks",
        "_last",
        "_methods",
        "_path_ok",
        "_query_checks",
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
        self._path_ok = compile_path(match.path)
        self._header_checks: tuple[HeaderCheck, ...] = tuple(
            compile_header(h) for h in match.headers
        )
        self._query_checks: tuple[QueryCheck, ...] = tuple(compile_query(q) for q in match.query)
        self._extra: tuple[tuple[HeaderCheck, ...], tuple[QueryCheck, ...]] | None = (
            (self._header_checks, self._query_checks)
            if self._header_checks or self._query_checks
            else None
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
        if not live:
            # Only a redirect route has no backends; it answers before any pick.
            self._single = ""
        self._rng = rng

    @property
    def is_catch_all(self) -> bool:
        """True when the route matches every request (its match is empty)."""
        return (
            self._methods is None
            and self._path_ok is None
            and not self._header_checks
            and not self._query_checks
        )

    def pick_cluster(self) -> str:
        """The cluster for one request, chosen by backend weight (backends of weight 0 never).

        ``""`` for a route without backends (a redirect, which never forwards).
        """
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

    __slots__ = ("_fallback", "_header_names", "_query_names", "_routes", "routes", "table")

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
        self._query_names: frozenset[str] = frozenset(
            check[0] for compiled in checked for check in compiled._query_checks
        )

    def match(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        query: bytes | str = "",
    ) -> CompiledRoute | None:
        """The first route matching the request, or None.

        ``path`` excludes the query string; ``headers`` are the raw (name, value) pairs;
        ``query`` is the raw query string without the ``?`` (only routes with query matchers
        look at it).
        """
        index: dict[bytes, bytes] | None = None
        params: dict[str, str] | None = None
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
            # One test for both kinds: a route without header or query matchers pays no more
            # than it did before query matching existed.
            extra = compiled._extra
            if extra is not None:
                checks, qchecks = extra
                if checks:
                    if index is None:
                        index = self._index(headers)
                    if not headers_match(checks, index):
                        continue
                if qchecks:
                    if params is None:
                        params = parse_query(query, self._query_names)
                    if not query_match(qchecks, params):
                        continue
            return compiled
        return self._fallback

    def _index(self, headers: Sequence[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
        return header_index(headers, self._header_names)

    def __repr__(self) -> str:
        return f"CompiledRouteTable({self.table.name!r}, routes={len(self.routes)})"


def catch_all(
    cluster: str, *, name: str = "default", timeout_s: float = 15.0
) -> CompiledRouteTable:
    """A table with one route that sends every request to ``cluster``."""
    route = Route(name=name, backends=(Backend(cluster=cluster),), timeout_s=timeout_s)
    return CompiledRouteTable(RouteTable(name=name, routes=(route,)))
