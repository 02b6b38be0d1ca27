"""Enrollment and renewal calls to controld (the enrollment contract of issue 5).

The requests, answers and paths are :mod:`meshcore.api.enroll`'s: ``POST /v1/enroll`` (the
join token is the credential), ``POST /v1/renew`` over mutual TLS on controld's TLS listener
(the current leaf, presented as client certificate, is the credential; the connection's
context comes from :class:`~meshd.identity.trust.ControldTrust`) and
``GET /v1/bundle[?index=<n>&wait=<s>]``, a blocking query with ``index``. An older controld
answers the bundle as ``{trust_domain, roots}`` only (:attr:`Bundle.index` ``None``, nothing
revoked).

4xx answers raise :class:`EnrollmentRefused` (and so does a join token controld would refuse
as malformed); unreachable controld, 5xx and malformed answers raise
:class:`~meshd.control.client.ControlError` subclasses (worth retrying).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from pydantic import ValidationError

from meshcore.api.enroll import (
    BUNDLE_PATH,
    ENROLL_PATH,
    INSTANCE_PATTERN,
    MAX_REVOKED,
    RENEW_PATH,
    BundleAnswer,
    EnrollRequest,
    IssuedAnswer,
    RenewRequest,
    bundle_query,
)
from meshcore.model.loading import format_validation_error
from meshd.control.client import ControlClient, ControlResponse, ControlUnavailable
from meshd.identity.csr import csr_pem
from meshd.identity.errors import EnrollmentRefused

__all__ = ["MAX_REVOKED", "Bundle", "IdentityClient", "Issued"]

_INSTANCE = re.compile(INSTANCE_PATTERN)


@dataclass(frozen=True, slots=True)
class Issued:
    """controld's answer to an enrollment or a renewal (not yet checked against the key)."""

    cert_pem: bytes
    bundle_pems: tuple[bytes, ...]
    spiffe_id: str
    not_after: str
    #: Only on enrollment: the API token of the service, for the snapshot source.
    sidecar_token: str | None = None
    #: The index of ``bundle_pems`` (None from a controld that doesn't send it).
    bundle_index: int | None = None


@dataclass(frozen=True, slots=True)
class Bundle:
    """controld's trust bundle."""

    trust_domain: str
    roots: tuple[bytes, ...]
    #: The root that signs new leaves (PEM); None from an older controld.
    active: bytes | None = None
    #: Changes whenever roots, signer or revocations do; None from an older controld (no
    #: blocking query).
    index: int | None = None
    #: Serials of the revoked leaves that haven't expired: peers presenting one are refused.
    revoked: frozenset[int] = frozenset()


def _pem(text: str) -> bytes:
    return text.encode("ascii", "replace")


def _issued(resp: ControlResponse, where: str) -> Issued:
    # 408 and 429 are "not now", not "no": retried like an unreachable controld.
    if 400 <= resp.status < 500 and resp.status not in (408, 429):
        raise EnrollmentRefused(f"{where}: {resp.error_text()}", resp.status)
    if resp.status != 200:
        raise ControlUnavailable(f"{where}: {resp.error_text()}")
    answer = resp.parse(IssuedAnswer, where)
    return Issued(
        cert_pem=_pem(answer.certificate),
        bundle_pems=tuple(_pem(b) for b in answer.bundle),
        spiffe_id=answer.spiffe_id,
        not_after=answer.not_after,
        sidecar_token=answer.sidecar_token or None,
        bundle_index=answer.bundle_index,
    )


class IdentityClient:
    """meshd's side of the enrollment API, over a :class:`ControlClient`."""

    def __init__(self, control: ControlClient) -> None:
        self.control = control

    async def enroll(
        self, token: str, csr: x509.CertificateSigningRequest, *, instance: str | None = None
    ) -> Issued:
        """Trade a join token and a CSR for a leaf, the bundle and the service's API token;
        ``instance`` (the proxy id) is recorded with the new identity."""
        if instance is not None and not _INSTANCE.match(instance):
            instance = None  # not worth a refusal
        try:
            body = EnrollRequest(token=token, csr=csr_pem(csr), instance=instance)
        except ValidationError as exc:
            # What controld would answer (422), without asking it.
            raise EnrollmentRefused(format_validation_error("enroll", exc), 422) from exc
        resp = await self.control.post_json(ENROLL_PATH, body.model_dump(exclude_none=True))
        return _issued(resp, "enroll")

    async def renew(self, csr: x509.CertificateSigningRequest) -> Issued:
        """A new leaf for ``csr``; the connection presents the current leaf (mutual TLS)."""
        self.control.close()  # a new connection, with the context of the current leaf
        body = RenewRequest(csr=csr_pem(csr))
        resp = await self.control.post_json(RENEW_PATH, body.model_dump())
        return _issued(resp, "renew")

    async def bundle(self) -> tuple[str, tuple[bytes, ...]]:
        """The trust domain and the current roots (``GET /v1/bundle``, no auth)."""
        found = await self.watch_bundle(None)
        return found.trust_domain, found.roots

    async def watch_bundle(self, index: int | None, wait_s: float = 0.0) -> Bundle:
        """The bundle; with ``index``, once its index differs from ``index`` (at once if it
        does already) or after ``wait_s`` seconds. Raises ``ControlError`` subclasses."""
        if index is None:
            resp = await self.control.get(BUNDLE_PATH)
        else:
            resp = await self.control.get(BUNDLE_PATH, bundle_query(index, wait_s), wait_s=wait_s)
        if resp.status != 200:
            raise ControlUnavailable(f"bundle: {resp.error_text()}")
        answer = resp.parse(BundleAnswer, "bundle")
        return Bundle(
            trust_domain=answer.trust_domain,
            roots=tuple(_pem(r) for r in answer.roots),
            active=None if answer.active is None else _pem(answer.active),
            index=answer.index,
            revoked=frozenset(int(leaf.serial, 16) for leaf in answer.revoked),
        )
