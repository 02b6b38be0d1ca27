"""The SPIFFE ID of a request's verified client certificate (controld's TLS listener)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from cryptography import x509
from starlette.requests import Request
from starlette.responses import Response

from controld.api.errors import error_response
from controld.auth import Forbidden, Principal, TokenAuth, Unauthenticated
from controld.ca.authority import leaf_spiffe_id

__all__ = ["authenticate_plain", "peer_spiffe_id"]


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


async def authenticate_plain(auth: TokenAuth, request: Request) -> Principal | Response:
    """For the plain (non-FastAPI) sidecar routes: the caller's principal from its bearer
    token and client certificate, or the 401/403 answer to send instead."""
    try:
        return await auth.authenticate(
            request.headers.get("authorization"), peer_id=peer_spiffe_id(request.scope)
        )
    except Unauthenticated as exc:
        return error_response(401, str(exc), headers={"WWW-Authenticate": "Bearer"})
    except Forbidden as exc:
        return error_response(403, str(exc))
