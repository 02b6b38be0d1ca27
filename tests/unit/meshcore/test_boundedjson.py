"""Bounded JSON decoding: size, depth, surrogates; never a RecursionError."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.boundedjson import BoundedJsonError, json_depth, loads_bounded

pytestmark = pytest.mark.timeout(30)


def test_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b'{"a": "[[[[{{{", "b": [1, [2]]}') == 3
    assert json_depth(b'"\\"[["') == 0
    assert json_depth(b"3") == 0


def test_deep_nesting_is_a_value_error_not_a_recursion_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(BoundedJsonError, match="nested 100000 levels"):
        loads_bounded(deep)


def test_size_is_checked_before_parsing() -> None:
    with pytest.raises(BoundedJsonError, match="exceeds 10"):
        loads_bounded(b'"' + b"a" * 20 + b'"', max_bytes=10)


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"\xff",
        b'{"a": "\\ud800"}',
        b'["\\udc00x"]',
        b'{"\\ud800": 1}',
        b'{"role": "user", "role": "admin"}',
        b'[{"a": {"b": 1, "b": 2}}]',
    ],
)
def test_bad_input_is_refused(raw: bytes) -> None:
    with pytest.raises(BoundedJsonError):
        loads_bounded(raw)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_round_trip(value: object) -> None:
    raw = json.dumps(value).encode()
    assert loads_bounded(raw) == value


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_else(raw: bytes) -> None:
    with contextlib.suppress(BoundedJsonError):
        loads_bounded(raw)
