"""Request paths normalized before anything looks at them (RFC 3986 6.2.2).

Route matching, the access policy and the app must all see the same path, or a request such
as ``/api/../admin`` matches the ``/api/`` route (or an allow rule) and then reaches the app as
``/admin``. So the sidecar normalizes the path of every request target once, before the access
check and routing, and forwards the normalized target:

* percent-encodings of unreserved characters are decoded (``%41`` -> ``A``, ``%2e`` -> ``.``),
  other encodings are kept with upper-case hex digits; an encoded ``/`` (``%2F``) or ``\\``
  (``%5C``) stays encoded, so it never becomes a segment separator;
* empty segments are merged (``//`` -> ``/``);
* dot segments are removed (``/a/./b/../c`` -> ``/a/c``; never above the root).

A malformed percent-encoding is refused (:class:`MalformedPath`; the sidecar answers 400).
The query string is left as it is. Pure: meshd normalizes every request with it, and
``meshctl explain`` (controld) normalizes the path it is asked about the same way.
"""

from __future__ import annotations

from typing import Final

from meshcore.errors import MeshError

__all__ = ["MalformedPath", "normalize_target"]


class MalformedPath(MeshError, ValueError):
    """A path with a malformed percent-encoding."""


_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def normalize_target(target: bytes) -> bytes:
    """``target`` (origin form, ``/path?query``, or ``*``) with its path normalized."""
    if _normal(target):
        return target  # the common case: nothing to do
    path, sep, query = target.partition(b"?")
    if path.find(b"%") >= 0:
        path = _decode_unreserved(path)
    return _remove_dot_segments(path) + sep + query


def _normal(target: bytes) -> bool:
    """Whether the path of ``target`` has nothing to normalize: no "%", "//" or "/.".

    A loop over the bytes, not ``partition`` and ``find``: this runs for every request, and
    compiled with mypyc a bytes method call costs 1-2 thousand instructions (its arguments are
    parsed at run time), a byte read here a handful.
    """
    previous = 0
    for i in range(len(target)):
        byte = target[i]
        if byte == _QUESTION:  # the query is left as it is
            return True
        if byte == _PERCENT or (previous == _SLASH and byte in (_SLASH, _DOT)):
            return False
        previous = byte
    return True


_QUESTION: Final = 0x3F
_PERCENT: Final = 0x25
_SLASH: Final = 0x2F
_DOT: Final = 0x2E


def _decode_unreserved(path: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(path)
    while i < n:
        byte = path[i]
        if byte != 0x25:  # "%"
            out.append(byte)
            i += 1
            continue
        digits = path[i + 1 : i + 3]
        if len(digits) != 2 or digits[0] not in _HEX or digits[1] not in _HEX:
            raise MalformedPath("malformed percent-encoding in the path")
        value = int(digits, 16)
        if value in _UNRESERVED:
            out.append(value)
        else:
            out += b"%" + digits.upper()
        i += 3
    return bytes(out)


def _remove_dot_segments(path: bytes) -> bytes:
    parts = path.split(b"/")[1:]
    kept: list[bytes] = []
    for part in parts:
        if part == b".." and kept:
            kept.pop()
        elif part not in (b"", b".", b".."):
            kept.append(part)
    # A path that ends in "/", "/." or "/.." names a directory: keep its trailing slash.
    trailing = bool(kept) and parts[-1] in (b"", b".", b"..")
    return b"/" + b"/".join(kept) + (b"/" if trailing else b"")
