"""JSON Web Key Sets for JWT validation, from a file or a URL, cached.

A :class:`JwksSource` answers "which keys may have signed a token with this ``kid``?".

* :class:`FileJwks` re-reads its file when the file changes (mtime, size or inode), checking
  at most every ``check_interval_s`` (and at once on an unknown ``kid``: a ``stat`` is cheap).
* :class:`UrlJwks` fetches with the stdlib ``urllib`` in a worker thread (bounded in time and
  size), keeps the set for ``Cache-Control: max-age`` or ``default_ttl_s``, and refreshes early
  when a token names an unknown ``kid`` (a rotated signing key), but never more often than
  once per ``min_refresh_interval_s``, so a flood of made-up ``kid``\\ s can't become a fetch
  storm against the identity provider.

Both keep the last good set when a reload fails, and raise :class:`JwksUnavailable` only when
no set was ever loaded. Only asymmetric signature keys are kept (RSA, EC P-256, Ed25519, of
the algorithms in :data:`ALLOWED_ALGORITHMS`); symmetric (``oct``), private, encryption-only
and too-short keys are dropped, so a JWKS can never turn into an HMAC secret.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlsplit

import trio
from jwt import PyJWK, PyJWTError

from meshcore.errors import ConfigError
from meshcore.model.policy import JwtRequirement
from meshd.authn.errors import JwksUnavailable

__all__ = [
    "ALLOWED_ALGORITHMS",
    "FileJwks",
    "JwksSource",
    "KeySet",
    "UrlJwks",
    "jwks_source_for",
    "parse_jwks",
]

#: Signature algorithms accepted at all: asymmetric only (never ``none`` or ``HS*``).
ALLOWED_ALGORITHMS: Final = frozenset({"RS256", "ES256", "EdDSA"})
#: Largest JWKS document read (file or URL).
MAX_JWKS_BYTES: Final = 1024 * 1024
#: Most keys kept from one document.
MAX_KEYS: Final = 100
_ASYMMETRIC: Final = frozenset({"RSA", "EC", "OKP"})


class KeySet:
    """An immutable set of verification keys, indexed by ``kid``."""

    __slots__ = ("_by_kid", "_keys", "_unnamed")

    def __init__(self, keys: tuple[PyJWK, ...]) -> None:
        by_kid: dict[str, list[PyJWK]] = {}
        unnamed: list[PyJWK] = []
        for key in keys:
            if key.key_id is None:
                unnamed.append(key)
            else:
                by_kid.setdefault(key.key_id, []).append(key)
        self._keys = keys
        # Keys without a kid may have signed any token, so they are candidates for every kid.
        self._unnamed = tuple(unnamed)
        self._by_kid: Mapping[str, tuple[PyJWK, ...]] = {
            kid: (*named, *self._unnamed) for kid, named in by_kid.items()
        }

    def __len__(self) -> int:
        return len(self._keys)

    def find(self, kid: str | None) -> tuple[PyJWK, ...]:
        """Keys that may verify a token with ``kid`` (every key when the token has none)."""
        if kid is None:
            return self._keys
        return self._by_kid.get(kid, self._unnamed)

    def knows(self, kid: str | None) -> bool:
        """Whether some key may verify a token with ``kid``."""
        return bool(self.find(kid))


class JwksSource(Protocol):
    """Where a validator gets its keys from."""

    async def find(self, kid: str | None) -> tuple[PyJWK, ...]:
        """Keys that may have signed a token with ``kid``, reloading first if due.

        Raises :class:`JwksUnavailable` when no key set could ever be loaded.
        """
        ...


class JwksParseError(ValueError):
    """A JWKS document is not valid JSON or has no usable key."""


def parse_jwks(data: bytes) -> KeySet:
    """Parse a JWKS document, keeping only usable asymmetric signature keys.

    Raises :class:`JwksParseError` when the document is not a JWKS or no key is usable.
    """
    if len(data) > MAX_JWKS_BYTES:
        raise JwksParseError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise JwksParseError(f"JWKS is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksParseError('JWKS must be an object with a "keys" list')
    keys: list[PyJWK] = []
    for entry in doc["keys"][: MAX_KEYS * 4]:
        key = _usable_key(entry)
        if key is not None:
            keys.append(key)
            if len(keys) == MAX_KEYS:
                break
    if not keys:
        raise JwksParseError("JWKS has no usable signature key")
    return KeySet(tuple(keys))


def _usable_key(entry: object) -> PyJWK | None:
    if not isinstance(entry, dict) or entry.get("kty") not in _ASYMMETRIC:
        return None
    if "d" in entry or entry.get("use", "sig") != "sig":
        return None
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    try:
        key = PyJWK(entry)
    except (PyJWTError, ValueError, TypeError, KeyError):
        return None
    if key.algorithm_name not in ALLOWED_ALGORITHMS:
        return None
    if key.Algorithm.check_key_length(key.key) is not None:
        return None
    return key


class FileJwks:
    """A JWKS read from a local file, re-read when the file changes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = Path(path)
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._lock = trio.Lock()
        self._keys: KeySet | None = None
        self._seen: tuple[int, int, int] | None = None
        self._next_check = float("-inf")
        #: Why the last load failed ("" after a good one); for the admin endpoint.
        self.last_error = ""
        #: How many times the file was read.
        self.loads = 0

    @property
    def path(self) -> Path:
        """The file read."""
        return self._path

    async def find(self, kid: str | None) -> tuple[PyJWK, ...]:
        """See :meth:`JwksSource.find`."""
        now = self._clock()
        # An unknown kid re-checks at once: the file may just have been rotated.
        if self._keys is None or now >= self._next_check or not self._keys.knows(kid):
            await self._check(now)
        if self._keys is None:
            raise JwksUnavailable(f"JWKS file {self._path}: {self.last_error}")
        return self._keys.find(kid)

    async def _check(self, now: float) -> None:
        async with self._lock:
            self._next_check = now + self._check_interval_s
            try:
                st = self._stat()
            except OSError as exc:
                self.last_error = exc.strerror or str(exc)
                self._seen = None
                return
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
            if seen == self._seen:
                return
            # Remembered before reading: a broken file is not re-parsed on every request, and
            # the write that repairs it changes the mtime again.
            self._seen = seen
            self.loads += 1
            try:
                data = await trio.to_thread.run_sync(self._read)
                keys = parse_jwks(data)
            except OSError as exc:
                self.last_error = exc.strerror or str(exc)
                return
            except JwksParseError as exc:
                self.last_error = str(exc)
                return
            self._keys = keys
            self.last_error = ""

    def _stat(self) -> os.stat_result:
        return self._path.stat()

    def _read(self) -> bytes:
        with self._path.open("rb") as fh:
            data = fh.read(MAX_JWKS_BYTES + 1)
        return data


