"""The blocking-query wake-up hub: fire wakes only its topic, deadlines are honoured."""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

from controld.registry.watch import WatchHub


async def test_fire_wakes_only_the_fired_topic(nursery: trio.Nursery) -> None:
    hub = WatchHub()
    await nursery.start(hub.run)
    woken: list[str] = []

    async def park(topic: str) -> None:
        await hub.wait(topic, trio.current_time() + 60)
        woken.append(topic)

    for topic in ("a", "a", "b"):
        nursery.start_soon(park, topic)
    await trio.testing.wait_all_tasks_blocked()
    assert len(hub) == 3
    hub.fire(["a", "zzz"])
    await trio.testing.wait_all_tasks_blocked()
    assert woken == ["a", "a"]
    assert len(hub) == 1


async def test_deadline_and_cancellation(nursery: trio.Nursery) -> None:
    hub = WatchHub()
    await nursery.start(hub.run)
    start = trio.current_time()
    await hub.wait("t", start + 0.2)
    assert trio.current_time() - start >= 0.2
    with trio.move_on_after(0.05):
        await hub.wait("t", start + 3600)
    assert len(hub) == 0
    hub.fire(["t"])  # nobody parked any more: nothing to reschedule


async def test_on_fire_runs_in_the_wake_pass_and_its_outcome_reaches_the_waiter(
    nursery: trio.Nursery,
) -> None:
    hub = WatchHub()
    await nursery.start(hub.run)
    got: list[object] = []

    def boom() -> int:
        raise LookupError("from on_fire")

    async def park(on_fire: Callable[[], int]) -> None:
        try:
            got.append(await hub.wait("t", trio.current_time() + 60, on_fire))
        except LookupError as exc:
            got.append(str(exc))

    nursery.start_soon(park, lambda: 7)
    nursery.start_soon(park, boom)
    await trio.testing.wait_all_tasks_blocked()
    hub.fire(["t"])
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(map(str, got)) == ["7", "from on_fire"]
    assert len(hub) == 0


async def test_waiter_cancelled_between_fire_and_wake_pass(nursery: trio.Nursery) -> None:
    hub = WatchHub()
    await nursery.start(hub.run)
    called: list[int] = []

    async def park(scope: trio.CancelScope) -> None:
        with scope:
            await hub.wait("t", trio.current_time() + 60, lambda: called.append(1))

    scope = trio.CancelScope()
    nursery.start_soon(park, scope)
    await trio.testing.wait_all_tasks_blocked()
    hub.fire(["t"])
    scope.cancel()  # before hub.run's wake pass gets to run
    await trio.testing.wait_all_tasks_blocked()
    assert called == []
    assert len(hub) == 0
