"""The blocking-query wake-up hub: fire wakes only its topic, deadlines are honoured."""

from __future__ import annotations

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
