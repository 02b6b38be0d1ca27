"""Trio's I/O step waits again itself when only the served epoll sets fired and Trio's loop
would find nothing to do (meshd/net/trio_io.py), and only then: each guard has a test here
that hangs or fails without it. Real sockets, served by the run's dispatcher."""

from __future__ import annotations

import os
import queue
import signal
import threading
from typing import Any

import pytest
import trio
import trio.testing
from loopback import tcp_pair
from trio._core._run import GLOBAL_RUN_CONTEXT, Deadlines

from meshd.net.reactor import EPOLL_AVAILABLE
from meshd.net.stream import SocketStream
from meshd.net.waits import EPOLL_WAITS, Waiter, current_dispatcher

pytestmark = [
    pytest.mark.timeout(20),
    pytest.mark.skipif(not (EPOLL_WAITS and EPOLL_AVAILABLE), reason="epoll (Linux) only"),
]


class _PingPong:
    """Answers every byte with one, in the dispatcher's callback, up to ``rounds`` (0: for
    ever, until ``stop``); then sets ``done`` (wakes a task) unless ``quiet``, and calls
    ``last`` if given (outside any task: it must not wake one)."""

    def __init__(self, stream: SocketStream, rounds: int, done: trio.Event) -> None:
        self.stream = stream
        self.rounds = rounds
        self.done = done
        self.count = 0
        self.stop = False
        self.quiet = False
        self.last: Any = None
        self.threads: set[int] = set()

    def readable(self, waiter: Waiter) -> None:
        self.threads.add(threading.get_ident())
        while data := self.stream.receive_nowait():
            self.count += len(data)
            if self.stop or self.count == self.rounds:
                if self.last is not None:
                    self.last()
                if not self.quiet:
                    self.done.set()
                return
            self.stream.send_nowait(b"x" * len(data))

    def stopped(self, waiter: Waiter, closing: bool) -> None:
        pass


async def _ping_pong(rounds: int, *, quiet: bool = False, last: Any = None) -> list[_PingPong]:
    a, b = tcp_pair()
    done = trio.Event()
    ends = [_PingPong(SocketStream(a), rounds, done), _PingPong(SocketStream(b), rounds, done)]
    current_dispatcher()
    await trio.testing.wait_all_tasks_blocked()  # the dispatcher's task hooked Trio's I/O step
    for end in ends:
        end.quiet = quiet
        end.last = last
        assert end.stream.serve_reads(end)
    ends[0].stream.send_nowait(b"x")
    return ends


def _close(ends: list[_PingPong]) -> None:
    for end in ends:
        end.stream.close_nowait()


class _CountingDeadlines(Deadlines):
    """Trio's deadlines, counting ``expire``: Trio's loop calls it once per pass."""

    passes = 0

    def expire(self, now: float) -> bool:
        _CountingDeadlines.passes += 1
        return super().expire(now)


def test_events_only_for_the_sets_are_served_without_passes_through_trios_loop() -> None:
    # Each pass through Trio's loop (deadlines, the run queue, the next timeout: Python code,
    # cold at a low rate) is on the path of a request at every hop: between events that
    # wake no task, the I/O step waits again itself.
    rounds = 400
    passes: list[int] = []

    async def main() -> None:
        runner = GLOBAL_RUN_CONTEXT.runner
        assert runner.deadlines.next_deadline() == float("inf")
        runner.deadlines = _CountingDeadlines()  # before the dispatcher hooks the I/O step
        ends = await _ping_pong(rounds)
        before = _CountingDeadlines.passes
        await ends[0].done.wait()  # woken by the last callback: back to Trio's loop
        passes.append(_CountingDeadlines.passes - before)
        assert ends[0].count + ends[1].count >= rounds
        _close(ends)

    trio.run(main)
    assert passes[0] < rounds // 4


async def test_deadlines_still_fire_while_the_sets_keep_the_io_step_busy() -> None:
    ends = await _ping_pong(0)
    with trio.move_on_after(0.05) as scope:
        await trio.sleep_forever()  # never woken by the ping-pong: only by its deadline
    assert scope.cancelled_caught
    assert ends[0].count > 0
    ends[0].stop = ends[1].stop = True
    await ends[0].done.wait()
    _close(ends)


