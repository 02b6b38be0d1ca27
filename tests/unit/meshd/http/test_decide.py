"""The decision step with values only: a listener's routes and policies in, a plan out."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError

from meshcore.model.policy import HeaderMutation
from meshcore.model.snapshot import RouteTable
from meshcore.routing import CompiledRouteTable
from meshd.http.config import HttpListenerConfig, RateLimitCheck
from meshd.http.decide import Answer, HeaderEdit, Plan, check_escaped_slashes, decide

pytestmark = pytest.mark.timeout(30)


def _config(
    *routes: dict[str, Any], rate_limiter: RateLimitCheck | None = None
) -> HttpListenerConfig:
    table = RouteTable.model_validate({"name": "main", "routes": list(routes)})
    return HttpListenerConfig(
        name="out",
        direction="outbound",
        local_service="web",
        routes=CompiledRouteTable(table, rng=random.Random(1)),
        clusters={},
        idle_timeout_s=60,
        headers_timeout_s=10,
        max_head_bytes=65536,
        max_headers=100,
        max_response_head_bytes=65536,
        max_response_headers=100,
        max_requests_per_connection=1000,
        rate_limiter=rate_limiter,
    )


def _route(name: str = "r", **fields: Any) -> dict[str, Any]:
    return {"name": name, "backends": [{"cluster": "up"}], **fields}


def _decide(
    cfg: HttpListenerConfig,
    target: bytes = b"/",
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    method: bytes = b"GET",
    rng: random.Random | None = None,
) -> Plan | Answer:
    hdrs = headers if headers is not None else [(b"Host", b"api.test")]
    return decide(
        cfg,
        method=method,
        target=target,
        headers=hdrs,
        host=b"api.test",
        peer_identity=None,
        rng=rng or random.Random(7),
    )


class _Rng(random.Random):
    """Always the same draw."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_route_without_policy_gets_the_same_static_plan() -> None:
    cfg = _config(_route(timeout_s=3, match={"path": {"prefix": "/a"}}))
    first = _decide(cfg, b"/a/x")
    second = _decide(cfg, b"/a/y")
    assert isinstance(first, Plan)
    assert first is second  # nothing allocated per request
    assert (first.cluster, first.timeout_s, first.target, first.headers) == ("up", 3, None, None)
    assert first.retry is None and first.mirror is None and first.abort is None


def test_no_route_and_redirect_are_answers() -> None:
    cfg = _config(
        _route(
            "old",
            match={"path": {"prefix": "/old"}},
            redirect={"path": "/new", "status": 301},
            backends=[],
        ),
        _route("a", match={"path": {"prefix": "/a"}}),
    )
    answer = _decide(cfg, b"/nothing")
    assert answer == Answer(404, "no_route", "no route matches")
    redirect = _decide(cfg, b"/old/x?q=1")
    assert isinstance(redirect, Answer)
    assert (redirect.status, redirect.reason, redirect.route) == (301, "", "old")
    assert redirect.location == b"http://api.test/new?q=1"


