"""Request ids and W3C trace context (``traceparent``) for proxied requests."""

from __future__ import annotations

import random
import re
from binascii import hexlify
from typing import Final

_TRACEPARENT: Final = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16


# Ids come from a per-process PRNG, not os.urandom: they must be unique, not secret, and a
# getrandom(2) call per id costs more than the rest of building the header. The digits come
# from hexlify over the number's bytes: a third of the cost of %-formatting a wide integer.
# A request's ids are drawn at once (:func:`new_ids`): one draw, one conversion and one hexlify
# where a request id and a trace context drawn apart took two of each.

#: Hex digits of :func:`new_ids`: the request id, then this proxy's trace id and span id.
IDS_HEX: Final = 80


def new_ids(rng: random.Random) -> bytes:
    """80 random hex digits: a request id (the first 32, the form of nginx's ``$request_id``),
    then a trace id (32) and a span id (16) for :func:`next_traceparent`, neither all zeros."""
    return _hexlify((rng.getrandbits(320) | _NONZERO).to_bytes(40, "big"))


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
    if incoming is not None:
        m = _TRACEPARENT.match(incoming)
        if (
            m is not None
            and m.group(1) != b"ff"
            and m.group(2) != _ZERO_TRACE
            and m.group(3) != _ZERO_SPAN
            and (m.group(1) != b"00" or len(incoming) == 55)
        ):
            return b"00-" + m.group(2) + b"-" + fresh[64:80] + b"-" + m.group(4)
    flags = b"01" if sample_rate > 0 and rng.random() < sample_rate else b"00"
    return b"".join((b"00-", fresh[32:64], b"-", fresh[64:80], b"-", flags))


# The low bit of the trace id and of the span id set: W3C trace context forbids all zeros.
_NONZERO: Final = 1 << 64 | 1
_hexlify: Final = hexlify


def trace_id(traceparent: bytes) -> str:
    """The trace id part of a ``traceparent`` this module produced."""
    return traceparent[3:35].decode("ascii")
