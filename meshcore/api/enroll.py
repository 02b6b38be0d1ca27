"""Wire models of the identity routes a sidecar calls on controld: enrollment, renewal and the
trust bundle (the enrollment contract of issue 5).

* ``POST /v1/enroll`` (:class:`EnrollRequest`) -> :class:`IssuedAnswer`: the join token is
  the credential (single use); the answer carries the service's sidecar token.
* ``POST /v1/renew`` (:class:`RenewRequest`) over mutual TLS on controld's TLS listener: the
  current leaf, presented as client certificate, is the credential -> :class:`IssuedAnswer`.
* ``GET /v1/bundle[?index=<n>&wait=<s>]`` (no auth) -> :class:`BundleAnswer`, its index also
  in the :data:`INDEX_HEADER` header: with ``index`` a blocking query (as in Consul)
  answered when the bundle's index differs from ``n``, or after ``wait``.

An older controld answers the bundle as ``{trust_domain, roots}`` only and the enrollment
without ``identity_id``/``bundle_index``: those fields are optional when read. Answers ignore
unknown fields; requests refuse them.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field

from meshcore.api.telemetry import Answer, Request

__all__ = [
    "BUNDLE_PATH",
    "ENROLL_PATH",
    "INDEX_HEADER",
    "INDEX_PARAM",
    "INSTANCE_PATTERN",
    "MAX_REVOKED",
    "RENEW_PATH",
    "WAIT_PARAM",
    "BundleAnswer",
    "EnrollRequest",
    "IssuedAnswer",
    "RenewRequest",
    "RevokedLeaf",
    "bundle_query",
]

ENROLL_PATH: Final = "/v1/enroll"
RENEW_PATH: Final = "/v1/renew"
BUNDLE_PATH: Final = "/v1/bundle"
#: Query parameters of the bundle's blocking query.
INDEX_PARAM: Final = "index"
WAIT_PARAM: Final = "wait"
#: Header carrying the bundle's index.
INDEX_HEADER: Final = "X-Meshd-Index"
#: What a sidecar may call itself (printable ASCII, no spaces); meshd sends nothing else.
INSTANCE_PATTERN: Final = r"^[!-~]{1,253}$"
#: Most revoked serials a bundle may carry (a bigger list is refused as malformed).
MAX_REVOKED: Final = 100_000

#: A PEM block (or another non-empty text) that must be a JSON string.
_Text = Annotated[str, Field(strict=True, min_length=1)]
#: A bundle index.
_Index = Annotated[int, Field(strict=True, ge=0)]


def bundle_query(index: int, wait_s: float) -> dict[str, str]:
    """The blocking query of ``GET /v1/bundle``: answer once the index isn't ``index``."""
    return {INDEX_PARAM: str(index), WAIT_PARAM: f"{wait_s:g}s"}


class EnrollRequest(Request):
    """Body of ``POST /v1/enroll``."""

    token: str = Field(min_length=1, max_length=256)
    csr: str = Field(min_length=1, max_length=16384)
    #: The sidecar's proxy id, recorded with its identity (for display).
    instance: str | None = Field(default=None, pattern=INSTANCE_PATTERN)


class RenewRequest(Request):
    """Body of ``POST /v1/renew`` (over mutual TLS: the client certificate is the credential)."""

    csr: str = Field(min_length=1, max_length=16384)


class IssuedAnswer(Answer):
    """Answer of ``POST /v1/enroll`` and ``POST /v1/renew``: a leaf and the trust bundle."""

    #: The enrolled instance's identity id ("" from an older controld).
    identity_id: str = ""
    #: The leaf (PEM).
    certificate: _Text
    #: The trusted roots (PEM).
    bundle: list[_Text]
    #: The index of ``bundle`` (see :class:`BundleAnswer`).
    bundle_index: _Index | None = None
    spiffe_id: _Text
    #: The leaf's expiry (RFC 3339).
    not_after: _Text
    #: The service's API token for the snapshot long-poll (None: keep the one in use).
    sidecar_token: str | None = None


class RevokedLeaf(Answer):
    """A revoked leaf that hasn't expired: peers presenting it are refused."""

    #: Its serial number, hex.
    serial: str = Field(strict=True, pattern=r"^[0-9a-fA-F]{1,40}$")
    #: Its expiry (RFC 3339), after which it leaves the bundle.
    not_after: str | None = None
    #: The identity id of the instance it was issued to.
    identity: str | None = None


class BundleAnswer(Answer):
    """Answer of ``GET /v1/bundle``: the trust domain and the trusted roots.

    controld builds it by hand (a woken blocking query serves it to every sidecar); a test
    holds that body to this model.
    """

    trust_domain: _Text
    #: Every trusted root (PEM).
    roots: list[_Text] = Field(min_length=1)
    #: The root that signs new leaves (PEM).
    active: str | None = None
    #: Its id.
    active_id: str | None = None
    #: Changes whenever roots, signer or revocations do.
    index: _Index | None = None
    #: Revoked, unexpired leaves.
    revoked: list[RevokedLeaf] = Field(default_factory=list, max_length=MAX_REVOKED)