class _Limiter:
    def __init__(self, wait: float | None) -> None:
        self.wait = wait
        self.calls: list[tuple[bytes | None, bytes, bytes]] = []

    def check(
        self,
        *,
        source: bytes | None,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> float | None:
        self.calls.append((source, method, path))
        return self.wait


@pytest.mark.parametrize(("wait", "header"), [(0.2, b"1"), (1.0, b"1"), (2.01, b"3")])
def test_rate_limited_answers_429_with_retry_after(wait: float, header: bytes) -> None:
    limiter = _Limiter(wait)
    cfg = _config(_route(), rate_limiter=limiter)
    answer = _decide(cfg, b"/p?x=1", method=b"POST")
    assert isinstance(answer, Answer)
    assert (answer.status, answer.reason) == (429, "rate_limited")
    assert answer.headers == ((b"retry-after", header),)
    assert limiter.calls == [(None, b"POST", b"/p?x=1")]


def test_rate_limit_passes() -> None:
    cfg = _config(_route(), rate_limiter=_Limiter(None))
    assert isinstance(_decide(cfg), Plan)


def test_fault_abort_and_delay_by_percent() -> None:
    fault = {
        "delay": {"percent": 50, "fixed_delay_s": 0.5},
        "abort": {"percent": 10, "status": 503},
    }
    cfg = _config(_route(fault=fault))
    low = _decide(cfg, rng=_Rng(0.05))
    assert isinstance(low, Plan)
    assert low.delay_s == 0.5
    assert low.abort == Answer(503, "fault_abort", "fault injected")
    mid = _decide(cfg, rng=_Rng(0.3))
    assert isinstance(mid, Plan) and mid.delay_s == 0.5 and mid.abort is None
    high = _decide(cfg, rng=_Rng(0.9))
    assert isinstance(high, Plan) and high.delay_s == 0 and high.abort is None


def test_fault_percent_100_and_0() -> None:
    always = _config(_route(fault={"abort": {"percent": 100, "status": 418}}))
    never = _config(_route(fault={"abort": {"percent": 0, "status": 418}}))
    for draw in (0.0, 0.5, 0.999999):
        plan = _decide(always, rng=_Rng(draw))
        assert isinstance(plan, Plan) and plan.abort is not None and plan.abort.status == 418
        plan = _decide(never, rng=_Rng(draw))
        assert isinstance(plan, Plan) and plan.abort is None


def test_fault_only_for_matching_headers() -> None:
    fault = {
        "abort": {"percent": 100, "status": 503},
        "headers": [{"name": "x-chaos", "exact": "on"}, {"name": "x-user"}],
    }
    cfg = _config(_route(fault=fault))
    both = [(b"X-Chaos", b"on"), (b"x-user", b"u")]
    plan = _decide(cfg, headers=both)
    assert isinstance(plan, Plan) and plan.abort is not None
    for headers in ([(b"X-Chaos", b"on")], [(b"x-chaos", b"off"), (b"x-user", b"u")], []):
        plan = _decide(cfg, headers=headers)
        assert isinstance(plan, Plan) and plan.abort is None, headers


def test_request_header_mutation_remove_then_set_then_add() -> None:
    mutation = {
        "remove": ["x-drop", "X-Set"],
        "set": {"x-set": "new", "x-env": "prod"},
        "add": {"x-set": "more", "x-tag": "t"},
    }
    cfg = _config(_route(request_headers=mutation, response_headers={"set": {"x-resp": "1"}}))
    headers = [
        (b"Host", b"api.test"),
        (b"X-Drop", b"a"),
        (b"X-Set", b"old"),
        (b"x-keep", b"k"),
        (b"X-Env", b"dev"),
    ]
    plan = _decide(cfg, headers=headers)
    assert isinstance(plan, Plan)
    assert plan.headers == [
        (b"Host", b"api.test"),
        (b"x-keep", b"k"),
        (b"x-set", b"new"),
        (b"x-env", b"prod"),
        (b"x-set", b"more"),
        (b"x-tag", b"t"),
    ]
    assert headers[1] == (b"X-Drop", b"a")  # the request's own list is left alone
    assert plan.response_headers == HeaderEdit(frozenset({b"x-resp"}), ((b"x-resp", b"1"),))


@pytest.mark.parametrize(
    "mutation",
    [
        {"set": {"content-length": "0"}},
        {"set": {"X-Meshd-Error": "no"}},
        {"add": {"transfer-encoding": "chunked"}},
        {"remove": ["connection"]},
        {"remove": ["x-meshd-peer-identity"]},
        {"add": {"traceparent": "00-x"}},
    ],
)
def test_framing_and_mesh_headers_are_refused_not_ignored(mutation: dict[str, object]) -> None:
    # Never accepted and silently skipped: the snapshot (and the resource) is refused.
    with pytest.raises(ValidationError, match="written by the proxy"):
        HeaderMutation.model_validate(mutation)


def test_a_set_header_replaces_and_add_appends() -> None:
    edit = HeaderEdit.compile(
        HeaderMutation(set={"x-ok": "1"}, add={"x-more": "2"}, remove=("x-gone",))
    )
    assert edit.remove == frozenset({b"x-ok", b"x-gone"})
    assert edit.append == ((b"x-ok", b"1"), (b"x-more", b"2"))
    assert edit.apply([(b"X-Ok", b"0"), (b"x-gone", b"1"), (b"x-more", b"1")]) == [
        (b"x-more", b"1"),
        (b"x-ok", b"1"),
        (b"x-more", b"2"),
    ]


@pytest.mark.parametrize(
    ("match", "rewrite", "target", "expected"),
    [
        ({"path": {"prefix": "/api/"}}, "/", b"/api/v1/items?q=1&r=/x", b"/v1/items?q=1&r=/x"),
        ({"path": {"prefix": "/api"}}, "/v2", b"/api/items", b"/v2/items"),
        ({"path": {"exact": "/old"}}, "/new", b"/old?x=1", b"/new?x=1"),
        ({"path": {"regex": "/r/.*"}}, "/fixed", b"/r/anything", b"/fixed"),
        ({}, "/all", b"/whatever?k", b"/all?k"),
    ],
)
def test_path_prefix_rewrite_keeps_the_query(
    match: dict[str, Any], rewrite: str, target: bytes, expected: bytes
) -> None:
    cfg = _config(_route(match=match, rewrite={"path_prefix": rewrite}))
    plan = _decide(cfg, target)
    assert isinstance(plan, Plan)
    assert plan.target == expected


def test_host_rewrite_replaces_the_host_header() -> None:
    cfg = _config(_route(rewrite={"host": "internal.api"}, request_headers={"add": {"x-a": "1"}}))
    plan = _decide(cfg, headers=[(b"HOST", b"api.test"), (b"x-b", b"2")])
    assert isinstance(plan, Plan)
    assert plan.target is None
    assert plan.headers == [(b"x-b", b"2"), (b"x-a", b"1"), (b"host", b"internal.api")]


def test_mirror_by_percent() -> None:
    cfg = _config(_route(mirror={"cluster": "shadow", "percent": 25}))
    yes = _decide(cfg, rng=_Rng(0.2))
    no = _decide(cfg, rng=_Rng(0.3))
    assert isinstance(yes, Plan) and yes.mirror == "shadow"
    assert isinstance(no, Plan) and no.mirror is None
    zero = _config(_route(mirror={"cluster": "shadow", "percent": 0}))
    plan = _decide(zero, rng=_Rng(0.0))
    assert isinstance(plan, Plan) and plan.mirror is None


def test_retry_policy_and_weighted_cluster_choice() -> None:
    cfg = _config(
        {
            "name": "split",
            "backends": [{"cluster": "a", "weight": 1}, {"cluster": "b", "weight": 1}],
            "retries": {"attempts": 3},
        }
    )
    seen = set()
    for _ in range(50):
        plan = _decide(cfg)
        assert isinstance(plan, Plan)
        assert plan.retry is not None and plan.retry.attempts == 3
        seen.add(plan.cluster)
    assert seen == {"a", "b"}


@pytest.mark.parametrize(
    ("action", "target", "expected"),
    [
        ("keep", b"/a%2Fb", b"/a%2Fb"),
        ("reject", b"/a/b?x=%2F", b"/a/b?x=%2F"),
        ("reject", b"/a%2Fb", Answer(400, "escaped_slash", "escaped slash in the path")),
        ("reject", b"/a%5Cb", Answer(400, "escaped_slash", "escaped slash in the path")),
        ("unescape", b"/a%2Fb%5Cc?q=%2F", b"/a/b\\c?q=%2F"),
        ("unescape", b"/a/x%2F..%2Fb", b"/a/b"),
        ("redirect", b"/a%2Fb?q=1", Answer(307, "", location=b"/a/b?q=1")),
        ("redirect", b"/plain", b"/plain"),
    ],
)
def test_escaped_slashes(action: str, target: bytes, expected: bytes | Answer) -> None:
    assert check_escaped_slashes(target, action) == expected
