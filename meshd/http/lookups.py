"""What the HTTP parsers look up per message, at less than the cost of asking llhttp or bytes.

The parsers' callbacks run for every header of every request and response, and compiled with
mypyc the generic calls in them cost more than the rest of the callback together: a method
call on ``bytes`` (``find()``, ``strip()``, ``lower()``) is a few hundred instructions,
llhttp's ``get_http_version()`` formats a str (~2k). So:

* ``Connection`` values are split and lower-cased once per distinct value and remembered (peers
  send the same one or two over and over). Memos are bounded: only short keys, and a memo
  starts over when full, so a peer sending endless distinct values costs memory for at most
  :data:`MEMO_ENTRIES` short ones. (Header names are not remembered: a dict lookup hashes the
  new name, which costs what ``lower()`` and the set lookup after it save.)
* a message's HTTP version is read from the bytes of its first line when those bytes start
  the data fed to the parser (:func:`request_line_version`, :func:`status_line_version`).
* header names are lower-cased with ``translate(LOWER)``, which mypyc compiles to a C loop,
  where ``lower()`` is a generic method call (the same result: ASCII letters only); a
  ``Content-Length`` value is read by :func:`decimal`.
"""

from __future__ import annotations

from typing import Final, TypeVar

__all__ = [
    "LOWER",
    "MEMO_ENTRIES",
    "connection_tokens",
    "decimal",
    "remember",
    "request_line_version",
    "status_line_version",
]

#: Most entries of one memo before it starts over.
MEMO_ENTRIES: Final = 512
#: Longest key a memo keeps.
_MEMO_KEY_BYTES: Final = 64

_T = TypeVar("_T")

_TOKENS: Final[dict[bytes, tuple[bytes, ...]]] = {}

#: ``name.translate(LOWER) == name.lower()``: A-Z to a-z, every other byte as it is.
LOWER: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


def decimal(value: bytes) -> int:
    """``int(value)`` for the digits of a ``Content-Length`` that llhttp has checked: a loop
    over the bytes (a few dozen instructions compiled, where ``int()`` takes ~600); anything
    but plain digits goes to ``int()``."""
    n = 0
    for i in range(len(value)):
        digit = value[i] - 48
        if not 0 <= digit <= 9:
            return int(value)
        n = n * 10 + digit
    return n if value else int(value)


def remember(memo: dict[bytes, _T], key: bytes, value: _T, max_key: int = _MEMO_KEY_BYTES) -> _T:
    """Put ``key: value`` in ``memo`` unless ``key`` is longer than ``max_key`` (the memo
    starts over when full); returns ``value``."""
    if len(key) <= max_key:
        if len(memo) >= MEMO_ENTRIES:
            memo.clear()
        memo[key] = value
    return value


def connection_tokens(value: bytes) -> tuple[bytes, ...]:
    """The tokens of a ``Connection`` value, stripped and lower case (remembered)."""
    tokens = _TOKENS.get(value)
    if tokens is not None:
        return tokens
    # find, not `in`: bytes.__contains__ first tries its argument as an int and formats
    # (then clears) a TypeError, ~1.8k instructions on CPython 3.11.
    if value.find(b",") >= 0:
        tokens = tuple(t.strip().lower() for t in value.split(b","))
    else:  # one token, as nearly always: no generator for it
        tokens = (value.strip().lower(),)
    return remember(_TOKENS, value, tokens)


# The version from the bytes, not from llhttp: the parsers call these only for a message
# that began at the first byte of the data fed (they were between messages before the feed,
# and it is the first message of that feed), and only once llhttp has accepted its first line
# (from on_headers_complete). Anything unexpected (a leading CRLF, a line split over reads,
# extra spaces) gives b"", and the parser asks llhttp.


def request_line_version(data: bytes, method: bytes, target: bytes) -> bytes:
    """``b"1.1"`` when ``data`` starts with exactly ``<method> <target> HTTP/1.1``, else b""."""
    n = len(method)
    end = n + 1 + len(target)
    if (
        data[:n] == method
        and data[n : n + 1] == b" "
        and data[n + 1 : end] == target
        and data[end : end + 6] == b" HTTP/"
    ):
        version = data[end + 6 : end + 9]
        if len(version) == 3:
            return version
    return b""


def status_line_version(data: bytes) -> bytes:
    """``b"1.1"`` when ``data`` starts with ``HTTP/1.1``, else b""."""
    return data[5:8] if len(data) >= 8 and data[:5] == b"HTTP/" else b""
