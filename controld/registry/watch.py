"""Wake-ups for blocking queries: parked tasks per topic, woken directly on a change.

A blocking query parks its task on the topic its result depends on (an index table such as
``services`` or ``service.web``, or a KV key or prefix) until a deadline. A write fires the
topics it touched: every task parked on them is rescheduled at once, with no per-waiter
event, cancel scope or timer, so waking a thousand watchers costs little more than
resuming them. Deadlines live in one heap served by :meth:`WatchHub.run`. A woken query
re-reads its index (a dict lookup) and re-renders through the shared response cache, so a
thousand watchers of one query cost one rendering.

A waiter may leave an ``on_fire`` callback: :meth:`WatchHub.run` calls it, still in place of
the parked task, in one pass right after the writer's step. The registry's blocking reads
use it to write their finished response straight to the client's socket, so the last of a
thousand watchers is answered after a thousand ``send()`` calls rather than after a
thousand task switches through the HTTP stack. Its result (or exception) is what
:meth:`WatchHub.wait` returns (or raises) in the waiter's task.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import outcome
import trio

__all__ = ["WatchHub"]

T = TypeVar("T")
OnFire = Callable[[], Any] | None


class WatchHub:
    """Topic -> parked tasks; used from the Trio thread only."""

    __slots__ = ("_changed", "_fired", "_heap", "_seq", "_waiters")

    def __init__(self) -> None:
        self._waiters: dict[str, dict[trio.lowlevel.Task, OnFire]] = {}
        # Fired waiters with a callback, for run() to call; still parked until then.
        self._fired: dict[trio.lowlevel.Task, Callable[[], Any]] = {}
        self._heap: list[tuple[float, int, trio.lowlevel.Task, str]] = []
        self._seq = itertools.count()
        self._changed: trio.Event | None = None

    def __len__(self) -> int:
        return sum(map(len, self._waiters.values()))

    async def wait(
        self, topic: str, deadline: float, on_fire: Callable[[], T] | None = None
    ) -> T | None:
        """Park until ``topic`` fires or ``deadline`` (Trio clock) passes.

        On a fire, returns what ``on_fire()`` returned when :meth:`run` called it (or raises
        what it raised); else ``None``. Needs :meth:`run` to be running.
        """
        task = trio.lowlevel.current_task()
        parked = self._waiters.setdefault(topic, {})
        parked[task] = on_fire
        if deadline < math.inf:
            heapq.heappush(self._heap, (deadline, next(self._seq), task, topic))
            if self._heap[0][2] is task and self._changed is not None:
                self._changed.set()

        def abort(_: object) -> trio.lowlevel.Abort:
            waiters = self._waiters.get(topic)
            if waiters is not None:
                waiters.pop(task, None)
                if not waiters:
                    del self._waiters[topic]
            self._fired.pop(task, None)
            return trio.lowlevel.Abort.SUCCEEDED

        result: T | None = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def fire(self, topics: Iterable[str]) -> None:
        """Wake every task parked on ``topics``."""
        waiters = self._waiters
        reschedule = trio.lowlevel.reschedule
        fired = self._fired
        for topic in topics:
            parked = waiters.pop(topic, None)
            if parked:
                for task, on_fire in parked.items():
                    if on_fire is None:
                        reschedule(task)
                    else:
                        fired[task] = on_fire
        if fired and self._changed is not None:
            self._changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Call the ``on_fire`` callbacks of fired waiters and serve deadlines, until cancelled."""
        task_status.started()
        heap = self._heap
        reschedule = trio.lowlevel.reschedule
        capture = outcome.capture
        while True:
            fired = self._fired
            if fired:
                self._fired = {}
                for task, on_fire in fired.items():
                    reschedule(task, capture(on_fire))
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, task, topic = heapq.heappop(heap)
                parked = self._waiters.get(topic)
                if parked is not None and task in parked:
                    del parked[task]
                    if not parked:
                        del self._waiters[topic]
                    trio.lowlevel.reschedule(task)
            if len(heap) > 64 and len(heap) > 4 * len(self):
                # Woken waiters leave their deadlines behind; drop them now and then.
                live = {id(t) for parked in self._waiters.values() for t in parked}
                heap[:] = [e for e in heap if id(e[2]) in live]
                heapq.heapify(heap)
            self._changed = trio.Event()
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await self._changed.wait()
