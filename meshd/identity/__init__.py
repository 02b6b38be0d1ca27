"""The sidecar's workload identity: a local key, a leaf from controld's CA, renewed in time."""

from meshd.identity.client import Bundle, IdentityClient, Issued
from meshd.identity.errors import EnrollmentRefused, IdentityError, InvalidIdentity
from meshd.identity.files import IdentityStore
from meshd.identity.material import Identity
from meshd.identity.service import IdentityService, renewal_delay

__all__ = [
    "Bundle",
    "EnrollmentRefused",
    "Identity",
    "IdentityClient",
    "IdentityError",
    "IdentityService",
    "IdentityStore",
    "InvalidIdentity",
    "Issued",
    "renewal_delay",
]
