"""The push hub's Trio shell: parked polls, wake-ups, timeouts, metrics."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from controld.push import PushHub, UnknownProxy
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.snapshot import Snapshot

SNAP = Snapshot(version=0)
#: Bound on every wait in these tests (autojump clocks make the long ones instant).
TIMEOUT = 10.0


def desc(pid: str = "web-1") -> ProxyDescriptor:
    return ProxyDescriptor(proxy_id=pid, service="web")


async def test_poll_of_unknown_proxy_raises() -> None:
    hub = PushHub()
    with pytest.raises(UnknownProxy):
        await hub.poll("nope", version=None, hash=None, wait=0)
    with pytest.raises(UnknownProxy):
        hub.nack("nope", version=1, hash="h", error="x")


async def test_wait_timeout_returns_none(autojump_clock: trio.testing.MockClock) -> None:
    hub = PushHub()
    hub.register(desc())
    assert await hub.poll("web-1", version=None, hash=None, wait=30) is None
    assert hub.proxies()[0]["connected"] is True


async def test_parked_poll_wakes_on_publish() -> None:
    hub = PushHub()
    hub.register(desc())
    got: list[object] = []

    async def poller() -> None:
        got.append(await hub.poll("web-1", version=None, hash=None, wait=TIMEOUT * 3))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller)
            await trio.testing.wait_all_tasks_blocked()
            assert hub.connected_count() == 1
            hub.publish({"web-1": (SNAP, "h1")}, revision=1, changed_at=0.0)
    [envelope] = got
    assert envelope is not None
    doc = json.loads(envelope.body)  # type: ignore[attr-defined]
    assert doc["hash"] == "h1" == envelope.hash  # type: ignore[attr-defined]
    # Polling again with what it now runs parks until the next change; publishing other
    # proxies doesn't wake it.
    hub.register(desc("other"))
    with trio.move_on_after(0.05) as scope:
        await hub.poll("web-1", version=doc["version"], hash="h1", wait=TIMEOUT)
    assert scope.cancelled_caught


async def test_publish_of_the_same_hash_keeps_polls_parked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = PushHub()
    hub.register(desc())
    hub.publish({"web-1": (SNAP, "h1")}, revision=1, changed_at=0.0)
    first = await hub.poll("web-1", version=None, hash=None, wait=0)
    assert first is not None
    result: list[object] = ["unset"]

    async def poller() -> None:
        result[0] = await hub.poll("web-1", version=first.version, hash="h1", wait=60)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller)
        await trio.testing.wait_all_tasks_blocked()
        hub.publish({"web-1": (SNAP, "h1")}, revision=2, changed_at=0.0)
    assert result == [None]


async def test_unregister_ends_parked_polls_with_unknown_proxy() -> None:
    hub = PushHub()
    hub.register(desc())
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def poller() -> None:
                with pytest.raises(UnknownProxy):
                    await hub.poll("web-1", version=None, hash=None, wait=TIMEOUT * 3)

            nursery.start_soon(poller)
            await trio.testing.wait_all_tasks_blocked()
            hub.unregister("web-1")
    assert hub.descriptor("web-1") is None


async def test_thousand_parked_polls_released_by_one_publish() -> None:
    hub = PushHub()
    count = 1000
    pids = [f"p{i}" for i in range(count)]
    for pid in pids:
        hub.register(desc(pid))
    answers: dict[str, bytes] = {}

    async def poller(pid: str) -> None:
        envelope = await hub.poll(pid, version=None, hash=None, wait=TIMEOUT * 3)
        assert envelope is not None
        answers[pid] = envelope.body

    with trio.fail_after(TIMEOUT * 3):
        async with trio.open_nursery() as nursery:
            for pid in pids:
                nursery.start_soon(poller, pid)
            await trio.testing.wait_all_tasks_blocked()
            assert hub.connected_count() == count
            hub.publish({pid: (SNAP, f"h-{pid}") for pid in pids}, revision=1, changed_at=0.0)
    assert len(answers) == count
    assert json.loads(answers["p7"])["hash"] == "h-p7"


async def test_registrations_are_handed_to_one_consumer() -> None:
    hub = PushHub()
    hub.register(desc("a"))
    hub.register(desc("a"))
    hub.register(desc("b"))
    with trio.fail_after(TIMEOUT):
        assert await hub.wait_registrations() == {"a", "b"}
    with trio.move_on_after(0.05) as scope:
        await hub.wait_registrations()
    assert scope.cancelled_caught
    assert set(hub.descriptors()) == {"a", "b"}


async def test_metrics_count_pushes_nacks_and_convergence() -> None:
    registry = CollectorRegistry()
    hub = PushHub(metrics=registry)
    hub.register(desc())
    hub.publish({"web-1": (SNAP, "h1")}, revision=1, changed_at=0.0)
    first = await hub.poll("web-1", version=None, hash=None, wait=0)
    assert first is not None
    assert await hub.poll("web-1", version=first.version, hash="h1", wait=0) is None
    hub.publish({"web-1": (SNAP, "h2")}, revision=2, changed_at=1.0)
    second = await hub.poll("web-1", version=first.version, hash="h1", wait=0)
    assert second is not None
    hub.nack("web-1", version=second.version, hash="h2", error="boom")
    hub.publish({"web-1": (SNAP, "h3")}, revision=3, changed_at=2.0)
    third = await hub.poll("web-1", version=first.version, hash="h1", wait=0)
    assert third is not None
    await hub.poll("web-1", version=third.version, hash="h3", wait=0)

    def value(name: str) -> float | None:
        return registry.get_sample_value(name)

    assert value("controld_snapshot_pushes_total") == 3
    assert value("controld_snapshot_nacks_total") == 1
    assert value("controld_connected_sidecars") == 1
    assert value("controld_convergence_seconds_count") == 1  # h2's rollout ended by the NACK
    assert value("controld_ack_latency_seconds_count") == 2
    assert hub.status_json() == {"proxies": 1, "connected": 1, "rollouts_pending": 0}


async def test_close_releases_parked_polls() -> None:
    hub = PushHub()
    hub.register(desc())
    result: list[object] = ["unset"]

    async def poller() -> None:
        result[0] = await hub.poll("web-1", version=None, hash=None, wait=TIMEOUT * 3)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller)
            await trio.testing.wait_all_tasks_blocked()
            hub.close()
        assert await hub.poll("web-1", version=None, hash=None, wait=TIMEOUT * 3) is None
    assert result == [None]
