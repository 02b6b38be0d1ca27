"""Epoll sets served in Trio's own I/O step (the dispatcher's and the L4 reactor's).

A task that waits for an epoll set costs every wake-up a trip through Trio's scheduler (the
task rescheduled, its coroutine resumed in its context, a cancel check) and an ``epoll_ctl``
to re-arm Trio's one-shot registration before the next sleep: in a sidecar at a low rate, as
much as the wake-up's own work, on the path of every request at every hop. Here
(:func:`serve_in_trio_io`) the set is registered once, level-triggered, in Trio's epoll, and
the I/O manager's ``process_events`` (the step right after Trio's ``epoll_wait``) calls the
set's ``serve``, then passes Trio's own events on.

And when Trio's ``epoll_wait`` reports only such sets and serving them left Trio nothing to
do, the I/O manager's ``get_events`` waits again itself rather than returning for a pass
through Trio's loop that would find nothing to do (Python code, cold at a low rate: a few
tens of microseconds on the path at every hop, and each hop's next one runs on the same CPU
only once this one sleeps). It does so only when that pass would provably end in the same
wait: no task runnable; the next deadline the same as before serving (no scope's deadline
moved) and not reached (Trio's pass would expire it), the wait until it as long as Trio would
compute it; no task in ``wait_all_tasks_blocked`` (Trio sleeps at most its cushion, and an
empty wait wakes it); no ``before_io_wait``/``after_io_wait`` instrument (it sees every wait);
Trio's own :class:`~trio._core._run.SystemClock` (a mock clock's autojump also hangs on an
empty wait); not in guest mode (``get_events`` runs in another thread). An event of Trio's
own (a socket a task waits on, the wake-up socket of ``run_sync_soon``, threads, signals and
so :exc:`KeyboardInterrupt`) goes to Trio's loop, as without this.

The same step keeps periodic ticks (:func:`tick_in_trio_io`): a sidecar's deadline sweep every
50 ms, called by the I/O step rather than by a task's ``trio.sleep`` (a cancel scope, a
deadline, a ``Cancelled`` raised and caught: ~145,000 instructions a wake-up, most of an idle
sidecar's CPU), and only while there is something to sweep: an idle sidecar with no
connection is not woken at all.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["serve_in_trio_io", "tick_in_trio_io"]

# Trio's longest sleep (trio._core._run._MAX_TIMEOUT).
_MAX_TIMEOUT: Final = 24.0 * 60 * 60
# The due time of a tick whose set is empty.
_NEVER: Final = float("inf")


def serve_in_trio_io(fd: int, serve: Callable[[], None]) -> Callable[[], None] | None:
    """Have Trio's I/O step call ``serve`` whenever the epoll set ``fd`` is readable (call
    from a task of the run); returns the undo, or None when this Trio's I/O manager is not
    the epoll one this knows (then wait for ``fd`` in a task).

    The manager's class is swapped for a subclass that overrides ``process_events`` (and
    ``get_events``, see the module) with no state of its own while any set is served (or a
    tick kept) so, and swapped back by the last undo. ``serve`` runs outside any task: it must
    not raise, nor use what needs a current task (cancel scopes may be cancelled, but not
    entered; no checkpoints, no ``current_task``).
    """
    hooked = _hook()
    if hooked is None:
        return None
    io, trio_epoll, served = hooked
    try:
        trio_epoll.register(fd, select.EPOLLIN)
    except OSError:
        _unhook(io)
        return None
    served[fd] = serve

    def undo() -> None:
        if served.pop(fd, None) is None:
            return
        with contextlib.suppress(OSError, ValueError):  # Trio's epoll closed already
            trio_epoll.unregister(fd)
        _unhook(io)

    return undo


def tick_in_trio_io(
    period_s: float, tick: Callable[[float], None], active: set[Any]
) -> Callable[[], None] | None:
    """Have Trio's I/O step call ``tick(now)`` every ``period_s`` while ``active`` is not
    empty (call from a task of the run); returns the undo, or None where the I/O step can't
    keep time (not the epoll manager this knows, a mock clock, guest mode: then sleep in a
    task).

    ``now`` is :func:`time.monotonic` (``meshd.context.now``). A tick comes at most a period
    (and a wake-up) late, and never while ``active`` is empty: the set is looked at before
    every wait, so one added to by a task is seen before the run sleeps. ``tick`` runs outside
    any task, under the rules of ``serve`` (:func:`serve_in_trio_io`).
    """
    hooked = _hook()
    if hooked is None:
        return None
    io, _trio_epoll, _served = hooked
    ticks: list[_Tick] = type(io).meshd_ticks
    if "get_events" not in type(io).__dict__:
        _unhook(io)
        return None
    entry = _Tick(period_s, tick, active)
    ticks.append(entry)

    def undo() -> None:
        if entry in ticks:
            ticks.remove(entry)
            _unhook(io)

    return undo


class _Tick:
    """One periodic call kept by the I/O step."""

    __slots__ = ("active", "due", "period", "tick")

    def __init__(self, period: float, tick: Callable[[float], None], active: set[Any]) -> None:
        self.period = period
        self.tick = tick
        self.active = active
        self.due = _NEVER  # set once ``active`` is seen not empty


def _hook() -> tuple[Any, Any, dict[int, Callable[[], None]]] | None:
    """The run's I/O manager (its class swapped for the serving one if not yet), its epoll
    and the table of served sets; None when it is not the epoll manager this knows."""
    try:
        from trio._core._run import GLOBAL_RUN_CONTEXT, SystemClock

        runner: Any = GLOBAL_RUN_CONTEXT.runner
        io: Any = runner.io_manager
        trio_epoll = io._epoll
    except (ImportError, AttributeError):
        return None
    hooked: Any = type(io)
    served: dict[int, Callable[[], None]] | None = getattr(hooked, "meshd_served", None)
    if served is None:
        base: Any = hooked
        if base.__name__ != "EpollIOManager" or not isinstance(trio_epoll, select.epoll):
            return None
        table: dict[int, Callable[[], None]] = {}
        ticks: list[_Tick] = []
        methods = _methods(runner, io, base, table, ticks)
        if runner.is_guest or type(runner.clock) is not SystemClock:
            del methods["get_events"]
        hooked = type(
            "ServingEpollIOManager",
            (base,),
            {
                "__slots__": (),
                **methods,
                "meshd_served": table,
                "meshd_ticks": ticks,
                "meshd_base": base,
            },
        )
        io.__class__ = hooked
        served = table
    return io, trio_epoll, served


def _unhook(io: Any) -> None:
    """Swap the I/O manager's class back once it serves no set and keeps no tick."""
    hooked: Any = type(io)
    base = getattr(hooked, "meshd_base", None)
    if base is not None and not hooked.meshd_served and not hooked.meshd_ticks:
        io.__class__ = base


