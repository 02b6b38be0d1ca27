"""Validating JWT bearer tokens against a :class:`~meshcore.model.policy.JwtRequirement`.

PyJWT verifies the JWS signature only; the registered claims are checked here against an
injected wall clock, so tests (and a process whose clock is stepped) decide what "now" is.
Only asymmetric algorithms are accepted, and each key verifies only with the algorithm it is
bound to (its JWK ``alg``, else the one its type implies), so neither ``alg: none`` nor an
``HS256`` token "signed" with a public key can get through.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

from jwt import InvalidSignatureError, PyJWK, PyJWS, PyJWTError

from meshcore.model.policy import JwtRequirement
from meshd.authn.errors import JwtInvalid, JwtMissing
from meshd.authn.jwks import ALLOWED_ALGORITHMS, JwksSource

__all__ = ["ALLOWED_ALGORITHMS", "MAX_TOKEN_BYTES", "Claims", "JwtValidator"]

#: Longest bearer token accepted.
MAX_TOKEN_BYTES: Final = 16 * 1024
# Longer tokens are verified every time rather than held in the cache.
_MAX_CACHED_TOKEN: Final = 4 * 1024

_TOKEN: Final = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Field values may hold HTAB and visible bytes, never CR, LF, NUL or other controls.
_UNSAFE_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class Claims(Mapping[str, Any]):
    """The verified claims of a token (read-only)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = MappingProxyType(dict(values))

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Claims({dict(self._values)!r})"

    @property
    def subject(self) -> str | None:
        """The ``sub`` claim, if it is a string."""
        sub = self._values.get("sub")
        return sub if isinstance(sub, str) else None

    @property
    def issuer(self) -> str:
        """The ``iss`` claim (checked to be the required issuer)."""
        return str(self._values["iss"])


class JwtValidator:
    """Checks bearer tokens for one requirement.

    ``clock`` gives wall-clock seconds since the epoch (``exp``/``nbf`` are compared to it,
    with ``requirement.clock_skew_s`` of tolerance either way). Up to ``cache_size`` verified
    tokens are remembered so a reused token skips the signature check (0: no cache).
    """

    __slots__ = (
        "_audiences",
        "_cache",
        "_cache_size",
        "_clock",
        "_forward",
        "_issuer",
        "_jwks",
        "_jws",
        "_skew",
    )

    def __init__(
        self,
        requirement: JwtRequirement,
        jwks: JwksSource,
        clock: Callable[[], float] = time.time,
        *,
        cache_size: int = 512,
    ) -> None:
        self._issuer = requirement.issuer
        self._audiences = frozenset(requirement.audiences)
        self._skew = requirement.clock_skew_s
        self._jwks = jwks
        self._clock = clock
        self._jws = PyJWS(
            algorithms=sorted(ALLOWED_ALGORITHMS),
            options={"verify_signature": True, "enforce_minimum_key_length": True},
        )
        self._forward = tuple(
            (claim, header.encode("ascii")) for claim, header in requirement.forward_claims.items()
        )
        # Verified tokens (oldest evicted first): clients reuse a token for many requests,
        # and a signature check costs 50-300 us of CPU on the event loop.
        self._cache_size = cache_size
        self._cache: dict[bytes, tuple[str | None, PyJWK, Claims]] = {}

    @property
    def forwarded_header_names(self) -> tuple[bytes, ...]:
        """Headers :meth:`forwarded_headers` may set; strip client-sent copies of these."""
        return tuple(name for _, name in self._forward)

    async def validate(self, authorization_header: bytes | None) -> Claims:
        """Verify the ``Authorization: Bearer <jwt>`` value and return the token's claims.

        Raises :class:`JwtMissing` without a bearer credential, :class:`JwtInvalid` for a
        refused token, :class:`~meshd.authn.errors.JwksUnavailable` when no keys are loaded.
        """
        token = _bearer_token(authorization_header)
        cached = self._cache.get(token)
        if cached is not None:
            kid, key, claims = cached
            # Still signed by a key in the current set (a key dropped from the JWKS stops
            # vouching for its tokens at once); the time-bound claims are checked again.
            if any(candidate is key for candidate in await self._jwks.find(kid)):
                try:
                    self._check(claims)
                except JwtInvalid:
                    self._cache.pop(token, None)
                    raise
                return claims
            self._cache.pop(token, None)
        header = _header(token)
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise JwtInvalid("disallowed_algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise JwtInvalid("malformed")
        candidates = [key for key in await self._jwks.find(kid) if key.algorithm_name == alg]
        if not candidates:
            raise JwtInvalid("unknown_kid")
        for key in candidates:
            try:
                # PyJWT re-parses and checks the whole token; _header only picked the key.
                payload = self._jws.decode(token, key, algorithms=(alg,))
            except InvalidSignatureError:
                continue
            except PyJWTError as exc:
                raise JwtInvalid("malformed") from exc
            break
        else:
            raise JwtInvalid("bad_signature")
        values = _claims(payload)
        self._check(values)
        claims = Claims(values)
        if self._cache_size and len(token) <= _MAX_CACHED_TOKEN:
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[token] = (kid, key, claims)
        return claims

    def _check(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        exp = claims.get("exp")
        if exp is None:
            # A token without expiry could never be cut off once leaked.
            raise JwtInvalid("missing_claim")
        if not _is_number(exp):
            raise JwtInvalid("malformed")
        if exp + self._skew <= now:
            raise JwtInvalid("expired")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _is_number(nbf):
                raise JwtInvalid("malformed")
            if nbf - self._skew > now:
                raise JwtInvalid("not_yet_valid")
        if claims.get("iss") != self._issuer:
            raise JwtInvalid("wrong_issuer")
        if self._audiences:
            aud = claims.get("aud")
            if isinstance(aud, str):
                ok = aud in self._audiences
            elif isinstance(aud, list):
                ok = any(isinstance(one, str) and one in self._audiences for one in aud)
            else:
                ok = False
            if not ok:
                raise JwtInvalid("wrong_audience")

    def forwarded_headers(self, claims: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
        """Request headers carrying the requirement's ``forward_claims``.

        String claims go as UTF-8, others as compact JSON. A claim that is absent, or whose
        value would hold CR, LF or another control byte, is not forwarded.
        """
        out: list[tuple[bytes, bytes]] = []
        for claim, name in self._forward:
            if claim not in claims:
                continue
            value = claims[claim]
            if isinstance(value, str):
                raw = value.encode("utf-8", "surrogatepass")
            else:
                raw = json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")
            if _UNSAFE_VALUE.search(raw) is None:
                out.append((name, raw))
        return out


def _bearer_token(authorization: bytes | None) -> bytes:
    if not authorization:
        raise JwtMissing
    scheme, _, rest = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        raise JwtMissing
    token = rest.strip()
    if len(token) > MAX_TOKEN_BYTES or _TOKEN.fullmatch(token) is None:
        raise JwtInvalid("malformed")
    return token


def _header(token: bytes) -> dict[str, Any]:
    # The token matched _TOKEN, so the segment holds base64url characters only.
    segment = token.partition(b".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))
    except (UnicodeDecodeError, ValueError) as exc:  # binascii.Error is a ValueError
        raise JwtInvalid("malformed") from exc
    if not isinstance(header, dict):
        raise JwtInvalid("malformed")
    return header


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = json.loads(payload, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise JwtInvalid("malformed") from exc
    if not isinstance(claims, dict):
        raise JwtInvalid("malformed")
    return claims


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)
