"""The reconciler: recompile sidecars' snapshots when their inputs change, publish to the hub.

Inputs are the discovery view (the registry watcher), the resource set (the store) and the
registered descriptors (the hub). A change of the view or the resources recompiles every
registered proxy, and so does a registration: the compiler memoizes per service and per
proxy (and keeps only what the last pass used), so a full pass over unchanged inputs costs
little. Bursts coalesce: a round compiles whatever is current when it starts, and anything
arriving meanwhile causes one more round.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import structlog
import trio

from controld.discovery import DiscoveryView
from controld.push.hub import PushHub
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.resources import ResourceSet
from meshcore.model.snapshot import Snapshot

__all__ = ["Reconciler", "ResourceSource", "SnapshotCompiler", "ViewSource"]

log = structlog.get_logger("controld.push")

CompiledSnapshots = Mapping[str, tuple[Snapshot, str]]


class SnapshotCompiler(Protocol):
    """``controld.compiler.Compiler``: snapshots and their hashes for many proxies."""

    def compile_all(
        self,
        view: DiscoveryView,
        resources: ResourceSet,
        proxies: Mapping[str, ProxyDescriptor],
    ) -> CompiledSnapshots:
        """``{proxy_id: (snapshot, hash)}`` for ``proxies``."""
        ...


class ViewSource(Protocol):
    """The registry watcher as the reconciler follows it."""

    @property
    def view(self) -> DiscoveryView:
        """The view in force."""
        ...

    async def wait_view(self, after_version: int) -> DiscoveryView:
        """The view once its version exceeds ``after_version``."""
        ...


class ResourceSource(Protocol):
    """The resource store as the reconciler follows it."""

    @property
    def current(self) -> ResourceSet:
        """The resource set in force."""
        ...

    async def wait_changed(self, after_revision: int) -> ResourceSet:
        """The set once its revision exceeds ``after_revision``."""
        ...


class Reconciler:
    """Service object keeping the hub's snapshots compiled from current inputs.

    ``compile_in_thread`` runs each round's compile in a worker thread (of its own limiter,
    so the registry watcher's parked queries can't hold it up), keeping the event loop
    answering polls meanwhile; publishing always happens on the Trio thread.
    """

    def __init__(
        self,
        hub: PushHub,
        compiler: SnapshotCompiler,
        views: ViewSource,
        resources: ResourceSource,
        *,
        clock: Callable[[], float] = time.time,
        compile_in_thread: bool = True,
    ) -> None:
        self._hub = hub
        self._compiler = compiler
        self._views = views
        self._resources = resources
        self._clock = clock
        self._in_thread = compile_in_thread
        self._limiter = trio.CapacityLimiter(1)
        self._changed_at: float | None = None
        self._kick = trio.Event()
        self._kick.set()
        self._seen_view = -1
        self._seen_revision = -1
        #: Compile rounds done (tests and status).
        self.rounds = 0
        #: Proxies whose compile failed (each kept its last snapshot).
        self.failures = 0
        #: Revision and view version of the last round's inputs.
        self.last_revision = -1
        self.last_view_version = -1

    def status_json(self) -> dict[str, object]:
        """Rounds and the inputs of the last one (part of ``/v1/status``'s ``push``)."""
        return {
            "rounds": self.rounds,
            "compile_failures": self.failures,
            "revision": self.last_revision,
            "view_version": self.last_view_version,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile until cancelled; started at once (the first round compiles everything)."""
        # The first round compiles whatever is current; only later changes matter here.
        self._seen_view = self._views.view.version
        self._seen_revision = self._resources.current.revision
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow, self._views_changed)
            nursery.start_soon(self._follow, self._resources_changed)
            nursery.start_soon(self._follow, self._registrations)
            task_status.started()
            await self._rounds()

    # -- inputs --------------------------------------------------------------------------------

    @staticmethod
    async def _follow(step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await step()

    async def _views_changed(self) -> None:
        view = await self._views.wait_view(self._seen_view)
        self._seen_view = view.version
        self._mark_changed()

    async def _resources_changed(self) -> None:
        resources = await self._resources.wait_changed(self._seen_revision)
        self._seen_revision = resources.revision
        self._mark_changed()

    async def _registrations(self) -> None:
        await self._hub.wait_registrations()
        self._kick.set()

    def _mark_changed(self) -> None:
        if self._changed_at is None:
            self._changed_at = self._clock()
        self._kick.set()

    # -- rounds --------------------------------------------------------------------------------

    async def _rounds(self) -> None:
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            changed_at, self._changed_at = self._changed_at, None
            await self._round(changed_at)

    async def _round(self, changed_at: float | None) -> None:
        view = self._views.view
        resources = self._resources.current
        descriptors = self._hub.descriptors()
        self.last_revision = resources.revision
        self.last_view_version = view.version
        self.rounds += 1
        if not descriptors:
            return
        started = time.perf_counter()
        compiled = await self._compile(view, resources, descriptors)
        elapsed = time.perf_counter() - started
        if self._hub.metrics is not None:
            self._hub.metrics.compiled(elapsed)
        # A descriptor that changed during the compile is queued again; don't publish its
        # snapshot for the old one.
        current = {
            pid: value
            for pid, value in compiled.items()
            if self._hub.descriptor(pid) is descriptors.get(pid)
        }
        self._hub.publish(
            current,
            revision=resources.revision,
            changed_at=self._clock() if changed_at is None else changed_at,
        )
        log.debug(
            "reconciled",
            proxies=len(current),
            revision=resources.revision,
            view=view.version,
            compile_s=round(elapsed, 4),
        )

    async def _compile(
        self,
        view: DiscoveryView,
        resources: ResourceSet,
        descriptors: Mapping[str, ProxyDescriptor],
    ) -> CompiledSnapshots:
        """Compile all at once; if that fails, one by one, so one bad proxy can't hold the
        others back (a failing proxy keeps its last snapshot)."""
        try:
            return await self._compile_some(view, resources, descriptors)
        except ValueError:  # pydantic's ValidationError included
            if len(descriptors) == 1:
                self.failures += 1
                log.exception("snapshot compile failed", proxies=list(descriptors))
                return {}
        out: dict[str, tuple[Snapshot, str]] = {}
        for pid, descriptor in descriptors.items():
            try:
                out.update(await self._compile_some(view, resources, {pid: descriptor}))
            except ValueError:
                self.failures += 1
                log.exception("snapshot compile failed", proxy_id=pid)
        return out

    async def _compile_some(
        self,
        view: DiscoveryView,
        resources: ResourceSet,
        descriptors: Mapping[str, ProxyDescriptor],
    ) -> CompiledSnapshots:
        if self._in_thread:
            return await trio.to_thread.run_sync(
                self._compiler.compile_all, view, resources, descriptors, limiter=self._limiter
            )
        return self._compiler.compile_all(view, resources, descriptors)
