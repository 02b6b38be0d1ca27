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
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable
from typing import Any, Final

__all__ = ["serve_in_trio_io"]

# Trio's longest sleep (trio._core._run._MAX_TIMEOUT).
_MAX_TIMEOUT: Final = 24.0 * 60 * 60


def serve_in_trio_io(fd: int, serve: Callable[[], None]) -> Callable[[], None] | None:
    """Have Trio's I/O step call ``serve`` whenever the epoll set ``fd`` is readable (call
    from a task of the run); returns the undo, or None when this Trio's I/O manager is not
    the epoll one this knows (then wait for ``fd`` in a task).

    The manager's class is swapped for a subclass that overrides ``process_events`` (and
    ``get_events``, see the module) with no state of its own while any set is served so, and
    swapped back by the last undo. ``serve`` runs outside any task: it must not raise, nor
    use what needs a current task (cancel scopes, checkpoints, ``current_task``).
    """
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
        methods = _methods(runner, io, base, table)
        if runner.is_guest or type(runner.clock) is not SystemClock:
            del methods["get_events"]
        hooked = type(
            "ServingEpollIOManager",
            (base,),
            {"__slots__": (), **methods, "meshd_served": table, "meshd_base": base},
        )
        io.__class__ = hooked
        served = table
    try:
        trio_epoll.register(fd, select.EPOLLIN)
    except OSError:
        if not served:
            io.__class__ = hooked.meshd_base
        return None
    served[fd] = serve
    table_now = served

    def undo() -> None:
        if table_now.pop(fd, None) is None:
            return
        with contextlib.suppress(OSError, ValueError):  # Trio's epoll closed already
            trio_epoll.unregister(fd)
        if not table_now and type(io) is hooked:
            io.__class__ = hooked.meshd_base

    return undo


def _methods(
    runner: Any, io: Any, base: Any, table: dict[int, Callable[[], None]]
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

    def get_events(timeout: float) -> list[tuple[int, int]]:
        events: list[tuple[int, int]] = poll(timeout, len(registered) + len(table) + 1)
        while events:
            for event in events:
                if event[0] not in table:
                    return events  # Trio's own: its loop (process_events serves ours)
            if runner.waiting_for_idle:
                return events
            deadline = deadlines.next_deadline()
            for event in events:
                table[event[0]]()
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
            events = poll(min(timeout, _MAX_TIMEOUT), len(registered) + len(table) + 1)
        return events

    return {
        "process_events": staticmethod(process_events),
        "get_events": staticmethod(get_events),
    }
