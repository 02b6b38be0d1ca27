"""controld's certificate authority: roots, SPIFFE leaves, join tokens, per-instance
identities, revocation, rotation."""

from controld.ca.authority import RootCA, generate_root, sign_leaf, spiffe_id, verify_leaf
from controld.ca.errors import (
    CAError,
    CAFileError,
    CSRError,
    IdentityNotFound,
    JoinTokenInvalid,
    RenewalRefused,
    RotationError,
)
from controld.ca.rotation import CertificateAuthority, RotationState
from controld.ca.service import IdentityService, Issued

__all__ = [
    "CAError",
    "CAFileError",
    "CSRError",
    "CertificateAuthority",
    "IdentityNotFound",
    "IdentityService",
    "Issued",
    "JoinTokenInvalid",
    "RenewalRefused",
    "RootCA",
    "RotationError",
    "RotationState",
    "generate_root",
    "sign_leaf",
    "spiffe_id",
    "verify_leaf",
]
