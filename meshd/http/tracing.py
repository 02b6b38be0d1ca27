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


def new_request_id(rng: random.Random) -> bytes:
    """A random 128-bit id as 32 hex digits (the form of nginx's ``$request_id``)."""
    return hexlify(rng.getrandbits(128).to_bytes(16, "big"))


def next_traceparent(incoming: bytes | None, sample_rate: float, rng: random.Random) -> bytes:
    """The ``traceparent`` to send upstream: this proxy's span as a child of ``incoming``.

    A valid incoming header keeps its trace id and flags, with a new parent (span) id; an
    absent or invalid one starts a new trace, sampled with probability ``sample_rate``.
    """
    if incoming is not None:
        m = _TRACEPARENT.match(incoming)
        if (
            m is not None
            and m.group(1) != b"ff"
            and m.group(2) != _ZERO_TRACE
            and m.group(3) != _ZERO_SPAN
            and (m.group(1) != b"00" or len(incoming) == 55)
        ):
            span = hexlify((rng.getrandbits(64) | 1).to_bytes(8, "big"))
            return b"00-" + m.group(2) + b"-" + span + b"-" + m.group(4)
    flags = b"01" if sample_rate > 0 and rng.random() < sample_rate else b"00"
    # One draw for trace id and span id; the low bit set keeps both from being all zeros,
    # which W3C trace context forbids.
    ids = hexlify((rng.getrandbits(192) | _NONZERO).to_bytes(24, "big"))
    return b"".join((b"00-", ids[:32], b"-", ids[32:], b"-", flags))


_NONZERO: Final = 1 << 64 | 1


def trace_id(traceparent: bytes) -> str:
    """The trace id part of a ``traceparent`` this module produced."""
    return traceparent[3:35].decode("ascii")
