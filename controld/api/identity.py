"""Identity endpoints: join tokens, enrollment, renewal, trust bundle, identities, revocation,
rotation.

``/v1/enroll`` and ``/v1/renew`` take no bearer token: the join token, respectively the
current leaf presented as client certificate over mutual TLS (controld's TLS listener), is
the credential. ``/v1/bundle`` is public;
with ``?index=<n>&wait=<s>`` it is a blocking query (as in Consul): it answers at once when
the bundle's index isn't ``n``, else when it changes or after ``wait`` (at most 300 s). The
index is in the ``X-Meshd-Index`` header and the body; ``revoked`` lists the serials of the
revoked leaves that haven't expired. ``GET /v1/ca`` and ``GET /v1/identities`` are
admin-only; the others are admin-only and audited.
"""

# No `from __future__ import annotations`: FastAPI evaluates route signatures, whose
# Annotated aliases are local to the router factory.

from datetime import UTC, datetime
from typing import Annotated

from cryptography import x509
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from starlette.requests import Request

from controld.api.bound_tokens import mint_bound_token
from controld.api.deps import Auditor, Guard
from controld.api.errors import ApiError
from controld.auth import Principal, TokenAuth
from controld.ca import (
    CSRError,
    IdentityNotFound,
    IdentityService,
    JoinTokenInvalid,
    RenewalRefused,
    RotationError,
)
from controld.ca.authority import spiffe_id
from controld.ca.identities import IdentityRecord
from controld.ca.records import InvalidRecord
from controld.ca.rotation import MAX_BUNDLE_WAIT_S
from controld.ca.service import rfc3339
from meshcore.api.ca import (
    CA_PATH,
    CA_ROTATE_PATH,
    IDENTITIES_PATH,
    REVOCATIONS_PATH,
    CaStatus,
    Identity,
    IdentityList,
    RevokeAnswer,
    RevokeRequest,
    RotateAnswer,
    RotateRequest,
)
from meshcore.api.enroll import (
    BUNDLE_PATH,
    ENROLL_PATH,
    INDEX_HEADER,
    RENEW_PATH,
    BundleAnswer,
    EnrollRequest,
    IssuedAnswer,
    RenewRequest,
)
from meshcore.api.tokens import JOIN_TOKENS_PATH, JoinToken, JoinTokenRequest
from meshcore.model.policy import SERVICE_PATTERN

__all__ = ["identity_router"]

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


