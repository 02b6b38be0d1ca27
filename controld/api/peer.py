"""The SPIFFE ID of a request's verified client certificate (controld's TLS listener)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from cryptography import x509

from controld.ca.authority import leaf_spiffe_id

__all__ = ["peer_spiffe_id"]


def peer_spiffe_id(scope: Mapping[str, Any]) -> str | None:
    """The SPIFFE URI SAN of the client certificate the TLS listener verified for this
    request (ASGI TLS extension); None without one, or when it carries no single SPIFFE ID."""
    tls = scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    return _spiffe_of(str(chain[0])) if chain else None


# A sidecar long-polls every 30 s over the same certificate: parse each one once (a pure
# function of the PEM, so a bounded memo is safe).
@lru_cache(maxsize=4096)
def _spiffe_of(pem: str) -> str | None:
    try:
        return leaf_spiffe_id(x509.load_pem_x509_certificate(pem.encode("ascii")))
    except (ValueError, UnicodeEncodeError):
        return None
