"""The inbound guard (meshd.access.guard): decisions, JWT rules, claims, headers, log limits."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from meshcore.authz import normalize_path
from meshcore.model import InboundPolicy
from meshcore.model.policy import ClaimMatch
from meshd.access.claims import claim_matches
from meshd.access.guard import AuthzContext, InboundGuard, LogLimiter, Refusal
from meshd.stats import Stats

from .support import FakeClock, SigningKey, jwks

WEB = "spiffe://mesh.local/ns/default/svc/web"
BATCH = "spiffe://mesh.local/ns/default/svc/batch"
ISSUER = "https://idp.test"


@dataclass
class Head:
    """The parts of a request head the guard reads and edits."""

    method: bytes = b"GET"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def make_guard(
    *rules: dict[str, Any],
    default: str = "deny",
    ctx: AuthzContext | None = None,
    listener: str = "inbound",
) -> tuple[InboundGuard, Stats]:
    stats = ctx.stats if ctx is not None else Stats()
    ctx = ctx or AuthzContext(stats)
    policy = InboundPolicy.model_validate({"rules": list(rules), "default_action": default})
    return ctx.guard(policy, listener=listener, service="api"), stats


def counts(stats: Stats, listener: str = "inbound") -> dict[str, Any]:
    prefix = f"authz.{listener}."
    return {k[len(prefix) :]: v for k, v in stats.as_json().items() if k.startswith(prefix)}


async def admit(
    guard: InboundGuard,
    peer: str | None = WEB,
    target: bytes = b"/",
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[Refusal | None, Head]:
    head = Head(method, list(headers or []))
    refusal = await guard.admit(head, peer.encode() if peer else None, target)
    return refusal, head


def header(refusal: Refusal, name: bytes) -> bytes | None:
    return next((v for n, v in refusal.headers if n == name), None)


async def test_decisions_status_reason_and_counters() -> None:
    guard, stats = make_guard(
        {"sources": [BATCH], "action": "deny"},
        {"sources": [WEB], "action": "audit", "permissions": [{"path": {"prefix": "/audit"}}]},
        {"sources": [WEB], "action": "allow", "permissions": [{"methods": ["GET"]}]},
    )
    assert (await admit(guard))[0] is None
    assert (await admit(guard, target=b"/audit/x?q=1"))[0] is None
    refusal, _ = await admit(guard, BATCH)
    assert refusal is not None
    assert (refusal.status, refusal.error) == (403, "access_denied")
    assert (
        header(refusal, b"x-meshd-denied-reason")
        == f"rule 0 (deny) matches {BATCH} and any request".encode()
    )
    default, _ = await admit(guard, method=b"POST")
    assert default is not None and default.detail == "no rule matched (default deny)"
    unauthenticated, _ = await admit(guard, None)
    assert unauthenticated is not None and unauthenticated.status == 403
    assert counts(stats) == {"allow": 1, "audit": 1, "deny": 3}


async def test_denied_and_audited_lines() -> None:
    guard, _ = make_guard(
        {"sources": [BATCH], "action": "deny"}, {"sources": ["*"], "action": "audit"}
    )
    with capture_logs() as logs:
        await admit(guard, BATCH, b"/x?secret=1", b"DELETE")
        await admit(guard, WEB, b"/y")
    denied, audited = logs
    assert denied == {
        "event": "access denied",
        "log_level": "warning",
        "listener": "inbound",
        "source": BATCH,
        "destination": "api",
        "method": "DELETE",
        "path": "/x",
        "rule": 0,
        "reason": f"rule 0 (deny) matches {BATCH} and any request",
        "status": 403,
    }
    assert (audited["event"], audited["rule"], audited["source"]) == ("access audited", 1, WEB)


@pytest.mark.parametrize(
    "target",
    [
        b"/admin",
        b"/%61dmin",
        b"//admin",
        b"/x/../admin",
        b"/./admin/",
        b"/admin?x",
        b"/%2561/../admin",
    ],
)
async def test_path_tricks_do_not_sidestep_a_deny(target: bytes) -> None:
    guard, _ = make_guard(
        {"sources": ["*"], "action": "deny", "permissions": [{"path": {"prefix": "/admin"}}]},
        {"sources": ["*"], "action": "allow"},
    )
    refusal, _ = await admit(guard, target=target)
    assert refusal is not None and refusal.status == 403


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"/a/b", b"/a/b"),
        (b"/a//b/", b"/a/b/"),
        (b"/a/./b/../c", b"/a/c"),
        (b"/../..", b"/"),
        (b"/%7euser/%41", b"/~user/A"),
        (b"/a%2Fb", b"/a%2Fb"),  # an encoded slash stays one
        (b"/a%2", b"/a%2"),
        (b"/a/..", b"/"),
        (b"/%2e%2e/admin", b"/admin"),
        (b"*", b"*"),
    ],
)
def test_normalize_path(raw: bytes, normal: bytes) -> None:
    assert normalize_path(raw) == normal


@pytest.mark.parametrize(
    ("name", "values", "expected"),
    [
        ("sub", ("alice",), True),
        ("sub", ("bob",), False),
        ("roles", ("admin", "ops"), True),
        ("roles", ("root",), False),
        ("scope", ("write",), True),
        ("scope", ("read write",), False),
        ("realm.roles", ("ops",), True),
        ("realm.level", ("3",), False),  # only strings and lists of strings
        ("missing", ("x",), False),
        ("sub.deeper", ("x",), False),
    ],
)
def test_claim_matching(name: str, values: tuple[str, ...], expected: bool) -> None:
    claims = {
        "sub": "alice",
        "roles": ["ops", 7],
        "scope": "read write",
        "realm": {"roles": ["ops"], "level": 3},
    }
    assert claim_matches(claims, ClaimMatch(name=name, values=values)) is expected


def test_log_limiter_counts_what_it_drops() -> None:
    clock = FakeClock(100.0)
    limiter = LogLimiter(2, clock)
    assert [limiter.take() for _ in range(5)] == [0, 0, -1, -1, -1]
    clock.advance(1.0)
    assert limiter.take() == 3  # the first line of a new window says how many were dropped
    assert limiter.take() == 0
    assert limiter.suppressed == 3


async def test_a_flood_of_denials_logs_a_bounded_number_of_lines() -> None:
    ctx = AuthzContext(Stats(), log_per_second=3, clock=FakeClock(5.0))
    guard, stats = make_guard({"sources": [BATCH], "action": "deny"}, ctx=ctx)
    with capture_logs() as logs:
        for _ in range(50):
            await admit(guard, BATCH)
    assert len(logs) == 3
    assert counts(stats)["deny"] == 50
    # The limiter belongs to the listener, not the snapshot: a new guard shares it.
    again, _ = make_guard({"sources": [BATCH], "action": "deny"}, ctx=ctx)
    with capture_logs() as logs:
        await admit(again, BATCH)
    assert logs == []
    assert counts(stats)["deny"] == 51


async def test_l4_admission() -> None:
    guard, stats = make_guard(
        {"sources": [BATCH], "action": "allow", "permissions": [{"methods": ["GET"]}]},
        {"sources": [WEB], "action": "allow"},
        {"sources": ["*"], "action": "audit"},
        {"sources": [BATCH], "action": "allow"},
    )
    with capture_logs() as logs:
        assert guard.admit_connection(WEB.encode())
        assert guard.admit_connection(BATCH.encode())  # rule 0 is L7-only: rule 2 audits
        assert guard.admit_connection(None)
    assert [line["event"] for line in logs] == ["access audited", "access audited"]
    strict, strict_stats = make_guard({"sources": [WEB], "action": "allow"})
    assert not strict.admit_connection(BATCH.encode())
    assert not strict.admit_connection(None)
    assert counts(stats) == {"allow": 1, "audit": 2, "deny": 0}
    assert counts(strict_stats) == {"allow": 0, "audit": 0, "deny": 2}


# -- JWT rules ------------------------------------------------------------------------------------


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": "api", "sub": "alice", "exp": now + 600, "iat": now, **extra}


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: SigningKey) -> Path:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(rsa_key))
    return path


def jwt_rules(jwks_file: Path, **jwt: Any) -> tuple[dict[str, Any], ...]:
    requirement = {
        "issuer": ISSUER,
        "audiences": ["api"],
        "jwks_file": str(jwks_file),
        "forward_claims": {"sub": "x-user", "roles": "x-roles"},
        **jwt,
    }
    return (
        {"sources": ["*"], "action": "allow", "permissions": [{"path": {"prefix": "/public"}}]},
        {"sources": [WEB], "action": "allow", "jwt": requirement},
    )


async def test_valid_token_forwards_claims_and_strips_forged_headers(
    jwks_file: Path, rsa_key: SigningKey
) -> None:
    guard, stats = make_guard(*jwt_rules(jwks_file))
    forged = [(b"X-User", b"root"), (b"x-roles", b"admin")]
    token = rsa_key.bearer(claims(roles=["ops"]))
    refusal, head = await admit(guard, headers=[*forged, (b"Authorization", token)])
    assert refusal is None
    assert head.headers == [
        (b"Authorization", token),
        (b"x-user", b"alice"),
        (b"x-roles", b'["ops"]'),
    ]
    # A rule without a JWT still gets the forged copies removed.
    refusal, head = await admit(guard, None, b"/public/x", headers=forged)
    assert refusal is None and head.headers == []
    assert counts(stats)["allow"] == 2


async def test_missing_and_invalid_tokens_are_401(jwks_file: Path, rsa_key: SigningKey) -> None:
    guard, stats = make_guard(*jwt_rules(jwks_file))
    missing, _ = await admit(guard)
    assert missing is not None
    assert (missing.status, missing.error, missing.detail) == (
        401,
        "jwt_missing",
        "jwt: no bearer token",
    )
    assert header(missing, b"www-authenticate") == b'Bearer realm="meshd"'
    expired = rsa_key.bearer(claims(exp=int(time.time()) - 3600))
    refusal, _ = await admit(guard, headers=[(b"authorization", expired)])
    assert refusal is not None
    assert (refusal.status, refusal.error) == (401, "jwt_expired")
    assert header(refusal, b"x-meshd-denied-reason") == b"jwt: token expired"
    assert header(refusal, b"www-authenticate") == (
        b'Bearer realm="meshd", error="invalid_token", error_description="token expired"'
    )
    assert counts(stats)["deny"] == 2


async def test_claim_conditions_are_403(jwks_file: Path, rsa_key: SigningKey) -> None:
    conditions = [{"name": "roles", "values": ["admin"]}, {"name": "scope", "values": ["write"]}]
    guard, _ = make_guard(*jwt_rules(jwks_file, claims=conditions))
    ok = rsa_key.bearer(claims(roles=["admin"], scope="read write"))
    assert (await admit(guard, headers=[(b"authorization", ok)]))[0] is None
    no_scope = rsa_key.bearer(claims(roles=["admin"], scope="read"))
    refusal, head = await admit(guard, headers=[(b"authorization", no_scope)])
    assert refusal is not None
    assert (refusal.status, refusal.error) == (403, "jwt_claim_mismatch")
    assert refusal.detail == "jwt: claim scope does not match"
    assert all(n != b"x-user" for n, _ in head.headers)


async def test_unloadable_jwks_is_503_without_the_cause(
    tmp_path: Path, rsa_key: SigningKey
) -> None:
    guard, _ = make_guard(*jwt_rules(tmp_path / "absent.json"))
    with capture_logs() as logs:
        refusal, _ = await admit(guard, headers=[(b"authorization", rsa_key.bearer(claims()))])
    assert refusal is not None
    assert (refusal.status, refusal.error, refusal.detail) == (
        503,
        "jwks_unavailable",
        "jwt: JWKS unavailable",
    )
    assert "absent.json" not in repr(refusal)
    assert "absent.json" in logs[0]["cause"]


async def test_jwks_sources_outlive_a_snapshot(jwks_file: Path, rsa_key: SigningKey) -> None:
    ctx = AuthzContext(Stats())
    first, _ = make_guard(*jwt_rules(jwks_file), ctx=ctx)
    token = [(b"authorization", rsa_key.bearer(claims()))]
    assert (await admit(first, headers=token))[0] is None
    second, _ = make_guard(*jwt_rules(jwks_file, audiences=[]), ctx=ctx)
    assert (await admit(second, headers=token))[0] is None
    requirement = InboundPolicy.model_validate({"rules": [jwt_rules(jwks_file)[1]]}).rules[0].jwt
    assert requirement is not None
    source = ctx.jwks_source(requirement)
    assert source.loads == 1  # type: ignore[union-attr]


async def test_deny_rules_with_a_jwt_just_deny(jwks_file: Path) -> None:
    rule = {**jwt_rules(jwks_file)[1], "action": "deny"}
    guard, _ = make_guard(rule, default="allow")
    refusal, _ = await admit(guard)
    assert refusal is not None and refusal.status == 403
