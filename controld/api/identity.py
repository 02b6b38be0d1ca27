"""Identity endpoints: join tokens, enrollment, renewal, trust bundle, revocation, rotation.

``/v1/enroll`` and ``/v1/renew`` take no bearer token: the join token, respectively the
current leaf presented as client certificate over mutual TLS (controld's TLS listener), is
the credential. ``/v1/bundle`` is public;
with ``?index=<n>&wait=<s>`` it is a blocking query (as in Consul): it answers at once when
the bundle's index isn't ``n``, else when it changes or after ``wait`` (at most 300 s). The
index is in the ``X-Meshd-Index`` header and the body. ``GET /v1/ca`` is admin-only; the
others are admin-only and audited.
"""

# No `from __future__ import annotations`: FastAPI evaluates route signatures, whose
# Annotated aliases are local to the router factory.

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from cryptography import x509
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from controld.api.bound_tokens import mint_bound_token
from controld.api.deps import Auditor, Guard
from controld.api.errors import ApiError
from controld.auth import Principal, TokenAuth
from controld.ca import (
    CSRError,
    IdentityService,
    JoinTokenInvalid,
    RenewalRefused,
    RotationError,
)
from controld.ca.rotation import MAX_BUNDLE_WAIT_S
from controld.ca.service import rfc3339
from meshcore.model.policy import SERVICE_PATTERN

__all__ = ["identity_router"]

#: Longest lifetime of a join token (30 days).
MAX_JOIN_TTL_S = 30 * 86400
_SPIFFE_PATTERN = r"^spiffe://[a-z0-9.-]+/ns/[a-z0-9._-]+/svc/[a-z0-9._-]+$"
#: Header carrying the bundle's index.
INDEX_HEADER = "X-Meshd-Index"
#: Default wait of a bundle long-poll given an index and no ``wait``.
DEFAULT_BUNDLE_WAIT_S = 60.0


def parse_wait(value: str | None) -> float:
    """A blocking query's ``wait``: seconds, optionally suffixed ``s``, ``ms`` or ``m`` (as
    Consul's ``10s``, ``5m``); capped at 300 s. ``ValueError`` when it isn't one."""
    if value is None or value == "":
        return DEFAULT_BUNDLE_WAIT_S
    text = value.strip().lower()
    scale = 1.0
    if text.endswith("ms"):
        text, scale = text[:-2], 0.001
    elif text.endswith("s"):
        text = text[:-1]
    elif text.endswith("m"):
        text, scale = text[:-1], 60.0
    try:
        seconds = float(text) * scale
    except ValueError:
        seconds = -1.0
    if not seconds >= 0.0 or seconds == float("inf"):  # also NaN
        raise ValueError(f"not a duration: {value!r}")
    return min(seconds, MAX_BUNDLE_WAIT_S)


class JoinTokenRequest(BaseModel):
    """Body of ``POST /v1/tokens/join``."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field(pattern=SERVICE_PATTERN)
    namespace: str = Field(default="default", pattern=SERVICE_PATTERN)
    ttl_s: int = Field(default=3600, ge=1, le=MAX_JOIN_TTL_S)


class EnrollRequest(BaseModel):
    """Body of ``POST /v1/enroll``."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=256)
    csr: str = Field(min_length=1, max_length=16384)


class RenewRequest(BaseModel):
    """Body of ``POST /v1/renew`` (over mutual TLS: the client certificate is the credential)."""

    model_config = ConfigDict(extra="forbid")

    csr: str = Field(min_length=1, max_length=16384)


class RevokeRequest(BaseModel):
    """Body of ``POST /v1/revocations``."""

    model_config = ConfigDict(extra="forbid")

    spiffe_id: str = Field(pattern=_SPIFFE_PATTERN, max_length=512)


class RotateRequest(BaseModel):
    """Body of ``POST /v1/ca/rotate``."""

    model_config = ConfigDict(extra="forbid")

    step: Literal["stage", "activate", "retire"]
    #: ``retire`` even while leaves of the old root are outstanding.
    force: bool = False


