"""Periodic ticks kept by Trio's I/O step (meshd/net/trio_io.py ``tick_in_trio_io``) and the
sidecar's deadline sweep on them (``ProxyShared.run_deadlines``): ticks only while their set
is not empty, what a tick wakes runs, the undo, the task fallback where the step can't keep
time. Each guard has a test here that hangs or fails without it."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import trio
import trio.testing
from trio._core._run import GLOBAL_RUN_CONTEXT

from meshd.accesslog import AccessLog
from meshd.context import ProxyShared
from meshd.net.reactor import EPOLL_AVAILABLE
from meshd.net.trio_io import tick_in_trio_io
from meshd.net.waits import EPOLL_WAITS
from meshd.stats import Stats

pytestmark = [
    pytest.mark.timeout(20),
    pytest.mark.skipif(not (EPOLL_WAITS and EPOLL_AVAILABLE), reason="epoll (Linux) only"),
]

_PERIOD = 0.02


async def test_ticks_come_while_the_set_is_not_empty_and_never_while_it_is() -> None:
    calls: list[float] = []
    active: set[Any] = set()
    undo = tick_in_trio_io(_PERIOD, calls.append, active)
    assert undo is not None
    try:
        await trio.sleep(10 * _PERIOD)
        assert calls == []  # an idle sidecar with no connection is not woken
        active.add(object())
        await trio.sleep(10 * _PERIOD)
        assert len(calls) >= 2
        assert calls == sorted(calls)
        active.clear()
        await trio.sleep(2 * _PERIOD)  # a tick may have been under way
        seen = len(calls)
        await trio.sleep(10 * _PERIOD)
        assert len(calls) == seen
    finally:
        undo()


async def test_what_a_tick_wakes_runs_at_once() -> None:
    # After its ticks the I/O step waits again itself only when Trio's pass would find
    # nothing to do: a task the tick woke must run, not wait for Trio's next deadline.
    active: set[Any] = {object()}
    with trio.CancelScope() as scope:

        def tick(now: float) -> None:
            scope.cancel()

        undo = tick_in_trio_io(_PERIOD, tick, active)
        assert undo is not None
        try:
            await trio.sleep_forever()  # no deadline: only the tick wakes it
        finally:
            undo()
    assert scope.cancelled_caught


async def test_the_undo_stops_the_ticks_and_restores_trios_io_manager() -> None:
    io: Any = GLOBAL_RUN_CONTEXT.runner.io_manager
    base = type(io)
    calls: list[float] = []
    undo = tick_in_trio_io(_PERIOD, calls.append, {object()})
    assert undo is not None
    assert type(io) is not base
    await trio.sleep(5 * _PERIOD)
    assert calls
    undo()
    undo()  # twice is harmless
    assert type(io) is base
    seen = len(calls)
    await trio.sleep(5 * _PERIOD)
    assert len(calls) == seen


def test_no_ticks_where_the_io_step_cannot_keep_time() -> None:
    # A mock clock (its autojump would hang on an empty wait): the caller sleeps in a task.
    async def main() -> None:
        assert tick_in_trio_io(_PERIOD, lambda now: None, {object()}) is None
        assert type(GLOBAL_RUN_CONTEXT.runner.io_manager).__name__ == "EpollIOManager"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class _Conn:
    """A downstream connection as ``ProxyShared`` sees it."""

    def __init__(self, shared: ProxyShared, deadline: float, *, fails: bool = False) -> None:
        self.shared = shared
        self.deadline = deadline
        self.fails = fails
        self.expired = trio.Event()

    def expire(self) -> None:
        self.deadline = math.inf
        self.expired.set()
        self.shared.connections.discard(self)  # ends at once (a closed handshake)
        if self.fails:
            raise RuntimeError("planted")

    def drain(self) -> None:
        pass


def _shared() -> ProxyShared:
    return ProxyShared(stats=Stats(), access_log=AccessLog(enabled=False, sample_rate=0.0))


async def test_the_sweep_expires_what_is_past_its_deadline_and_survives_an_expiry() -> None:
    shared = _shared()
    async with trio.open_nursery() as nursery:
        await nursery.start(shared.run_deadlines)
        io: Any = GLOBAL_RUN_CONTEXT.runner.io_manager
        assert "get_events" in type(io).__dict__  # the sweep is a tick, not a sleeping task
        now = time.monotonic()  # the sweep's clock (meshd.context.now)
        conns = [
            _Conn(shared, now - 1.0, fails=True),
            _Conn(shared, now - 1.0),
            _Conn(shared, now + 3600.0),
        ]
        shared.connections.update(conns)
        with trio.fail_after(10):
            await conns[0].expired.wait()
            await conns[1].expired.wait()
        assert shared.connections == {conns[2]}
        assert not conns[2].expired.is_set()
        nursery.cancel_scope.cancel()


def test_the_sweep_runs_in_a_task_under_a_mock_clock() -> None:
    async def main() -> None:
        shared = _shared()
        async with trio.open_nursery() as nursery:
            await nursery.start(shared.run_deadlines)
            conn = _Conn(shared, -1.0)
            shared.connections.add(conn)
            await conn.expired.wait()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
