"""Request ids and W3C trace context (``traceparent``) for proxied requests."""

from __future__ import annotations

import os
import random
from binascii import hexlify
from collections.abc import Callable
from typing import Final

#: Each byte's class for :func:`_continues`: ``h`` for a lower-case hex digit, ``-`` for the
#: dash, ``x`` for anything else (a table without deletions: CPython's fast translate).
_CLASSES: Final = bytes(
    [0x68 if c in b"0123456789abcdef" else 0x2D if c == 0x2D else 0x78 for c in range(256)]
)
#: The classes of a ``traceparent``'s first 55 bytes.
_SHAPE: Final = b"hh-" + b"h" * 32 + b"-" + b"h" * 16 + b"-hh"
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16


# Ids must be unique, not secret. A request's ids are drawn at once: the proxied requests' from
# an :class:`IdPool` (the OS's random bytes, 64 requests' worth per getrandom(2) call, made hex
# digits by one hexlify: the int conversions of a PRNG's wide draw, ``getrandbits``, ``|`` and
# ``to_bytes``, cost three times as much); elsewhere :func:`new_ids` from a PRNG.

#: Hex digits of :func:`new_ids`: the request id, then this proxy's trace id and span id.
IDS_HEX: Final = 80


def new_ids(rng: random.Random) -> bytes:
    """80 random hex digits: a request id (the first 32, the form of nginx's ``$request_id``),
    then a trace id (32) and a span id (16) for :func:`next_traceparent`, neither all zeros."""
    return _hexlify((rng.getrandbits(320) | _NONZERO).to_bytes(40, "big"))


#: Requests' ids an :class:`IdPool` draws at once.
ID_BATCH: Final = 64
#: Random bytes per request of a batch (:data:`IDS_HEX` hex digits).
_ID_BYTES: Final = IDS_HEX // 2
#: A run of zero bytes as long as a span id: a batch with none anywhere has no id all zeros.
_ZERO_RUN: Final = bytes(8)


class IdPool:
    """:func:`new_ids`' form for one request after another, :data:`ID_BATCH` requests' worth
    drawn at a time from ``draw`` (``os.urandom``: one ``getrandom(2)`` per batch): taking the
    next 80 digits is a slice. A batch where any 8 bytes in a row are zero (so maybe an id:
    odds of about 1 in 10^16) is drawn again, so no trace id or span id is ever all zeros."""

    __slots__ = ("_at", "_digits", "_draw")

    def __init__(self, draw: Callable[[int], bytes] = os.urandom) -> None:
        self._draw = draw
        self._digits = b""
        self._at = 0

    def take(self) -> bytes:
        """The next request's 80 hex digits: a request id, a trace id, a span id."""
        at = self._at
        digits = self._digits
        if at >= len(digits):
            raw = self._draw(_ID_BYTES * ID_BATCH)
            while _ZERO_RUN in raw:
                raw = self._draw(_ID_BYTES * ID_BATCH)
            digits = self._digits = _hexlify(raw)
            at = 0
        self._at = at + IDS_HEX
        return digits[at : at + IDS_HEX]


def next_traceparent(
    incoming: bytes | None, sample_rate: float, rng: random.Random, fresh: bytes = b""
) -> bytes:
    """The ``traceparent`` to send upstream: this proxy's span as a child of ``incoming``.

    A valid incoming header keeps its trace id and flags, with a new parent (span) id; an
    absent or invalid one starts a new trace, sampled with probability ``sample_rate``. The
    new ids are ``fresh``'s (from :func:`new_ids`), else drawn here.
    """
    if len(fresh) != IDS_HEX:
        fresh = new_ids(rng)
    # Formatted with %b: compiled, one bytes made from the parts (no list, no join).
    if incoming is not None and _continues(incoming):
        return b"00-%b-%b-%b" % (incoming[3:35], fresh[64:80], incoming[53:55])
    flags = b"01" if sample_rate > 0 and rng.random() < sample_rate else b"00"
    return b"00-%b-%b-%b" % (fresh[32:64], fresh[64:80], flags)


def _continues(incoming: bytes) -> bool:
    """Whether ``incoming`` is a ``traceparent`` to continue: ``version-trace-span-flags``
    in lower-case hex (2, 32, 16 and 2 digits), the version not ``ff``, neither id all zeros,
    and nothing after the flags in version ``00`` (a later version may append fields).

    Checked by hand, not by a regular expression: the match and its four groups cost the
    compiled build about four times as much, on every request that comes with one (any
    request from another sidecar).
    """
    head = incoming[:55]
    # One C loop over the bytes: each becomes its class, which must make the header's shape
    # (a shorter header can't).
    if head.translate(_CLASSES) != _SHAPE:
        return False
    version = head[:2]
    if version == b"ff" or (version == b"00" and len(incoming) != 55):
        return False
    return head[3:35] != _ZERO_TRACE and head[36:52] != _ZERO_SPAN


# The low bit of the trace id and of the span id set: W3C trace context forbids all zeros.
_NONZERO: Final = 1 << 64 | 1
_hexlify: Final = hexlify


def trace_id(traceparent: bytes) -> str:
    """The trace id part of a ``traceparent`` this module produced."""
    return traceparent[3:35].decode("ascii")


#: This process's pool of request ids (from the OS's random bytes: no two processes draw the
#: same ids).
_REQUESTS: Final = IdPool()


def request_ids() -> bytes:
    """The next request's ids (:func:`new_ids`'s form), from this process's pool."""
    return _REQUESTS.take()
