"""meshd.http.tracing: a request's ids drawn at once, and the traceparent built from them."""

from __future__ import annotations

import random
import re

import pytest

from meshd.http.tracing import ID_BATCH, IDS_HEX, IdPool, new_ids, next_traceparent, request_ids

pytestmark = pytest.mark.timeout(30)

_HEX = re.compile(rb"[0-9a-f]+")
_INCOMING = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_new_ids_are_hex_and_trace_ids_never_zero() -> None:
    rng = random.Random(7)
    for _ in range(200):
        ids = new_ids(rng)
        assert len(ids) == IDS_HEX
        assert _HEX.fullmatch(ids)
        # The low bit of the trace id and of the span id is always set.
        assert ids[63] in b"13579bdf"
        assert ids[79] in b"13579bdf"


def test_traceparent_from_the_ids_drawn_for_the_request() -> None:
    ids = new_ids(random.Random(1))
    assert next_traceparent(None, 0.0, random.Random(2), ids) == (
        b"00-" + ids[32:64] + b"-" + ids[64:80] + b"-00"
    )
    assert next_traceparent(None, 1.0, random.Random(2), ids).endswith(b"-01")
    # A valid incoming trace keeps its id and flags; only the span is this proxy's.
    assert next_traceparent(_INCOMING, 0.0, random.Random(2), ids) == (
        b"00-0af7651916cd43dd8448eb211c80319c-" + ids[64:80] + b"-01"
    )


def test_traceparent_draws_its_own_ids_without_any() -> None:
    out = next_traceparent(None, 0.0, random.Random(3))
    assert re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-00", out)
    assert next_traceparent(None, 0.0, random.Random(3)) == out  # the same seed, the same ids


def _with(at: int, byte: bytes, base: bytes = _INCOMING) -> bytes:
    return base[:at] + byte + base[at + 1 :]


@pytest.mark.parametrize(
    ("incoming", "continued"),
    [
        (_INCOMING, True),
        (_INCOMING.replace(b"-01", b"-00"), True),  # not sampled: the flags carry over
        (b"01" + _INCOMING[2:] + b"-later-fields", True),  # a later version may append
        (_INCOMING + b"-x", False),  # version 00 is exactly 55 bytes
        (b"ff" + _INCOMING[2:], False),  # the invalid version
        (_INCOMING[:3] + b"0" * 32 + _INCOMING[35:], False),  # trace id all zeros
        (_INCOMING[:36] + b"0" * 16 + _INCOMING[52:], False),  # span id all zeros
        (_INCOMING.upper(), False),  # hex is lower-case
        (_with(20, b"A"), False),
        (_with(40, b"g"), False),
        (_with(0, b"-"), False),
        (_with(54, b" "), False),
        (_INCOMING[:54], False),  # too short
        (b"", False),
        # A dash moved: one missing at its place, another inside an id.
        (_with(10, b"-", _with(52, b"a")), False),
        (_with(10, b"-", _with(35, b"a")), False),
        (_with(10, b"-", _with(2, b"a")), False),
    ],
)
def test_which_incoming_traceparent_is_continued(incoming: bytes, continued: bool) -> None:
    """W3C trace context: a valid parent keeps its trace id and flags; anything else starts
    a new trace (and never passes the client's bytes on)."""
    ids = new_ids(random.Random(5))
    out = next_traceparent(incoming, 0.0, random.Random(6), ids)
    assert re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", out)
    assert out[36:52] == ids[64:80]  # always this proxy's span
    if continued:
        assert out == b"00-" + incoming[3:35] + b"-" + ids[64:80] + b"-" + incoming[53:55]
    else:
        assert out == b"00-" + ids[32:64] + b"-" + ids[64:80] + b"-00"


def test_the_pool_gives_80_hex_digits_one_request_at_a_time() -> None:
    """A batch is 80 hex digits for each request in turn (new_ids' form), and no request's ids
    repeat another's."""
    pool = IdPool(random.Random(3).randbytes)
    taken = [pool.take() for _ in range(3 * ID_BATCH + 5)]  # across batches
    for ids in taken:
        assert len(ids) == IDS_HEX
        assert _HEX.fullmatch(ids)
    assert len(set(taken)) == len(taken)
    assert len({request_ids() for _ in range(ID_BATCH + 1)}) == ID_BATCH + 1
    default = IdPool()  # the OS's random bytes
    assert len({default.take() for _ in range(ID_BATCH + 1)}) == ID_BATCH + 1


@pytest.mark.parametrize(
    ("zeros_at", "zeros"),
    [(16, 16), (32, 8), (40 * 63 + 16, 16), (40 * 63 + 32, 8)],
    ids=["first trace id", "first span id", "last trace id", "last span id"],
)
def test_the_pool_never_gives_a_trace_or_span_id_of_zeros(zeros_at: int, zeros: int) -> None:
    """W3C trace context forbids an all-zero trace id or span id: a batch drawn with a run of
    zero bytes (here a request's trace id, bytes 16-31 of its 40, or its span id, 32-39) is
    drawn again."""
    rng = random.Random(4)
    draws: list[int] = []

    def draw(n: int) -> bytes:
        raw = bytearray(rng.randbytes(n))
        if not draws:
            raw[zeros_at : zeros_at + zeros] = bytes(zeros)
        draws.append(n)
        return bytes(raw)

    pool = IdPool(draw)
    taken = [pool.take() for _ in range(ID_BATCH)]
    assert draws == [40 * ID_BATCH, 40 * ID_BATCH]  # the first batch drawn again
    for ids in taken:
        assert ids[32:64] != b"0" * 32
        assert ids[64:80] != b"0" * 16
