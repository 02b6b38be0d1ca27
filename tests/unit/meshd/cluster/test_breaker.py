"""Circuit breaker counts and refusals (the connection wait over real trio tasks)."""

from __future__ import annotations

import pytest
import trio

from meshcore.model.policy import ConnectionLimits
from meshd.cluster.breaker import Breaker
from meshd.errors import PoolOverflow
from meshd.policystats import PolicyStats

pytestmark = pytest.mark.timeout(30)


def _breaker() -> tuple[Breaker, PolicyStats]:
    stats = PolicyStats()
    return Breaker("api", stats), stats


def test_max_requests_refuses_at_once_with_503_upstream_overflow() -> None:
    breaker, stats = _breaker()
    limits = ConnectionLimits(max_requests=2)
    breaker.admit(limits.max_requests)
    breaker.admit(limits.max_requests)
    with pytest.raises(PoolOverflow) as caught:
        breaker.admit(limits.max_requests)
    assert (caught.value.status, caught.value.reason) == (503, "upstream_overflow")
    assert stats.value("meshd_upstream_overflow", "api", "max_requests") == 1
    breaker.done()
    breaker.admit(limits.max_requests)
    assert breaker.requests == 2


def test_no_limits_only_counts() -> None:
    breaker, _stats = _breaker()
    for _ in range(5000):
        breaker.admit(None)
    assert breaker.requests == 5000
    assert breaker.begin_retry(None)


def test_max_retries_refuses_the_retry_not_the_request() -> None:
    breaker, stats = _breaker()
    limits = ConnectionLimits(max_retries=1)
    assert breaker.begin_retry(limits)
    assert not breaker.begin_retry(limits)
    assert stats.value("meshd_upstream_overflow", "api", "max_retries") == 1
    breaker.end_retry()
    assert breaker.begin_retry(limits)


def test_done_never_goes_below_zero() -> None:
    breaker, _ = _breaker()
    breaker.done()
    breaker.end_retry()
    assert (breaker.requests, breaker.retries) == (0, 0)


async def test_full_connections_make_requests_pending_then_refuse() -> None:
    breaker, stats = _breaker()
    limits = ConnectionLimits(max_connections=1, max_pending_requests=1)
    open_count = [1]
    idle = [0]

    def close_idle() -> bool:
        if idle[0]:
            idle[0] -= 1
            open_count[0] -= 1
            return True
        return False

    got_room = trio.Event()

    async def waiter() -> None:
        await breaker.wait_connection_room(limits, lambda: open_count[0], close_idle)
        got_room.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert breaker.pending == 1
        # A second request finds the one pending slot taken: refused at once.
        with pytest.raises(PoolOverflow):
            await breaker.wait_connection_room(limits, lambda: open_count[0], close_idle)
        assert stats.value("meshd_upstream_overflow", "api", "max_pending_requests") == 1
        open_count[0] = 0
        breaker.released()
        with trio.fail_after(5):
            await got_room.wait()
    assert breaker.pending == 0


async def test_a_release_wakes_a_pending_request_at_once_not_at_its_recheck() -> None:
    breaker, _ = _breaker()
    limits = ConnectionLimits(max_connections=1, max_pending_requests=2)
    open_count = [1]
    got_room: list[int] = []

    async def waiter(n: int) -> None:
        await breaker.wait_connection_room(limits, lambda: open_count[0], lambda: False)
        got_room.append(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, 1)
        nursery.start_soon(waiter, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert breaker.pending == 2
        breaker.released()  # nothing freed yet: both look, both park again
        await trio.testing.wait_all_tasks_blocked()
        assert (got_room, breaker.pending) == ([], 2)
        open_count[0] = 0
        breaker.released()
        # Woken by the release itself, not by the recheck timer (a quarter second away).
        await trio.testing.wait_all_tasks_blocked()
        assert got_room and breaker.pending == 0


async def test_idle_connections_are_closed_rather_than_waited_for() -> None:
    breaker, _ = _breaker()
    limits = ConnectionLimits(max_connections=2, max_pending_requests=0)
    state = {"open": 2, "idle": 1}

    def close_idle() -> bool:
        if state["idle"]:
            state["idle"] -= 1
            state["open"] -= 1
            return True
        return False

    with trio.fail_after(5):
        await breaker.wait_connection_room(limits, lambda: state["open"], close_idle)
    assert state == {"open": 1, "idle": 0}


async def test_zero_pending_refuses_when_every_connection_is_busy() -> None:
    breaker, _ = _breaker()
    limits = ConnectionLimits(max_connections=1, max_pending_requests=0)
    with pytest.raises(PoolOverflow):
        await breaker.wait_connection_room(limits, lambda: 1, lambda: False)
