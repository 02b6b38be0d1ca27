"""Wire models of the CA and the enrolled identities (``meshctl ca``, ``identities``,
``revoke``, the dashboard's certificate rotation).

Paths (admin listener, admin token; rotation and revocation are audited):

* ``GET /v1/ca`` -> :class:`CaStatus`
* ``POST /v1/ca/rotate`` (:class:`RotateRequest`) -> :class:`RotateAnswer`; a step out of
  order: 409
* ``GET /v1/identities[?service=S]`` -> :class:`IdentityList`
* ``POST /v1/revocations`` (:class:`RevokeRequest`) -> :class:`RevokeAnswer`

What the sidecars call (enrollment, renewal, the trust bundle) is in
:mod:`meshcore.api.sidecar`. Times are RFC 3339 strings; serials lower-case hex.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field, model_validator

from meshcore.api.base import Answer, Request
from meshcore.model.policy import SERVICE_PATTERN

__all__ = [
    "CA_PATH",
    "CA_ROTATE_PATH",
    "IDENTITIES_PATH",
    "IDENTITY_ID_PATTERN",
    "NEXT_STEP",
    "REVOCATIONS_PATH",
    "CaRoot",
    "CaStatus",
    "Identity",
    "IdentityList",
    "Outstanding",
    "RevokeAnswer",
    "RevokeRequest",
    "RotateAnswer",
    "RotateRequest",
    "RotationStep",
    "TlsListener",
]

CA_PATH = "/v1/ca"
CA_ROTATE_PATH = "/v1/ca/rotate"
IDENTITIES_PATH = "/v1/identities"
REVOCATIONS_PATH = "/v1/revocations"

#: An enrolled instance's identity id (16 hex digits).
IDENTITY_ID_PATTERN: Final = r"^[0-9a-f]{16}$"
SPIFFE_ID_PATTERN: Final = r"^spiffe://[a-z0-9.-]+/ns/[a-z0-9._-]+/svc/[a-z0-9._-]+$"

RotationStep = Literal["stage", "activate", "retire"]
#: The rotation step that follows each phase.
NEXT_STEP: Final[dict[str, RotationStep]] = {
    "stable": "stage",
    "staged": "activate",
    "active": "retire",
}


class Outstanding(Answer):
    """Unexpired leaves a root signed."""

    count: int
    last_expiry: str | None = None
    #: Leaves signed before controld started tracking them may be out until then.
    untracked_until: str | None = None


class CaRoot(Answer):
    """One root of the trust bundle."""

    id: str
    #: It signs the new leaves.
    active: bool
    subject: str
    not_after: str
    outstanding: Outstanding


class TlsListener(Answer):
    """controld's TLS listener (enrollment, renewal, long-polls over mutual TLS)."""

    listen: str
    spiffe_id: str
    not_after: str
    sans: tuple[str, ...] = ()


class CaStatus(Answer):
    """Answer of ``GET /v1/ca``: where a root rotation is, the roots and their leaves."""

    #: ``stable``, ``staged`` (a new root is in the bundle) or ``active`` (it signs).
    phase: str
    #: Id of the signing root.
    active: str
    #: Root ids in the trust bundle, oldest first.
    bundle: tuple[str, ...]
    index: int
    trust_domain: str
    leaf_ttl_s: float
    roots: tuple[CaRoot, ...]
    #: None: no TLS listener (sidecars can't renew).
    tls: TlsListener | None = None
    #: Revoked leaves that haven't expired.
    revoked_leaves: int = 0
    #: CA records skipped as invalid, by kind.
    invalid_records: dict[str, int] = Field(default_factory=dict)


class RotateRequest(Request):
    """Body of ``POST /v1/ca/rotate``."""

    step: RotationStep
    #: ``retire`` even while leaves of the old root are outstanding.
    force: bool = False


class RotateAnswer(Answer):
    """Answer of ``POST /v1/ca/rotate``: the new phase, signer and bundle."""

    phase: str
    active: str
    bundle: tuple[str, ...]
    #: The trusted roots (PEM).
    roots: tuple[str, ...] = ()
    index: int


class Identity(Answer):
    """One enrolled instance."""

    id: str
    service: str
    namespace: str
    spiffe_id: str
    #: The sidecar's proxy id.
    instance: str | None = None
    address: str | None = None
    enrolled: str
    renewed: str | None = None
    #: The current certificate's serial and expiry (None: none current).
    serial: str | None = None
    not_after: str | None = None
    expires_in_s: float | None = None
    #: Serials of its unexpired certificates.
    serials: tuple[str, ...] = ()
    #: When it was revoked, else None.
    revoked: str | None = None


class IdentityList(Answer):
    """Answer of ``GET /v1/identities``."""

    identities: tuple[Identity, ...]


class RevokeRequest(Request):
    """Body of ``POST /v1/revocations``: exactly one of ``identity`` (an instance's identity
    id), ``serial`` (of one of its certificates, hex), ``service`` (every instance; with
    ``namespace``) or ``spiffe_id`` (every instance of it)."""

    identity: str | None = Field(default=None, pattern=IDENTITY_ID_PATTERN)
    serial: str | None = Field(default=None, pattern=r"^(0x)?[0-9a-fA-F]{1,40}$")
    service: str | None = Field(default=None, pattern=SERVICE_PATTERN)
    namespace: str = Field(default="default", pattern=SERVICE_PATTERN)
    spiffe_id: str | None = Field(default=None, pattern=SPIFFE_ID_PATTERN, max_length=512)

    @model_validator(mode="after")
    def _one_target(self) -> RevokeRequest:
        given = [self.identity, self.serial, self.service, self.spiffe_id]
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of identity, serial, service or spiffe_id")
        return self


class RevokeAnswer(Answer):
    """Answer of ``POST /v1/revocations``: the instances revoked; ``spiffe_id`` when a whole
    service was."""

    revoked: tuple[Identity, ...]
    spiffe_id: str | None = None
