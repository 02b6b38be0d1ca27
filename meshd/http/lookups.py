"""What the HTTP parsers look up per header and per message, at the cost of a dict lookup.

The parsers' callbacks run for every header of every request and response, and compiled with
mypyc the generic calls in them cost more than the rest of the callback together: a method
call on ``bytes`` (``lower()``, ``strip()``) is a few hundred instructions, llhttp's
``get_http_version()`` formats a str (~2k). So:

* header names and ``Connection`` values are lower-cased / split once per distinct value and
  remembered (peers send the same few over and over; the remembered lower-case name also keeps
  its hash for the set lookups that follow). The memos are bounded: only short keys, and a
  memo starts over when full, so a peer sending endless distinct names costs memory for at
  most :data:`MEMO_ENTRIES` short ones;
* a message's HTTP version is read from the bytes of its first line when those bytes start
  the data fed to the parser (:func:`request_line_version`, :func:`status_line_version`).
"""

from __future__ import annotations

from typing import Final, TypeVar

__all__ = [
    "LOWER_NAMES",
    "MEMO_ENTRIES",
    "connection_tokens",
    "lower_name",
    "remember",
    "request_line_version",
    "status_line_version",
]

#: Most entries of one memo before it starts over.
MEMO_ENTRIES: Final = 512
#: Longest key a memo keeps.
_MEMO_KEY_BYTES: Final = 64

_T = TypeVar("_T")

#: Header names as received -> lower case (callers look here first, then call lower_name:
#: one dict lookup per header, no Python call, in the pure Python build too).
LOWER_NAMES: Final[dict[bytes, bytes]] = {}
_TOKENS: Final[dict[bytes, tuple[bytes, ...]]] = {}


def remember(memo: dict[bytes, _T], key: bytes, value: _T, max_key: int = _MEMO_KEY_BYTES) -> _T:
    """Put ``key: value`` in ``memo`` unless ``key`` is longer than ``max_key`` (the memo
    starts over when full); returns ``value``."""
    if len(key) <= max_key:
        if len(memo) >= MEMO_ENTRIES:
            memo.clear()
        memo[key] = value
    return value


def lower_name(name: bytes) -> bytes:
    """``name.lower()``, remembered for short names."""
    lname = LOWER_NAMES.get(name)
    if lname is None:
        return remember(LOWER_NAMES, name, name.lower())
    return lname


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
