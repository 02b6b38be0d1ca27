"""Request authentication for the inbound path: JWT bearer tokens checked against a JWKS."""

from meshd.authn.errors import AuthnError, JwksUnavailable, JwtInvalid, JwtMissing
from meshd.authn.jwks import FileJwks, JwksSource, KeySet, UrlJwks, jwks_source_for
from meshd.authn.jwt import ALLOWED_ALGORITHMS, Claims, JwtValidator

__all__ = [
    "ALLOWED_ALGORITHMS",
    "AuthnError",
    "Claims",
    "FileJwks",
    "JwksSource",
    "JwksUnavailable",
    "JwtInvalid",
    "JwtMissing",
    "JwtValidator",
    "KeySet",
    "UrlJwks",
    "jwks_source_for",
]
