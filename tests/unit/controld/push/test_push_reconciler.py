"""The reconciler: compiles on registration, view and resource changes; coalesces."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import trio
import trio.testing

from controld.discovery import DiscoveryView
from controld.push import PushHub, Reconciler
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.resources import ResourceSet
from meshcore.model.snapshot import Snapshot

TIMEOUT = 10.0

T = TypeVar("T")


class FakeCompiler:
    """Hash = the inputs' versions, so tests can see what a snapshot was compiled from."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, tuple[str, ...]]] = []

    def compile_all(
        self,
        view: DiscoveryView,
        resources: ResourceSet,
        proxies: Mapping[str, ProxyDescriptor],
    ) -> dict[str, tuple[Snapshot, str]]:
        self.calls.append((view.version, resources.revision, tuple(sorted(proxies))))
        return {
            pid: (Snapshot(version=0), f"v{view.version}-r{resources.revision}") for pid in proxies
        }


class FakeSource(Generic[T]):
    """A versioned value, ``make(n)`` at version ``n``; :meth:`bump` publishes the next one."""

    def __init__(self, make: Callable[[int], T]) -> None:
        self._make = make
        self.version = 0
        self.value = make(0)
        self._changed = trio.Event()

    def bump(self) -> None:
        self.version += 1
        self.value = self._make(self.version)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_after(self, version: int) -> T:
        while self.version <= version:
            await self._changed.wait()
        return self.value


class FakeViews(FakeSource[DiscoveryView]):
    def __init__(self) -> None:
        super().__init__(lambda n: DiscoveryView(version=n))

    @property
    def view(self) -> DiscoveryView:
        return self.value

    async def wait_view(self, after_version: int) -> DiscoveryView:
        return await self.wait_after(after_version)


class FakeStore(FakeSource[ResourceSet]):
    def __init__(self) -> None:
        super().__init__(lambda n: ResourceSet(revision=n))

    @property
    def current(self) -> ResourceSet:
        return self.value

    async def wait_changed(self, after_revision: int) -> ResourceSet:
        return await self.wait_after(after_revision)


def desc(pid: str) -> ProxyDescriptor:
    return ProxyDescriptor(proxy_id=pid, service="web")


async def poll_hash(hub: PushHub, pid: str, current: str | None = None) -> str:
    envelope = await hub.poll(pid, version=1 if current else None, hash=current, wait=TIMEOUT)
    assert envelope is not None
    body: str = json.loads(envelope.body)["hash"]
    return body


async def test_reconciler_compiles_registrations_and_changes() -> None:
    hub = PushHub()
    compiler = FakeCompiler()
    views, store = FakeViews(), FakeStore()
    reconciler = Reconciler(hub, compiler, views, store, compile_in_thread=False)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(reconciler.run)
            hub.register(desc("a"))
            # The first poll waits on the hub until the snapshot is compiled.
            assert await poll_hash(hub, "a") == "v0-r0"
            hub.register(desc("b"))
            assert await poll_hash(hub, "b") == "v0-r0"
            assert compiler.calls[-1][2] == ("a", "b")
            store.bump()
            assert await poll_hash(hub, "a", "v0-r0") == "v0-r1"
            assert compiler.calls[-1] == (0, 1, ("a", "b"))
            views.bump()
            assert await poll_hash(hub, "b", "v0-r1") == "v1-r1"
            nursery.cancel_scope.cancel()


async def test_reconciler_coalesces_bursts() -> None:
    hub = PushHub()
    compiler = FakeCompiler()
    views, store = FakeViews(), FakeStore()
    reconciler = Reconciler(hub, compiler, views, store, compile_in_thread=True)
    hub.register(desc("a"))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(reconciler.run)
            assert await poll_hash(hub, "a") == "v0-r0"
            rounds = reconciler.rounds
            for _ in range(20):
                store.bump()
                views.bump()
            # Whatever rounds run, the last compiles the final inputs.
            current = "v0-r0"
            while current != "v20-r20":
                current = await poll_hash(hub, "a", current)
            await trio.testing.wait_all_tasks_blocked()
            assert reconciler.rounds - rounds < 40
            assert reconciler.status_json()["revision"] == 20
            nursery.cancel_scope.cancel()


class PickyCompiler(FakeCompiler):
    """Fails every pass that includes the proxy ``bad``."""

    def compile_all(
        self,
        view: DiscoveryView,
        resources: ResourceSet,
        proxies: Mapping[str, ProxyDescriptor],
    ) -> dict[str, tuple[Snapshot, str]]:
        if "bad" in proxies:
            raise ValueError("cannot compile bad")
        return super().compile_all(view, resources, proxies)


async def test_one_failing_proxy_does_not_hold_back_the_others() -> None:
    hub = PushHub()
    reconciler = Reconciler(hub, PickyCompiler(), FakeViews(), FakeStore(), compile_in_thread=False)
    hub.register(desc("bad"))
    hub.register(desc("good"))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(reconciler.run)
            assert await poll_hash(hub, "good") == "v0-r0"
            assert await hub.poll("bad", version=None, hash=None, wait=0) is None
            assert reconciler.failures >= 1
            nursery.cancel_scope.cancel()
