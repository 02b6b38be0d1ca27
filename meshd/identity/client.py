"""Enrollment and renewal calls to controld (the enrollment contract of issue 5).

* ``POST /v1/enroll {token, csr}`` -> ``{certificate, bundle, spiffe_id, not_after,
  sidecar_token}``: the join token is the credential (single use).
* ``POST /v1/renew {csr}`` over mutual TLS on controld's TLS listener: the current leaf,
  presented as client certificate, is the credential (the connection's context comes from
  :class:`~meshd.identity.trust.ControldTrust`).
* ``GET /v1/bundle[?index=<n>&wait=<s>]`` -> ``{trust_domain, roots, active, active_id,
  index, revoked}`` (header ``X-Meshd-Index``): with ``index`` a blocking query answered when
  the bundle's index differs from ``n`` or after ``wait``; ``revoked`` lists the revoked
  leaves (``{serial: <hex>, not_after, identity}``) that haven't expired. An older controld
  answers ``{trust_domain, roots}`` only (:attr:`Bundle.index` ``None``, nothing revoked).

4xx answers raise :class:`EnrollmentRefused`; unreachable controld, 5xx and malformed answers
raise :class:`~meshd.control.client.ControlError` subclasses (worth retrying).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from meshd.control.client import (
    ControlClient,
    ControlProtocolError,
    ControlResponse,
    ControlUnavailable,
)
from meshd.identity.csr import csr_pem
from meshd.identity.errors import EnrollmentRefused

__all__ = ["MAX_REVOKED", "Bundle", "IdentityClient", "Issued"]

#: Most revoked serials a bundle may carry (a bigger list is refused as malformed).
MAX_REVOKED = 100_000
#: An instance name controld records (printable ASCII, no spaces, at most 253).
_INSTANCE = re.compile(r"^[!-~]{1,253}$")


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


def _index(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _revoked(value: object) -> frozenset[int]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or len(value) > MAX_REVOKED:
        raise ControlProtocolError(f"bundle: 'revoked' is not a list of at most {MAX_REVOKED}")
    serials = set()
    for item in value:
        serial = item.get("serial") if isinstance(item, dict) else None
        if not isinstance(serial, str) or not 0 < len(serial) <= 40:
            raise ControlProtocolError("bundle: a 'revoked' entry has no hex 'serial'")
        try:
            serials.add(int(serial, 16))
        except ValueError as exc:
            raise ControlProtocolError(f"bundle: revoked serial {serial!r} is not hex") from exc
    return frozenset(serials)


def _text(doc: dict[str, Any], name: str, where: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise ControlProtocolError(f"{where}: {name!r} missing or not a string")
    return value


def _issued(resp: ControlResponse, where: str) -> Issued:
    # 408 and 429 are "not now", not "no": retried like an unreachable controld.
    if 400 <= resp.status < 500 and resp.status not in (408, 429):
        raise EnrollmentRefused(f"{where}: {resp.error_text()}", resp.status)
    if resp.status != 200:
        raise ControlUnavailable(f"{where}: {resp.error_text()}")
    doc = resp.json()
    if not isinstance(doc, dict):
        raise ControlProtocolError(f"{where}: the answer is not a JSON object")
    bundle = doc.get("bundle")
    if not isinstance(bundle, list) or not all(isinstance(b, str) and b for b in bundle):
        raise ControlProtocolError(f"{where}: 'bundle' is not a list of PEM strings")
    token = doc.get("sidecar_token")
    return Issued(
        cert_pem=_text(doc, "certificate", where).encode("ascii", "replace"),
        bundle_pems=tuple(b.encode("ascii", "replace") for b in bundle),
        spiffe_id=_text(doc, "spiffe_id", where),
        not_after=_text(doc, "not_after", where),
        sidecar_token=token if isinstance(token, str) and token else None,
        bundle_index=_index(doc.get("bundle_index")),
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
        body = {"token": token, "csr": csr_pem(csr)}
        if instance is not None and _INSTANCE.match(instance):  # else not worth a refusal
            body["instance"] = instance
        resp = await self.control.post_json("/v1/enroll", body)
        return _issued(resp, "enroll")

    async def renew(self, csr: x509.CertificateSigningRequest) -> Issued:
        """A new leaf for ``csr``; the connection presents the current leaf (mutual TLS)."""
        self.control.close()  # a new connection, with the context of the current leaf
        resp = await self.control.post_json("/v1/renew", {"csr": csr_pem(csr)})
        return _issued(resp, "renew")

    async def bundle(self) -> tuple[str, tuple[bytes, ...]]:
        """The trust domain and the current roots (``GET /v1/bundle``, no auth)."""
        found = await self.watch_bundle(None)
        return found.trust_domain, found.roots

    async def watch_bundle(self, index: int | None, wait_s: float = 0.0) -> Bundle:
        """The bundle; with ``index``, once its index differs from ``index`` (at once if it
        does already) or after ``wait_s`` seconds. Raises ``ControlError`` subclasses."""
        if index is None:
            resp = await self.control.get("/v1/bundle")
        else:
            query = {"index": index, "wait": f"{wait_s:g}s"}
            resp = await self.control.get("/v1/bundle", query, wait_s=wait_s)
        if resp.status != 200:
            raise ControlUnavailable(f"bundle: {resp.error_text()}")
        doc = resp.json()
        roots = doc.get("roots") if isinstance(doc, dict) else None
        if (
            not isinstance(roots, list)
            or not roots
            or not all(isinstance(r, str) and r for r in roots)
        ):
            raise ControlProtocolError("bundle: 'roots' is not a list of PEM strings")
        domain = _text(doc, "trust_domain", "bundle")
        active = doc.get("active")
        return Bundle(
            trust_domain=domain,
            roots=tuple(r.encode("ascii", "replace") for r in roots),
            active=active.encode("ascii", "replace") if isinstance(active, str) else None,
            index=_index(doc.get("index")),
            revoked=_revoked(doc.get("revoked")),
        )
