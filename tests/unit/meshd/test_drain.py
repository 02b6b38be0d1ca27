"""Tests for meshd.drain: phases, the delay and what cuts it short (virtual clock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshd.drain import DrainControl, DrainPhase

pytestmark = pytest.mark.timeout(30)


def test_request_starts_once() -> None:
    drain = DrainControl()
    assert drain.describe() == {"phase": "serving", "delay_left_s": None, "restart": False}
    assert not drain.started
    assert drain.request()
    assert not drain.request()
    assert drain.requested.is_set()
    assert drain.describe()["phase"] == DrainPhase.DELAY.value
    drain.close()
    assert drain.describe() == {"phase": "closing", "delay_left_s": None, "restart": False}


async def test_delay_runs_to_the_end(autojump_clock: trio.testing.MockClock) -> None:
    drain = DrainControl()
    drain.request()
    start = trio.current_time()
    assert await drain.wait_delay(5.0)
    assert trio.current_time() - start == pytest.approx(5.0)
    assert drain.phase is DrainPhase.DELAY  # closing is the caller's step
    assert drain.delay_ends_at is None


async def test_skip_cuts_the_delay_short(autojump_clock: trio.testing.MockClock) -> None:
    drain = DrainControl()
    drain.request()
    start = trio.current_time()
    seen: list[object] = []

    async def second_sigterm() -> None:
        await trio.sleep(1.5)
        seen.append(drain.describe()["delay_left_s"])
        drain.skip_delay()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second_sigterm)
        assert not await drain.wait_delay(60.0)
    assert trio.current_time() - start == pytest.approx(1.5)
    assert seen == [pytest.approx(58.5)]


async def test_skip_before_the_delay_and_zero_delay(autojump_clock: trio.testing.MockClock) -> None:
    drain = DrainControl()
    drain.request()
    drain.skip_delay()
    start = trio.current_time()
    assert not await drain.wait_delay(60.0)
    assert await DrainControl().wait_delay(0)
    assert trio.current_time() == start


def test_restart_request_is_remembered_and_final() -> None:
    drain = DrainControl()
    assert drain.request(restart=True)
    assert drain.restart
    assert not drain.request()  # a later SIGTERM doesn't turn the restart into a stop
    assert drain.restart
    assert drain.describe()["restart"] is True
    stop = DrainControl()
    assert stop.request()
    assert not stop.request(restart=True)  # nor a restart request a stop into a restart
    assert not stop.restart