class UrlJwks:
    """A JWKS fetched over HTTP(S), cached for its ``max-age`` (or ``default_ttl_s``)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        default_ttl_s: float = 300.0,
        max_ttl_s: float = 24 * 3600.0,
        min_refresh_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ConfigError(f"jwks_uri must be an http:// or https:// URL: {url!r}")
        self._url = url
        self._timeout_s = timeout_s
        self._default_ttl_s = default_ttl_s
        self._max_ttl_s = max_ttl_s
        self._min_refresh_interval_s = min_refresh_interval_s
        self._clock = clock
        self._lock = trio.Lock()
        self._keys: KeySet | None = None
        self._expires = float("-inf")
        self._last_attempt: float | None = None
        # Only HTTP(S) handlers: a redirect or a typo can't make this read file:// or ftp://.
        self._opener = urllib.request.OpenerDirector()
        for handler in (
            urllib.request.ProxyHandler(),
            urllib.request.HTTPHandler(),
            urllib.request.HTTPSHandler(context=ssl_context or ssl.create_default_context()),
            urllib.request.HTTPRedirectHandler(),
            urllib.request.HTTPDefaultErrorHandler(),
            urllib.request.HTTPErrorProcessor(),
        ):
            self._opener.add_handler(handler)
        #: Why the last fetch failed ("" after a good one); for the admin endpoint.
        self.last_error = ""
        #: Fetch attempts made, failed ones included.
        self.fetches = 0

    @property
    def url(self) -> str:
        """The URL fetched."""
        return self._url

    async def find(self, kid: str | None) -> tuple[PyJWK, ...]:
        """See :meth:`JwksSource.find`."""
        keys = self._keys
        if keys is None or self._clock() >= self._expires or not keys.knows(kid):
            await self._refresh()
            keys = self._keys
        if keys is None:
            raise JwksUnavailable(f"JWKS {self._url}: {self.last_error}")
        return keys.find(kid)

    async def _refresh(self) -> None:
        async with self._lock:
            # Checked under the lock: requests that queued behind a fetch use its result.
            now = self._clock()
            last = self._last_attempt
            if last is not None and now - last < self._min_refresh_interval_s:
                return
            self._last_attempt = now
            self.fetches += 1
            try:
                with trio.fail_after(self._timeout_s * 2 + 1):
                    data, max_age = await trio.to_thread.run_sync(
                        self._fetch, abandon_on_cancel=True
                    )
                keys = parse_jwks(data)
            except trio.TooSlowError:
                self.last_error = f"no answer within {self._timeout_s * 2 + 1:g} s"
                return
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # URLError/HTTPError are OSErrors; JwksParseError is a ValueError.
                self.last_error = str(exc) or type(exc).__name__
                return
            self._keys = keys
            self._expires = now + (self._default_ttl_s if max_age is None else max_age)
            self.last_error = ""

    def _fetch(self) -> tuple[bytes, float | None]:
        request = urllib.request.Request(  # noqa: S310 (scheme checked in __init__)
            self._url,
            headers={"Accept": "application/jwk-set+json, application/json"},
        )
        try:
            response = self._opener.open(request, timeout=self._timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise OSError(f"HTTP {exc.code} from {self._url}") from None
        with response:
            data = response.read(MAX_JWKS_BYTES + 1)
            cache_control = response.headers.get("Cache-Control")
        return data, self._max_age(cache_control)

    def _max_age(self, cache_control: str | None) -> float | None:
        if not cache_control:
            return None
        for directive in cache_control.lower().split(","):
            name, _, value = directive.strip().partition("=")
            if name in ("no-store", "no-cache"):
                return 0.0
            if name == "max-age":
                value = value.strip().strip('"')
                if value.isdigit():
                    return min(float(value), self._max_ttl_s)
        return None


def jwks_source_for(
    requirement: JwtRequirement, *, clock: Callable[[], float] = time.monotonic
) -> FileJwks | UrlJwks:
    """The source a requirement names (``jwks_file`` or ``jwks_uri``).

    Sources cache; build one per distinct file/URL and share it between validators.
    """
    if requirement.jwks_file is not None:
        return FileJwks(requirement.jwks_file, clock=clock)
    assert requirement.jwks_uri is not None, "JwtRequirement demands one source"
    return UrlJwks(requirement.jwks_uri, clock=clock)
