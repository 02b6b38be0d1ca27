"""Wake-ups for blocking queries: parked tasks per topic, woken directly on a change.

A blocking query parks its task on the topic its result depends on (an index table such as
``services`` or ``service.web``, or a KV key or prefix) until a deadline. A write fires the
topics it touched: every task parked on them is rescheduled at once, with no per-waiter
event, cancel scope or timer, so waking a thousand watchers costs little more than
resuming them. Deadlines live in one heap served by :meth:`WatchHub.run`. A woken query
re-reads its index (a dict lookup) and re-renders through the shared response cache, so a
thousand watchers of one query cost one rendering.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable

import trio

__all__ = ["WatchHub"]


class WatchHub:
    """Topic -> parked tasks; used from the Trio thread only."""

    __slots__ = ("_changed", "_heap", "_seq", "_waiters")

    def __init__(self) -> None:
        self._waiters: dict[str, dict[trio.lowlevel.Task, None]] = {}
        self._heap: list[tuple[float, int, trio.lowlevel.Task, str]] = []
        self._seq = itertools.count()
        self._changed: trio.Event | None = None

    def __len__(self) -> int:
        return sum(map(len, self._waiters.values()))

    async def wait(self, topic: str, deadline: float) -> None:
        """Park until ``topic`` fires or ``deadline`` (Trio clock) passes.

        Needs :meth:`run` to be running for the deadline to be honoured.
        """
        task = trio.lowlevel.current_task()
        parked = self._waiters.setdefault(topic, {})
        parked[task] = None
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
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def fire(self, topics: Iterable[str]) -> None:
        """Wake every task parked on ``topics``."""
        waiters = self._waiters
        reschedule = trio.lowlevel.reschedule
        for topic in topics:
            parked = waiters.pop(topic, None)
            if parked:
                for task in parked:
                    reschedule(task)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the deadlines of parked tasks until cancelled."""
        task_status.started()
        heap = self._heap
        while True:
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
