"""JWT requirements of access rules, enforced by an in-process inbound sidecar (issue 5).

Keys are real (``cryptography``), tokens are signed with PyJWT, the JWKS is served over HTTP
on 127.0.0.1 by the test (and read from a file for one rule). Clients talk plaintext to the
inbound listener: the rules' sources are ``"*"``, so no peer identity is involved.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from helpers import (
    RawClient,
    RawServer,
    Response,
    TestApp,
    app_headers,
    closed_port,
    port_of,
    read_head,
    request,
    write_sidecar_config,
)
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from meshd.sidecar import Sidecar

ISSUER = "https://idp.test"
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class Signer:
    """A signing key with its ``kid`` and public JWK."""

    def __init__(self, kid: str, key: Key) -> None:
        self.kid = kid
        self.key = key
        self.alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"

    def jwk(self) -> dict[str, Any]:
        public = self.key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            out = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            out = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**out, "kid": self.kid}

    def token(self, *, kid: str | None = None, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": "api", "sub": "alice", "exp": now + 600, "nbf": now - 5}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm=self.alg, headers={"kid": kid or self.kid})


def jwks(*signers: Signer) -> bytes:
    return json.dumps({"keys": [s.jwk() for s in signers]}).encode()


class JwksServer:
    """Serves ``body`` at any path over HTTP/1.1 on 127.0.0.1; :meth:`stop` takes it down."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.fetches = 0
        self.scope = trio.CancelScope()
        self.server = RawServer(self._handle)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/jwks.json"

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            await self.server.run(task_status=task_status)

    def stop(self) -> None:
        self.scope.cancel()

    async def _handle(self, stream: trio.SocketStream) -> None:
        if not await read_head(stream):
            return
        self.fetches += 1
        body = self.body
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        await stream.send_all(head + body)


def requirement(**fields: Any) -> dict[str, Any]:
    return {
        "issuer": ISSUER,
        "audiences": ["api"],
        "forward_claims": {"sub": "x-user", "roles": "x-roles"},
        **fields,
    }


async def start_api(
    nursery: trio.Nursery, directory: Path, app_port: int, rules: list[dict[str, Any]]
) -> Sidecar:
    path = write_sidecar_config(
        directory,
        service="api",
        app_port=app_port,
        listeners=[{"name": "inbound", "direction": "inbound", "address": "127.0.0.1:0"}],
    )
    snapshot = directory / "snapshot.yaml"
    doc = yaml.safe_load(snapshot.read_text())
    doc["inbound_policy"] = {"rules": rules, "default_action": "deny"}
    snapshot.write_text(yaml.safe_dump(doc))
    sidecar = Sidecar(path)
    # A rotated key is fetched on the first token naming it, however soon after the last fetch.
    sidecar.authz.jwks_min_refresh_s = 0.0
    started: Sidecar = await nursery.start(sidecar.run)
    return started


async def get(port: int, path: str, token: str | None = None, **headers: str) -> Response:
    given = [(k.replace("_", "-"), v) for k, v in headers.items()]
    if token is not None:
        given.append(("Authorization", f"Bearer {token}"))
    async with RawClient.connect(port) as client:
        await client.send(request("GET", path, headers=given))
        return await client.read_response()


@pytest.fixture(scope="module")
def k1() -> Signer:
    return Signer("k1", rsa.generate_private_key(65537, 2048))