def identity_router(
    identity: IdentityService, auth: TokenAuth, guard: Guard, auditor: Auditor
) -> APIRouter:
    """The identity endpoints on ``identity``."""
    router = APIRouter(tags=["identity"])
    AdminAudited = Annotated[Principal, Depends(guard.admin_audited)]
    Admin = Annotated[Principal, Depends(guard.admin)]

    @router.post(JOIN_TOKENS_PATH)
    async def create_join_token(
        body: JoinTokenRequest, request: Request, principal: AdminAudited
    ) -> JoinToken:
        """A single-use join token for ``namespace``/``service`` (admin only; audited)."""
        token, expires = await identity.join_tokens.create(
            body.service, body.namespace, body.ttl_s, pins=identity.pins()
        )
        auditor.record(
            principal.name, request, "minted", service=body.service, namespace=body.namespace
        )
        return JoinToken(token=token, expires=_rfc3339_unix(expires))

    @router.post(
        ENROLL_PATH,
        responses={400: {"description": "bad CSR"}, 401: {"description": "bad join token"}},
    )
    async def enroll(body: EnrollRequest, request: Request) -> IssuedAnswer:
        """Trade a join token and a CSR for a leaf, the trust bundle and a sidecar token."""
        address = request.client.host if request.client is not None else None
        try:
            issued = await identity.enroll(
                body.token, body.csr, instance=body.instance, address=address
            )
        except CSRError as exc:
            raise ApiError(400, str(exc)) from exc
        except JoinTokenInvalid as exc:
            raise ApiError(401, str(exc)) from exc
        token = await mint_bound_token(auth, issued)
        return IssuedAnswer.model_validate({**issued.as_json(), "sidecar_token": token})

    @router.post(
        RENEW_PATH,
        responses={400: {"description": "bad CSR"}, 401: {"description": "renewal refused"}},
    )
    async def renew(body: RenewRequest, request: Request) -> IssuedAnswer:
        """A new leaf for the holder of the current one, proven by mutual TLS."""
        current = client_certificate(request)
        try:
            issued = await identity.renew(body.csr, current)
        except CSRError as exc:
            raise ApiError(400, str(exc)) from exc
        except RenewalRefused as exc:
            raise ApiError(401, str(exc)) from exc
        token = await mint_bound_token(auth, issued, replaces=current)
        return IssuedAnswer.model_validate({**issued.as_json(), "sidecar_token": token})

    @router.get(
        BUNDLE_PATH,
        response_class=JSONResponse,
        responses={200: {"model": BundleAnswer}, 400: {"description": "bad wait"}},
    )
    async def bundle(
        index: Annotated[int | None, Query(ge=0)] = None,
        wait: Annotated[str | None, Query(max_length=32)] = None,
    ) -> JSONResponse:
        """The trust domain, the trusted roots (PEM), the signing root (``active``, PEM;
        ``active_id``) and the bundle's ``index``; with ``index`` a blocking query.

        The body is a :class:`~meshcore.api.enroll.BundleAnswer` built as a dict: a woken
        query answers every waiting sidecar, with the revocations encoded once."""
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
            "revoked": identity.revoked_json(),
        }
        return JSONResponse(body, headers={INDEX_HEADER: str(current)})

    @router.get(CA_PATH)
    async def ca_status(principal: Admin) -> CaStatus:
        """Rotation phase, signer, bundle and outstanding leaves per root (admin only)."""
        del principal
        return CaStatus.model_validate(identity.status())

    @router.get(IDENTITIES_PATH)
    async def identities(
        principal: Admin,
        service: Annotated[str | None, Query(pattern=SERVICE_PATTERN)] = None,
    ) -> IdentityList:
        """Every enrolled instance: service, instance, SPIFFE ID, current serial, expiry and
        revocation (admin only)."""
        del principal
        now = datetime.now(UTC).timestamp()
        records = await identity.identities.all()
        found = [r for r in records if service is None or r.service == service]
        found.sort(key=lambda r: (r.namespace, r.service, r.enrolled))
        return IdentityList(identities=tuple(identity_json(r, now) for r in found))

    @router.post(
        REVOCATIONS_PATH,
        # ``spiffe_id`` is sent only when a whole service was revoked.
        response_model_exclude_unset=True,
        responses={
            404: {"description": "no such identity or serial"},
            409: {"description": "the identity's record is unusable"},
        },
    )
    async def revoke(
        body: RevokeRequest, request: Request, principal: AdminAudited
    ) -> RevokeAnswer:
        """Revoke one instance (by ``identity`` or certificate ``serial``) or every instance
        of a service: peers refuse its certificates within a bundle long-poll and it can't
        renew (admin only; audited)."""
        try:
            if body.identity is not None:
                revoked = [await identity.revoke_identity(body.identity)]
            elif body.serial is not None:
                revoked = [await identity.revoke_serial(int(body.serial, 16))]
            else:
                target = body.spiffe_id or spiffe_id(
                    identity.trust_domain, body.namespace, str(body.service)
                )
                revoked = await identity.revoke_service(target)
        except IdentityNotFound as exc:
            raise ApiError(404, str(exc)) from exc
        except InvalidRecord as exc:
            raise ApiError(409, f"cannot revoke: {exc}") from exc
        fields = body.model_dump(exclude_none=True, exclude_defaults=True)
        ids = [r.id for r in revoked]
        auditor.record(principal.name, request, "revoked", identities=ids, **fields)
        now = datetime.now(UTC).timestamp()
        listed = tuple(identity_json(r, now) for r in revoked)
        if body.spiffe_id is None and body.service is None:
            return RevokeAnswer(revoked=listed)
        target = body.spiffe_id or spiffe_id(
            identity.trust_domain, body.namespace, str(body.service)
        )
        return RevokeAnswer(revoked=listed, spiffe_id=target)

    @router.post(CA_ROTATE_PATH, responses={409: {"description": "step out of order"}})
    async def rotate(
        body: RotateRequest, request: Request, principal: AdminAudited
    ) -> RotateAnswer:
        """One root rotation step: ``stage``, ``activate`` or ``retire`` (admin; audited).

        ``retire`` answers 409 while leaves of the old root are outstanding, unless ``force``.
        """
        ca = identity.ca
        try:
            state = identity.rotate(body.step, force=body.force)
        except RotationError as exc:
            raise ApiError(409, str(exc)) from exc
        auditor.record(principal.name, request, body.step, active=state.active, force=body.force)
        return RotateAnswer(
            phase=state.phase,
            active=state.active,
            bundle=tuple(state.bundle),
            roots=tuple(ca.bundle_pem()),
            index=ca.index,
        )

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


def identity_json(record: IdentityRecord, now: float) -> Identity:
    """One identity as the API shows it (times in RFC 3339, serials in hex)."""
    current = record.current
    return Identity(
        id=record.id,
        service=record.service,
        namespace=record.namespace,
        spiffe_id=record.spiffe_id,
        instance=record.instance,
        address=record.address,
        enrolled=_rfc3339_unix(record.enrolled),
        renewed=None if record.renewed is None else _rfc3339_unix(record.renewed),
        serial=None if current is None else current.serial,
        not_after=None if current is None else _rfc3339_unix(current.not_after),
        expires_in_s=None if current is None else round(current.not_after - now, 1),
        serials=tuple(leaf.serial for leaf in record.unexpired(now)),
        revoked=None if record.revoked is None else _rfc3339_unix(record.revoked),
    )
