"""meshd.http.tracing: a request's ids drawn at once, and the traceparent built from them."""

from __future__ import annotations

import random
import re

import pytest

from meshd.http.tracing import IDS_HEX, new_ids, next_traceparent

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