@pytest.fixture(scope="module")
def k2() -> Signer:
    return Signer("k2", ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def stranger() -> Signer:
    return Signer("k1", rsa.generate_private_key(65537, 2048))  # same kid, another key


class Env:
    def __init__(self, sidecar: Sidecar, server: JwksServer, port: int) -> None:
        self.sidecar = sidecar
        self.server = server
        self.port = port


@pytest.fixture
async def env(nursery: trio.Nursery, tmp_path: Path, app: TestApp, k1: Signer) -> Env:
    server = JwksServer(jwks(k1))
    await nursery.start(server.run)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_bytes(jwks(k1))
    rules = [
        {
            "sources": ["*"],
            "action": "allow",
            "permissions": [{"path": {"prefix": "/url"}}],
            "jwt": requirement(jwks_uri=server.url),
        },
        {
            "sources": ["*"],
            "action": "allow",
            "permissions": [{"path": {"prefix": "/file"}}],
            "jwt": requirement(jwks_file=str(jwks_file)),
        },
        {
            "sources": ["*"],
            "action": "audit",
            "permissions": [{"path": {"prefix": "/admin"}}],
            "jwt": requirement(
                jwks_uri=server.url,
                claims=[
                    {"name": "roles", "values": ["admin"]},
                    {"name": "org.id", "values": ["7"]},
                ],
            ),
        },
        {
            "sources": ["*"],
            "action": "allow",
            "permissions": [{"path": {"prefix": "/nojwks"}}],
            "jwt": requirement(jwks_uri=f"http://127.0.0.1:{closed_port()}/jwks.json"),
        },
    ]
    sidecar = await start_api(nursery, tmp_path / "api", app.port, rules)
    return Env(sidecar, server, port_of(sidecar, "inbound"))


async def test_valid_tokens_forward_claims_and_drop_forged_headers(
    env: Env, app: TestApp, k1: Signer
) -> None:
    for prefix in ("/url", "/file"):
        resp = await get(env.port, f"{prefix}/x", k1.token(roles=["ops", "dev"]), X_User="mallory")
        assert resp.status == 200, prefix
        seen = app_headers(resp.json())
        assert seen["x-user"] == ["alice"]
        assert seen["x-roles"] == ['["ops","dev"]']
        assert seen["authorization"][0].startswith("Bearer ")  # the token itself goes on
    # Without a token the rule refuses; nothing reaches the app.
    resp = await get(env.port, "/url/x", X_User="mallory")
    assert resp.status == 401
    assert app.requests == 2


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("bad_signature", "jwt: bad signature"),
        ("expired", "jwt: token expired"),
        ("not_yet_valid", "jwt: token not yet valid"),
        ("wrong_audience", "jwt: wrong audience"),
        ("wrong_issuer", "jwt: wrong issuer"),
        ("unknown_kid", "jwt: unknown signing key"),
        ("missing", "jwt: no bearer token"),
    ],
)
async def test_refused_tokens_are_401(
    env: Env, app: TestApp, k1: Signer, stranger: Signer, case: str, reason: str
) -> None:
    now = int(time.time())
    tokens: dict[str, str | None] = {
        "bad_signature": stranger.token(),
        "expired": k1.token(exp=now - 3600),
        "not_yet_valid": k1.token(nbf=now + 3600),
        "wrong_audience": k1.token(aud="billing"),
        "wrong_issuer": k1.token(iss="https://evil.test"),
        "unknown_kid": k1.token(kid="nope"),
        "missing": None,
    }
    resp = await get(env.port, "/url/x", tokens[case])
    assert resp.status == 401
    assert resp.header("x-meshd-error") == f"jwt_{case}"
    assert resp.header("x-meshd-denied-reason") == reason
    challenge = resp.header("www-authenticate")
    assert challenge is not None and challenge.startswith("Bearer ")
    assert ('error="invalid_token"' in challenge) == (case != "missing")
    assert app.requests == 0


async def test_claim_conditions_are_403(env: Env, app: TestApp, k1: Signer) -> None:
    ops = await get(env.port, "/admin/x", k1.token(roles=["ops"], org={"id": "7"}))
    assert ops.status == 403
    assert ops.header("x-meshd-error") == "jwt_claim_mismatch"
    assert ops.header("x-meshd-denied-reason") == "jwt: claim roles does not match"
    other_org = await get(env.port, "/admin/x", k1.token(roles=["admin"], org={"id": "8"}))
    assert other_org.header("x-meshd-denied-reason") == "jwt: claim org.id does not match"
    admin = await get(env.port, "/admin/x", k1.token(roles=["admin"], org={"id": "7"}))
    assert admin.status == 200
    assert app.requests == 1


async def test_unreachable_jwks_is_503(env: Env, k1: Signer) -> None:
    resp = await get(env.port, "/nojwks/x", k1.token())
    assert resp.status == 503
    assert resp.header("x-meshd-error") == "jwks_unavailable"
    assert resp.header("x-meshd-denied-reason") == "jwt: JWKS unavailable"


async def test_jwks_rotation_cache_and_outage(
    env: Env, tmp_path: Path, k1: Signer, k2: Signer
) -> None:
    assert (await get(env.port, "/url/x", k1.token())).status == 200
    fetched = env.server.fetches
    assert fetched == 1
    # A new snapshot keeps the cached keys: no refetch.
    snapshot = tmp_path / "api" / "snapshot.yaml"
    doc = yaml.safe_load(snapshot.read_text())
    snapshot.write_text(yaml.safe_dump({**doc, "version": 2}))
    assert env.sidecar.reload()
    assert (await get(env.port, "/url/x", k1.token())).status == 200
    assert env.server.fetches == fetched
    # The identity provider rotates to k2: a token with the new kid triggers a refresh.
    env.server.body = jwks(k2)
    assert (await get(env.port, "/url/y", k2.token())).status == 200
    assert env.server.fetches == fetched + 1
    old = await get(env.port, "/url/y", k1.token(sub="bob"))
    assert (old.status, old.header("x-meshd-error")) == (401, "jwt_unknown_kid")
    # The JWKS URL goes down: the cached set keeps validating.
    env.server.stop()
    with trio.fail_after(5):
        while True:
            try:
                probe = await trio.open_tcp_stream("127.0.0.1", env.server.server.port)
            except OSError:
                break
            await probe.aclose()
            await trio.sleep(0.01)
    assert (await get(env.port, "/url/z", k2.token(sub="carol"))).status == 200