def _methods(
    runner: Any, io: Any, base: Any, table: dict[int, Callable[[], None]], ticks: list[_Tick]
) -> dict[str, Any]:
    """The hooked I/O manager's ``process_events`` and ``get_events`` (see the module)."""
    process = base.process_events

    def process_events(events: list[tuple[int, int]]) -> None:
        rest: list[tuple[int, int]] | None = None
        for i in range(len(events)):
            event = events[i]
            serve_set = table.get(event[0])
            if serve_set is not None:
                if rest is None:
                    rest = events[:i]
                serve_set()
            elif rest is not None:
                rest.append(event)
        # Not ``events`` edited: Trio reads it again (empty means the wait timed out).
        process(io, events if rest is None else rest)

    registered = io._registered
    poll = io._epoll.poll
    deadlines = runner.deadlines
    sleep_time = runner.clock.deadline_to_sleep_time
    instruments = runner.instruments
    runq = runner.runq
    clock = time.monotonic

    def until_tick(timeout: float) -> float:
        """``timeout``, or less to keep the next tick whose set is not empty."""
        if ticks:
            current = clock()
            for entry in ticks:
                if not entry.active:
                    entry.due = _NEVER
                    continue
                if entry.due == _NEVER:  # not empty any more: a period from now
                    entry.due = current + entry.period
                timeout = min(timeout, max(entry.due - current, 0.0))
        return timeout

    def run_ticks() -> bool:
        """Call the ticks that are due; whether any was."""
        ran = False
        if ticks:
            current = clock()
            for entry in ticks:
                if entry.active and entry.due <= current:
                    entry.due = current + entry.period
                    entry.tick(current)
                    ran = True
        return ran

    def get_events(timeout: float) -> list[tuple[int, int]]:
        events: list[tuple[int, int]] = poll(until_tick(timeout), len(registered) + len(table) + 1)
        while True:
            for event in events:
                if event[0] not in table:
                    run_ticks()  # what it wakes, Trio's pass runs
                    return events  # Trio's own: its loop (process_events serves ours)
            if runner.waiting_for_idle:
                run_ticks()
                return events
            deadline = deadlines.next_deadline()
            for event in events:
                table[event[0]]()
            if not run_ticks() and not events:
                return events  # Trio's timeout
            # Back to Trio's loop (nothing left for it to serve: ``[]``, which reads as a
            # timed-out wait only where nobody waits for idle, checked above, and no autojump
            # clock) unless its pass would find nothing to do and wait as below.
            if (
                runq
                or deadlines.next_deadline() != deadline
                or "before_io_wait" in instruments
                or "after_io_wait" in instruments
            ):
                return []
            timeout = sleep_time(deadline)
            if timeout <= 0:
                return []  # Trio's pass expires it
            events = poll(until_tick(min(timeout, _MAX_TIMEOUT)), len(registered) + len(table) + 1)

    return {
        "process_events": staticmethod(process_events),
        "get_events": staticmethod(get_events),
    }