def identity_router(
    identity: IdentityService, auth: TokenAuth, guard: Guard, auditor: Auditor
) -> APIRouter:
    """The identity endpoints on ``identity``."""
    router = APIRouter(tags=["identity"])
    AdminAudited = Annotated[Principal, Depends(guard.admin_audited)]
    Admin = Annotated[Principal, Depends(guard.admin)]

    @router.post("/v1/tokens/join")
    async def create_join_token(
        body: JoinTokenRequest, request: Request, principal: AdminAudited
    ) -> dict[str, str]:
        """A single-use join token for ``namespace``/``service`` (admin only; audited)."""
        token, expires = await identity.join_tokens.create(
            body.service, body.namespace, body.ttl_s, pins=identity.pins()
        )
        auditor.record(
            principal.name, request, "minted", service=body.service, namespace=body.namespace
        )
        return {"token": token, "expires": _rfc3339_unix(expires)}

    @router.post(
        "/v1/enroll",
        responses={400: {"description": "bad CSR"}, 401: {"description": "bad join token"}},
    )
    async def enroll(body: EnrollRequest) -> dict[str, Any]:
        """Trade a join token and a CSR for a leaf, the trust bundle and a sidecar token."""
        try:
            issued = await identity.enroll(body.token, body.csr)
        except CSRError as exc:
            raise ApiError(400, str(exc)) from exc
        except JoinTokenInvalid as exc:
            raise ApiError(401, str(exc)) from exc
        answer = issued.as_json()
        answer["sidecar_token"] = await mint_bound_token(auth, issued)
        return answer

    @router.post(
        "/v1/renew",
        responses={400: {"description": "bad CSR"}, 401: {"description": "renewal refused"}},
    )
    async def renew(body: RenewRequest, request: Request) -> dict[str, Any]:
        """A new leaf for the holder of the current one, proven by mutual TLS."""
        current = client_certificate(request)
        try:
            issued = await identity.renew(body.csr, current)
        except CSRError as exc:
            raise ApiError(400, str(exc)) from exc
        except RenewalRefused as exc:
            raise ApiError(401, str(exc)) from exc
        answer = issued.as_json()
        answer["sidecar_token"] = await mint_bound_token(auth, issued, replaces=current)
        return answer

    @router.get("/v1/bundle", responses={400: {"description": "bad wait"}})
    async def bundle(
        index: Annotated[int | None, Query(ge=0)] = None,
        wait: Annotated[str | None, Query(max_length=32)] = None,
    ) -> JSONResponse:
        """The trust domain, the trusted roots (PEM), the signing root (``active``, PEM;
        ``active_id``) and the bundle's ``index``; with ``index`` a blocking query."""
        ca = identity.ca
        if index is not None:
            try:
                wait_s = parse_wait(wait)
            except ValueError as exc:
                raise ApiError(400, f"wait: {exc}") from exc
            await ca.wait_bundle(index, wait_s)
        current = ca.index
        body = {
            "trust_domain": identity.trust_domain,
            "roots": ca.bundle_pem(),
            "active": ca.signer.cert_pem(),
            "active_id": ca.state.active,
            "index": current,
        }
        return JSONResponse(body, headers={INDEX_HEADER: str(current)})

    @router.get("/v1/ca")
    async def ca_status(principal: Admin) -> dict[str, Any]:
        """Rotation phase, signer, bundle and outstanding leaves per root (admin only)."""
        del principal
        return identity.status()

    @router.post("/v1/revocations")
    async def revoke(
        body: RevokeRequest, request: Request, principal: AdminAudited
    ) -> dict[str, str]:
        """Refuse further renewals of ``spiffe_id`` (admin only; audited)."""
        await identity.revocations.revoke(body.spiffe_id)
        auditor.record(principal.name, request, "revoked", spiffe_id=body.spiffe_id)
        return {"spiffe_id": body.spiffe_id}

    @router.post("/v1/ca/rotate", responses={409: {"description": "step out of order"}})
    async def rotate(
        body: RotateRequest, request: Request, principal: AdminAudited
    ) -> dict[str, Any]:
        """One root rotation step: ``stage``, ``activate`` or ``retire`` (admin; audited).

        ``retire`` answers 409 while leaves of the old root are outstanding, unless ``force``.
        """
        ca = identity.ca
        try:
            state = identity.rotate(body.step, force=body.force)
        except RotationError as exc:
            raise ApiError(409, str(exc)) from exc
        auditor.record(principal.name, request, body.step, active=state.active, force=body.force)
        return {
            "phase": state.phase,
            "active": state.active,
            "bundle": list(state.bundle),
            "roots": ca.bundle_pem(),
            "index": ca.index,
        }

    return router


#: Why a renewal without a verified client certificate is refused.
NEEDS_MTLS = (
    "renewal needs mutual TLS: call controld's TLS listener (--tls) with the current certificate"
)


def client_certificate(request: Request) -> x509.Certificate:
    """The verified client certificate of a request on the TLS listener (ASGI TLS
    extension); :class:`ApiError` 401 when there is none."""
    tls = request.scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        raise ApiError(401, NEEDS_MTLS)
    try:
        return x509.load_pem_x509_certificate(str(chain[0]).encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise ApiError(401, NEEDS_MTLS) from exc


def _rfc3339_unix(when: float) -> str:
    return rfc3339(datetime.fromtimestamp(when, UTC))