async def test_a_deadline_a_callback_moves_is_trios_next_wait() -> None:
    # Waiting again until the deadline known before serving would miss the one moved.
    with trio.fail_after(10), trio.CancelScope() as scope:

        def now() -> None:
            scope.deadline = trio.current_time()

        ends = await _ping_pong(50, quiet=True, last=now)
        await trio.sleep_forever()  # only the moved deadline cancels it
    assert scope.cancelled_caught
    assert ends[0].count + ends[1].count >= 50
    _close(ends)


async def test_wait_all_tasks_blocked_wakes_once_the_sets_are_quiet() -> None:
    # Trio sleeps at most the cushion, and a wait that times out wakes the idle waiters.
    ends = await _ping_pong(50, quiet=True)
    with trio.fail_after(10):
        await trio.testing.wait_all_tasks_blocked(0.01)
    assert ends[0].count + ends[1].count >= 50
    _close(ends)


def test_an_autojump_clock_jumps_once_the_sets_are_quiet() -> None:
    # A mock clock's sleep times mean nothing to epoll: only Trio's loop jumps it (without
    # this guard the I/O step sleeps for ever once the sets are quiet).
    counts: list[int] = []

    async def main() -> None:
        ends = await _ping_pong(50, quiet=True)
        await trio.sleep(100)
        counts.append(ends[0].count + ends[1].count)
        _close(ends)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert counts[0] >= 50


class _IoWaits(trio.abc.Instrument):
    def __init__(self) -> None:
        self.before = self.after = 0

    def before_io_wait(self, timeout: float) -> None:
        self.before += 1

    def after_io_wait(self, timeout: float) -> None:
        self.after += 1


async def test_io_wait_instruments_see_every_wait() -> None:
    instrument = _IoWaits()
    trio.lowlevel.add_instrument(instrument)
    try:
        ends = await _ping_pong(200)
        await ends[0].done.wait()
    finally:
        trio.lowlevel.remove_instrument(instrument)
    # One wait per hop of the ping-pong (each send wakes the other end's set).
    assert instrument.after >= 100
    assert instrument.before >= 100
    _close(ends)


async def test_trios_own_events_reach_its_loop_while_the_sets_are_busy() -> None:
    # A thread's result comes through Trio's wake-up socket (run_sync_soon), as signals do.
    ends = await _ping_pong(0)
    with trio.fail_after(10):
        assert await trio.to_thread.run_sync(lambda: 42) == 42
    assert ends[0].count > 0
    ends[0].stop = ends[1].stop = True
    await ends[0].done.wait()
    _close(ends)


def test_keyboard_interrupt_while_the_sets_are_busy() -> None:
    counts: list[int] = []

    async def main() -> None:
        ends = await _ping_pong(0)
        try:
            with trio.fail_after(10):
                await trio.to_thread.run_sync(os.kill, os.getpid(), signal.SIGINT)
                await trio.sleep_forever()
        finally:
            counts.append(ends[0].count)
            _close(ends)

    # Python's own SIGINT handler for this run, whatever the process had (an earlier test's
    # run may have left a signal receiver's handler behind): trio.run installs its
    # KeyboardInterrupt delivery only over that one.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            trio.run(main)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert counts[0] > 0


def test_in_guest_mode_the_sets_are_served_in_trios_thread_only() -> None:
    # There Trio's get_events runs in a thread of its own (serving there would run the
    # dispatcher's callbacks beside the run's tasks), or with a timeout of 0 in the host's
    # thread first, where waiting again would block the host's loop: not overridden.
    calls: queue.Queue[Any] = queue.Queue()
    done: list[Any] = []
    threads: list[set[int]] = []

    async def main() -> None:
        ends = await _ping_pong(100)
        assert "get_events" not in vars(type(GLOBAL_RUN_CONTEXT.runner.io_manager))
        with trio.fail_after(10):
            await ends[0].done.wait()
        threads.append(ends[0].threads | ends[1].threads)
        _close(ends)

    trio.lowlevel.start_guest_run(
        main, run_sync_soon_threadsafe=calls.put, done_callback=done.append
    )
    while not done:
        calls.get(timeout=10)()
    done[0].unwrap()
    assert threads == [{threading.get_ident()}]
