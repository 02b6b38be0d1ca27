"""Path normalization before routing and access checks (RFC 3986 6.2.2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.pathnorm import MalformedPath, normalize_target

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/", b"/"),
        (b"/api/items?x=1", b"/api/items?x=1"),
        (b"/api/../secret", b"/secret"),
        (b"/api/%2e%2e/secret", b"/secret"),
        (b"/api/%2E%2E/secret?q=/../x", b"/secret?q=/../x"),
        (b"/../../etc/passwd", b"/etc/passwd"),
        (b"/a/./b/../c", b"/a/c"),
        (b"//a///b", b"/a/b"),
        (b"/a/b/", b"/a/b/"),
        (b"/a/b/.", b"/a/b/"),
        (b"/a/b/..", b"/a/"),
        (b"/..", b"/"),
        (b"/%41%62c", b"/Abc"),
        (b"/a%2fb%5cc", b"/a%2Fb%5Cc"),  # encoded separators stay encoded
        (b"/a%20b", b"/a%20b"),
        (b"*", b"*"),
    ],
)
def test_normalized(target: bytes, expected: bytes) -> None:
    assert normalize_target(target) == expected


@pytest.mark.parametrize("target", [b"/a%", b"/a%2", b"/a%zz", b"/%G0"])
def test_malformed_percent_encoding_is_refused(target: bytes) -> None:
    with pytest.raises(MalformedPath, match="malformed percent-encoding"):
        normalize_target(target)


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "%2e", "%2E%2e", "c%2Fd"]), max_size=8))
def test_idempotent_and_without_dot_segments(segments: list[str]) -> None:
    target = ("/" + "/".join(segments)).encode()
    once = normalize_target(target)
    assert normalize_target(once) == once
    assert once.startswith(b"/")
    parts = once.split(b"/")[1:]
    assert b"." not in parts and b".." not in parts
    assert b"//" not in once


@given(st.lists(st.sampled_from([b"/", b".", b"?", b"a", b"%41", b"%2f"]), max_size=12))
def test_nothing_to_normalize_gives_the_target_back(pieces: list[bytes]) -> None:
    target = b"".join(pieces)
    path = target.partition(b"?")[0]
    plain = path.find(b"%") < 0 and path.find(b"//") < 0 and path.find(b"/.") < 0
    if plain:  # nothing to normalize: the very same object back, whatever the query holds
        assert normalize_target(target) is target
    else:
        assert normalize_target(target) == normalize_target(normalize_target(target))
