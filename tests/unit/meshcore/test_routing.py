"""Route matching and backend splits, tested with values."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.model import (
    Backend,
    HeaderMatch,
    PathMatch,
    QueryMatch,
    Route,
    RouteMatch,
    RouteTable,
)
from meshcore.routing import (
    CompiledRoute,
    CompiledRouteTable,
    RequestMatcher,
    catch_all,
    parse_query,
)

Headers = list[tuple[bytes, bytes]]


def table(*routes: dict[str, Any]) -> CompiledRouteTable:
    """A compiled table from route dicts; each gets a name and a backend unless given."""
    built = []
    for i, spec in enumerate(routes):
        data = {"name": f"r{i}", "backends": [{"cluster": f"c{i}"}], **spec}
        built.append(Route.model_validate(data))
    return CompiledRouteTable(RouteTable(name="t", routes=tuple(built)), rng=random.Random(1))


def matched(
    t: CompiledRouteTable,
    method: str = "GET",
    path: str = "/",
    headers: Sequence[tuple[bytes, bytes]] = (),
    query: bytes | str = "",
) -> str | None:
    route = t.match(method, path, headers, query)
    return None if route is None else route.name


PATH_CASES = [
    # (path matcher, request path, matches)
    ({"exact": "/a"}, "/a", True),
    ({"exact": "/a"}, "/a/", False),
    ({"exact": "/a"}, "/A", False),
    ({"prefix": "/api"}, "/api", True),
    ({"prefix": "/api"}, "/api/v1/users", True),
    ({"prefix": "/api"}, "/apiary", True),  # plain string prefix, like Envoy's prefix
    ({"prefix": "/api/"}, "/api", False),
    ({"prefix": "/"}, "/anything", True),
    ({"regex": r"/users/\d+"}, "/users/42", True),
    ({"regex": r"/users/\d+"}, "/users/42/x", False),  # full match, not search
    ({"regex": r"/users/\d+"}, "/v1/users/42", False),
    ({"regex": r"/(a|b)"}, "/b", True),
]


@pytest.mark.parametrize(("path_match", "path", "expected"), PATH_CASES)
def test_path_matchers(path_match: dict[str, str], path: str, expected: bool) -> None:
    t = table({"match": {"path": path_match}})
    assert (matched(t, path=path) == "r0") is expected


HEADER_CASES = [
    # (header matcher, request headers, matches)
    ({"name": "x-env", "exact": "canary"}, [(b"x-env", b"canary")], True),
    ({"name": "x-env", "exact": "canary"}, [(b"X-Env", b"canary")], True),
    ({"name": "X-ENV", "exact": "canary"}, [(b"x-env", b"canary")], True),
    ({"name": "x-env", "exact": "canary"}, [(b"x-env", b"Canary")], False),
    ({"name": "x-env", "exact": "canary"}, [], False),
    ({"name": "x-env", "exact": "canary", "invert": True}, [(b"x-env", b"prod")], True),
    ({"name": "x-env", "exact": "canary", "invert": True}, [(b"x-env", b"canary")], False),
    ({"name": "x-env", "exact": "canary", "invert": True}, [], True),
    ({"name": "x-env", "prefix": "can"}, [(b"x-env", b"canary")], True),
    ({"name": "x-env", "prefix": "can"}, [(b"x-env", b"ca")], False),
    ({"name": "x-env", "prefix": "can", "invert": True}, [(b"x-env", b"ca")], True),
    ({"name": "x-user", "regex": r"u-\d+"}, [(b"x-user", b"u-17")], True),
    ({"name": "x-user", "regex": r"u-\d+"}, [(b"x-user", b"u-17a")], False),
    ({"name": "x-user", "regex": r"u-\d+", "invert": True}, [(b"x-user", b"u-17a")], True),
    ({"name": "x-user", "regex": r"caf."}, [(b"x-user", "café".encode())], True),
    ({"name": "x-user", "regex": r"u-\d+"}, [(b"x-user", b"\xff\xfe")], False),
    ({"name": "x-user", "exact": "café"}, [(b"x-user", "café".encode())], True),
    ({"name": "x-dbg"}, [(b"x-dbg", b"")], True),
    ({"name": "x-dbg"}, [(b"x-other", b"1")], False),
    ({"name": "x-dbg", "invert": True}, [(b"x-other", b"1")], True),
    ({"name": "x-dbg", "present": True}, [(b"X-DBG", b"1")], True),
    ({"name": "x-dbg", "present": True}, [], False),
    ({"name": "x-dbg", "present": True, "invert": True}, [], True),
    ({"name": "x-dbg", "present": False}, [], True),
    ({"name": "x-dbg", "present": False}, [(b"x-dbg", b"1")], False),
    ({"name": "x-dbg", "present": False, "invert": True}, [(b"x-dbg", b"1")], True),
    # A header sent twice is matched as its values joined with "," (Envoy).
    ({"name": "x-tag", "exact": "a,b"}, [(b"x-tag", b"a"), (b"X-Tag", b"b")], True),
    ({"name": "x-tag", "exact": "a"}, [(b"x-tag", b"a"), (b"x-tag", b"b")], False),
    ({"name": "x-tag", "prefix": "a,"}, [(b"x-tag", b"a"), (b"x-tag", b"b")], True),
    (
        {"name": "x-tag", "regex": r"a,b,c"},
        [(b"x-tag", b"a"), (b"x-tag", b"b"), (b"x-tag", b"c")],
        True,
    ),
    ({"name": "x-tag", "exact": "b"}, [(b"x-tag", b"b"), (b"x-other", b"a")], True),
]


@pytest.mark.parametrize(("header_match", "headers", "expected"), HEADER_CASES)
def test_header_matchers(header_match: dict[str, Any], headers: Headers, expected: bool) -> None:
    t = table({"match": {"headers": [header_match]}})
    assert (matched(t, headers=headers) == "r0") is expected


def test_all_header_matchers_must_hold() -> None:
    t = table({"match": {"headers": [{"name": "a", "exact": "1"}, {"name": "b", "present": True}]}})
    assert matched(t, headers=[(b"a", b"1"), (b"b", b"")]) == "r0"
    assert matched(t, headers=[(b"a", b"1")]) is None
    assert matched(t, headers=[(b"b", b""), (b"a", b"2")]) is None


@pytest.mark.parametrize(
    ("methods", "method", "expected"),
    [
        ([], "GET", True),
        ([], "PURGE", True),
        (["GET", "HEAD"], "GET", True),
        (["GET", "HEAD"], "HEAD", True),
        (["GET", "HEAD"], "POST", False),
        (["get"], "GET", True),  # the model upper-cases configured methods
        (["GET"], "get", True),  # compared upper-case
        (["POST"], "post", True),
    ],
)
def test_methods(methods: list[str], method: str, expected: bool) -> None:
    t = table({"match": {"methods": methods, "path": {"prefix": "/"}}})
    assert (matched(t, method=method) == "r0") is expected


def test_all_conditions_combined() -> None:
    t = table(
        {
            "match": {
                "methods": ["POST"],
                "path": {"prefix": "/api/"},
                "headers": [{"name": "content-type", "prefix": "application/json"}],
            }
        }
    )
    json_ct = [(b"Content-Type", b"application/json; charset=utf-8")]
    assert matched(t, "POST", "/api/x", json_ct) == "r0"
    assert matched(t, "GET", "/api/x", json_ct) is None
    assert matched(t, "POST", "/web/x", json_ct) is None
    assert matched(t, "POST", "/api/x", [(b"content-type", b"text/plain")]) is None


def test_first_matching_route_wins() -> None:
    t = table(
        {"match": {"path": {"exact": "/api/health"}}},
        {"match": {"path": {"prefix": "/api/"}, "headers": [{"name": "x-canary"}]}},
        {"match": {"path": {"prefix": "/api/"}}},
        {},
        {"match": {"path": {"prefix": "/never"}}},  # after a catch-all: unreachable
    )
    assert matched(t, path="/api/health", headers=[(b"x-canary", b"1")]) == "r0"
    assert matched(t, path="/api/users", headers=[(b"x-canary", b"1")]) == "r1"
    assert matched(t, path="/api/users") == "r2"
    assert matched(t, path="/other") == "r3"
    assert matched(t, path="/never") == "r3"
    assert [r.name for r in t.routes] == ["r0", "r1", "r2", "r3", "r4"]


def test_no_route_matches() -> None:
    t = table({"match": {"path": {"prefix": "/api/"}}})
    assert t.match("GET", "/", []) is None
    assert CompiledRouteTable(RouteTable(name="empty")).match("GET", "/", []) is None


def test_path_is_matched_without_query() -> None:
    # The proxy strips the query string; the matcher sees only the path.
    t = table({"match": {"path": {"exact": "/search"}}}, {"match": {"path": {"regex": "/q.*"}}})
    assert matched(t, path="/search") == "r0"
    assert matched(t, path="/search?q=1") is None
    assert matched(t, path="/q") == "r1"


QUERY_CASES = [
    # (query matcher, raw query, matches)
    ({"name": "v", "exact": "2"}, "v=2", True),
    ({"name": "v", "exact": "2"}, "a=1&v=2&b", True),
    ({"name": "v", "exact": "2"}, "v=20", False),
    ({"name": "v", "exact": "2"}, "V=2", False),  # names are case-sensitive
    ({"name": "v", "exact": "2"}, "", False),
    ({"name": "v", "exact": "2"}, "v=2&v=3", True),  # the first value counts
    ({"name": "v", "exact": "2"}, "v=3&v=2", False),
    ({"name": "v", "exact": ""}, "v", True),  # no "=": present, empty value
    ({"name": "v", "exact": ""}, "v=", True),
    ({"name": "q", "exact": "a b"}, "q=a%20b", True),  # percent-decoded
    ({"name": "q", "exact": "a+b"}, "q=a+b", True),  # "+" stays "+"
    ({"name": "q", "exact": "café"}, "q=caf%C3%A9", True),
    ({"name": "a b", "exact": "1"}, "a%20b=1", True),
    ({"name": "q", "exact": "x=y"}, "q=x=y", True),  # split on the first "=" only
    ({"name": "id", "regex": r"\d+"}, "id=42", True),
    ({"name": "id", "regex": r"\d+"}, "id=42x", False),  # full match
    ({"name": "id", "regex": r"\d+"}, "other=42", False),
    ({"name": "id", "regex": r".*"}, "id=%FF", True),  # undecodable bytes don't crash
    ({"name": "debug"}, "debug", True),
    ({"name": "debug"}, "debug=0", True),
    ({"name": "debug"}, "x=debug", False),
    ({"name": "debug", "present": True}, "a&debug=1", True),
    ({"name": "debug", "present": True}, "", False),
    ({"name": "debug", "present": False}, "", True),
    ({"name": "debug", "present": False}, "debug", False),
]


@pytest.mark.parametrize(("query_match", "query", "expected"), QUERY_CASES)
def test_query_matchers(query_match: dict[str, Any], query: str, expected: bool) -> None:
    t = table({"match": {"query": [query_match]}})
    assert (matched(t, query=query) == "r0") is expected
    assert (matched(t, query=query.encode()) == "r0") is expected


def test_query_matchers_all_must_hold_with_other_conditions() -> None:
    t = table(
        {
            "match": {
                "path": {"prefix": "/s"},
                "query": [{"name": "a", "exact": "1"}, {"name": "b"}],
            }
        },
        {"match": {"query": [{"name": "a", "exact": "1"}]}},
    )
    assert matched(t, path="/search", query=b"b&a=1") == "r0"
    assert matched(t, path="/other", query=b"b&a=1") == "r1"
    assert matched(t, path="/search", query=b"a=1") == "r1"
    assert matched(t, path="/search", query=b"a=2&b") is None


def test_query_defaults_to_empty_for_existing_callers() -> None:
    t = table({"match": {"query": [{"name": "v"}]}}, {})
    assert t.match("GET", "/", []) is t.routes[1]
    assert t.match("GET", "/", [], "v=1") is t.routes[0]


def test_query_only_route_is_not_a_catch_all() -> None:
    t = table({"match": {"query": [{"name": "v", "present": False}]}}, {"name": "last"})
    assert not t.routes[0].is_catch_all
    assert matched(t, query="v=1") == "last"


def test_parse_query() -> None:
    assert parse_query("") == {}
    assert parse_query(b"a=1&b&c=%41&a=2&&=x") == {"a": "1", "b": "", "c": "A", "": "x"}
    assert parse_query("a=1&b=2", frozenset({"b"})) == {"b": "2"}


@given(query=st.binary(max_size=60))
def test_parse_query_accepts_any_bytes(query: bytes) -> None:
    params = parse_query(query)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


def test_request_matcher_applies_route_semantics() -> None:
    m = RequestMatcher(
        path=PathMatch(prefix="/api/"),
        methods=("get",),
        headers=(HeaderMatch(name="X-Env", exact="canary"),),
        query=(QueryMatch(name="v", exact="2"),),
    )
    assert not m.matches_everything
    assert m.matches("GET", "/api/x", [(b"x-env", b"canary")], "v=2")
    assert m.matches("get", "/api/x", [(b"X-ENV", b"canary")], b"v=2")
    assert not m.matches("POST", "/api/x", [(b"x-env", b"canary")], "v=2")
    assert not m.matches("GET", "/web", [(b"x-env", b"canary")], "v=2")
    assert not m.matches("GET", "/api/x", [], "v=2")
    assert not m.matches("GET", "/api/x", [(b"x-env", b"canary")])
    everything = RequestMatcher.from_route_match(RouteMatch())
    assert everything.matches_everything
    assert everything.matches("DELETE", "/x", [])


@given(
    method=st.sampled_from(["GET", "POST", "put"]),
    path=st.sampled_from(["/", "/api/v1", "/users/7", "/x"]),
    headers=st.lists(
        st.tuples(st.sampled_from([b"x-env", b"X-Env", b"y"]), st.sampled_from([b"a", b"b"])),
        max_size=3,
    ),
    query=st.sampled_from(["", "v=1", "v=2&w", "w=1"]),
)
def test_request_matcher_agrees_with_route_table(
    method: str, path: str, headers: Headers, query: str
) -> None:
    spec = {
        "methods": ["GET", "PUT"],
        "path": {"regex": "/(api|users)/.*"},
        "headers": [{"name": "x-env", "exact": "a"}],
        "query": [{"name": "v", "regex": "[12]"}],
    }
    t = table({"match": spec})
    m = RequestMatcher.from_route_match(RouteMatch.model_validate(spec))
    assert m.matches(method, path, headers, query) is (
        matched(t, method, path, headers, query) == "r0"
    )


def test_route_attributes() -> None:
    t = table({"name": "api", "timeout_s": 2.5, "match": {"path": {"prefix": "/"}}})
    route = t.match("GET", "/", [])
    assert isinstance(route, CompiledRoute)
    assert route.name == "api"
    assert route.timeout_s == 2.5
    assert route.route is t.table.routes[0]
    assert route.pick_cluster() == "c0"


def test_catch_all_table() -> None:
    t = catch_all("payments", name="pay", timeout_s=3.0)
    route = t.match("DELETE", "/x/y", [(b"a", b"b")])
    assert route is not None
    assert route.name == "pay"
    assert route.timeout_s == 3.0
    assert route.pick_cluster() == "payments"
    assert catch_all("c").match("GET", "/", []) is not None


@given(
    method=st.sampled_from(["GET", "POST", "get", "PATCH", "X-CUSTOM"]),
    path=st.text(),
    headers=st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=8),
)
def test_catch_all_always_matches(method: str, path: str, headers: Headers) -> None:
    t = catch_all("backend")
    route = t.match(method, path, headers)
    assert route is not None
    assert route.pick_cluster() == "backend"


class CountingRandom(random.Random):
    """A seeded generator that counts draws of random()."""

    calls = 0

    def random(self) -> float:
        self.calls += 1
        return super().random()


def split_route(*weights: tuple[str, int], rng: random.Random) -> CompiledRoute:
    backends = tuple(Backend(cluster=c, weight=w) for c, w in weights)
    route = Route(name="split", backends=backends)
    compiled = CompiledRouteTable(RouteTable(name="t", routes=(route,)), rng=rng)
    return compiled.routes[0]


def test_weighted_split_distribution() -> None:
    route = split_route(("a", 70), ("b", 20), ("c", 10), rng=random.Random(7))
    picks = 20_000
    counts = Counter(route.pick_cluster() for _ in range(picks))
    for cluster, share in (("a", 0.7), ("b", 0.2), ("c", 0.1)):
        assert abs(counts[cluster] / picks - share) < 0.02, counts


def test_zero_weight_backends_never_chosen() -> None:
    route = split_route(("off", 0), ("a", 1), ("off2", 0), ("b", 3), rng=random.Random(3))
    counts = Counter(route.pick_cluster() for _ in range(5_000))
    assert set(counts) == {"a", "b"}
    assert abs(counts["b"] / 5_000 - 0.75) < 0.03, counts


def test_single_live_backend_skips_the_rng() -> None:
    rng = CountingRandom(5)
    route = split_route(("a", 1), ("dark", 0), rng=rng)
    assert {route.pick_cluster() for _ in range(100)} == {"a"}
    assert rng.calls == 0


def test_extreme_draws_stay_in_range() -> None:
    class Edge(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__(0)
            self.value = value

        def random(self) -> float:
            return self.value

    assert split_route(("a", 1), ("b", 1), rng=Edge(0.0)).pick_cluster() == "a"
    assert split_route(("a", 1), ("b", 1), rng=Edge(0.4999)).pick_cluster() == "a"
    assert split_route(("a", 1), ("b", 1), rng=Edge(0.5)).pick_cluster() == "b"
    top = 1.0 - 2.0**-53
    assert split_route(("a", 3), ("b", 7), ("z", 0), rng=Edge(top)).pick_cluster() == "b"


def test_redirect_route_without_backends_picks_no_cluster() -> None:
    t = table({"name": "moved", "backends": [], "redirect": {"path": "/new"}})
    route = t.match("GET", "/", [])
    assert route is not None and route.route.redirect is not None
    assert route.pick_cluster() == ""
