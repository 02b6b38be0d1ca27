"""Strict HTTP/1.1: what the proxy refuses even though llhttp parses it.

* ``Host`` must be an RFC 3986 host (a reg-name of non-empty dot-separated labels, an IPv4
  address or a bracketed IPv6 address) with an optional port of 1 to 5 digits up to 65535.
  Userinfo, spaces, ``/``, ``..``, an empty value or an IPvFuture literal are refused: the
  app and the access log would otherwise disagree with the proxy about the authority.
* Only HTTP/1.0 and HTTP/1.1 are spoken; llhttp also takes HTTP/0.9 and ``HTTP/2.0`` request
  lines, which must never go upstream as HTTP/1.1.
* ``Connection`` may name hop-by-hop headers, but never the headers that frame or route a
  request or that the mesh itself sets or trusts: such tokens are ignored (the header is
  forwarded, or regenerated, as usual) rather than letting a client strip ``Host``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from meshd.http.lookups import remember

#: Versions the proxy speaks; anything else llhttp accepts is answered 505.
SUPPORTED_VERSIONS: Final = frozenset({b"1.0", b"1.1"})

#: Prefix of the headers the mesh sets or trusts: a client never gets to send one.
MESH_HEADER_PREFIX: Final = b"x-meshd-"

#: Headers a ``Connection`` token can't remove (compared lower-case).
PROTECTED_HEADERS: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-request-id",
        b"traceparent",
        b"x-forwarded-for",
    }
)

_LABEL: Final = rb"(?:[A-Za-z0-9\-_~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+"
_HOST: Final = re.compile(
    rb"(?:(?P<name>" + _LABEL + rb"(?:\." + _LABEL + rb")*\.?)|\[(?P<ip6>[0-9A-Fa-f:.]+)\])"
    rb"(?::(?P<port>[0-9]{1,5}))?"
)


#: Longest Host value whose verdict is cached (a DNS name is at most 253 bytes, plus a port).
_CACHED_HOST_BYTES: Final = 260


#: Verdicts of recent Host values (a plain dict, see meshd.http.lookups: lru_cache's
#: bookkeeping costs more per call than the lookup).
_VERDICTS: Final[dict[bytes, bool]] = {}


def valid_host(value: bytes) -> bool:
    """True if ``value`` is ``host[:port]`` as RFC 3986 defines it (see the module doc)."""
    # Clients send the same few Host values over and over, so the verdict is remembered; only
    # for short values, so the memo holds little memory however large a client makes them.
    verdict = _VERDICTS.get(value)
    if verdict is None:
        return remember(_VERDICTS, value, _valid_host(value), _CACHED_HOST_BYTES)
    return verdict


def _valid_host(value: bytes) -> bool:
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    port = match.group("port")
    if port is not None and int(port) > 65535:
        return False
    ip6 = match.group("ip6")
    if ip6 is not None:
        try:
            ipaddress.IPv6Address(ip6.decode("ascii"))
        except ValueError:
            return False
    return True


def removable(token: bytes) -> bool:
    """True if a ``Connection`` token (lower-case) may remove the header it names."""
    return token not in PROTECTED_HEADERS and not token.startswith(MESH_HEADER_PREFIX)
