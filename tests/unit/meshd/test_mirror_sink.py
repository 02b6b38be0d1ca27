"""The mirror sink: shadow copies, the in-flight bound, counting."""

from __future__ import annotations

import pytest
import trio

from meshd.cluster.runtime import ClusterRuntime
from meshd.http.mirror import MirrorService, shadow_copy, shadow_host
from meshd.policystats import PolicyStats

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("host", "shadow"),
    [
        (b"api.test", b"api.test-shadow"),
        (b"api:8080", b"api-shadow:8080"),
        (b"[::1]:80", b"[::1]-shadow:80"),
        (b"[::1]", b"[::1]-shadow"),
        (b"10.0.0.1", b"10.0.0.1-shadow"),
    ],
)
def test_shadow_host(host: bytes, shadow: bytes) -> None:
    assert shadow_host(host) == shadow


def test_shadow_copy_renames_the_host_and_closes() -> None:
    request = (
        b"POST /a?b=1 HTTP/1.1\r\nx-one: 1\r\nHost: api:9000\r\ncontent-length: 4\r\n"
        b"x-request-id: r\r\n\r\nbody"
    )
    assert shadow_copy(request) == (
        b"POST /a?b=1 HTTP/1.1\r\nx-one: 1\r\nHost: api-shadow:9000\r\ncontent-length: 4\r\n"
        b"x-request-id: r\r\nconnection: close\r\n\r\nbody"
    )


def test_shadow_copy_needs_a_head() -> None:
    with pytest.raises(ValueError, match="complete request head"):
        shadow_copy(b"GET / HTTP/1.1\r\nhost: a\r\n")


def test_submit_before_run_drops() -> None:
    stats = PolicyStats()
    mirror = MirrorService(lambda _name: None, stats)
    assert mirror.submit("shadow", b"GET / HTTP/1.1\r\n\r\n") is False
    assert stats.value("meshd_mirrored_requests", "shadow", "dropped") == 1


async def test_copies_beyond_the_bound_are_dropped_and_unknown_clusters_fail() -> None:
    stats = PolicyStats()
    looked_up: list[str] = []

    def lookup(name: str) -> ClusterRuntime | None:
        looked_up.append(name)
        return None

    mirror = MirrorService(lookup, stats, max_in_flight=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(mirror.run)
        # submit never waits: the copies' tasks have not run yet, so the third is over.
        assert mirror.submit("gone", b"GET / HTTP/1.1\r\n\r\n")
        assert mirror.submit("gone", b"GET / HTTP/1.1\r\n\r\n")
        assert not mirror.submit("gone", b"GET / HTTP/1.1\r\n\r\n")
        assert mirror.in_flight == 2
        with trio.fail_after(5):
            while mirror.in_flight:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert looked_up == ["gone", "gone"]
    assert stats.value("meshd_mirrored_requests", "gone", "failed") == 2
    assert stats.value("meshd_mirrored_requests", "gone", "dropped") == 1
