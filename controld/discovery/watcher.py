"""The registry adapter: watch the registry, keep a :class:`DiscoveryView` current.

One blocking query on ``/v1/catalog/services`` follows which services exist; one per service on
``/v1/health/service/<name>`` follows their instances and checks (py-consul, in worker threads).
Every change rebuilds the view (a pure function of the entries) and swaps it in atomically.

A *session* starts with plain reads of the catalog and every service's health, swaps in one
complete view, then parks the blocking queries. Any registry error ends the session: the last
view stays in force, the status says the registry is down, and a new session starts after a
jittered exponential backoff. A new session always re-reads everything, so changes made while
the registry was unreachable (or lost by it) are picked up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import structlog
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controld.discovery.view import DiscoveryView, build_view
from meshcore.registry import Backoff, HealthEntry, RegistryError, RegistryUnavailable
from meshcore.registry.client import RegistryClient, RegistrySettings

__all__ = ["DiscoveryCollector", "RegistryWatcher", "WatcherStatus"]

log = structlog.get_logger("controld.discovery")

#: A blocking query that comes back early without a new index is a spurious wake-up; pause
#: this long before asking again, so a misbehaving registry can't make us spin.
_SPURIOUS_PAUSE_S = 0.1


@dataclass(frozen=True)
class WatcherStatus:
    """How current the view is."""

    #: The last exchange with the registry worked and the watches are parked.
    connected: bool
    last_error: str | None
    #: Wall-clock time (``time.time()``) of the last answer from the registry.
    last_contact: float | None
    #: Highest ``X-Consul-Index`` seen since the current (or last) session started.
    last_index: int
    #: Sessions that ended in an error.
    errors: int


class RegistryWatcher:
    """Service object keeping :attr:`view` in step with the registry.

    Each parked blocking query holds a worker thread, so ``settings.max_concurrency`` should
    exceed the number of services plus one; beyond it, watches queue for a thread and changes
    to some services show up only after another watch's ``wait_s`` runs out.
    """

    def __init__(
        self,
        settings: RegistrySettings,
        *,
        metrics: CollectorRegistry | None = None,
        wait_s: float = 60.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        #: Longest a blocking query is parked (a silent network loss shows up after this).
        self.wait_s = wait_s
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._clock = clock
        self._view = DiscoveryView()
        self._changed = trio.Event()
        self._health: dict[str, tuple[HealthEntry, ...]] = {}
        self._connected = False
        self._last_error: str | None = None
        self._last_contact: float | None = None
        self._last_index = 0
        self._errors = 0
        if metrics is not None:
            metrics.register(DiscoveryCollector(self))

    # -- public surface ------------------------------------------------------------------------

    @property
    def view(self) -> DiscoveryView:
        """The view in force (the last one built, also while the registry is unreachable)."""
        return self._view

    @property
    def status(self) -> WatcherStatus:
        """Connection state, last error, last contact and index."""
        return WatcherStatus(
            connected=self._connected,
            last_error=self._last_error,
            last_contact=self._last_contact,
            last_index=self._last_index,
            errors=self._errors,
        )

    async def wait_view(self, after_version: int) -> DiscoveryView:
        """Return the view once its version is greater than ``after_version``."""
        while self._view.version <= after_version:
            await self._changed.wait()
        return self._view

    async def run(
        self, *, task_status: trio.TaskStatus[RegistryWatcher] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Watch until cancelled.

        Reports started once the first session has built a complete view, or has failed (the
        control plane must start even while the registry is down; :attr:`status` says so).
        """
        first_attempt = trio.Event()
        with RegistryClient(self.settings) as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sessions, client, first_attempt)
                await first_attempt.wait()
                task_status.started(self)

    # -- sessions ------------------------------------------------------------------------------

    async def _sessions(self, client: RegistryClient, first_attempt: trio.Event) -> None:
        while True:
            try:
                await self._session(client, first_attempt)
            except* RegistryError as group:
                self._failed(_first_leaf(group))
            first_attempt.set()
            await trio.sleep(self._backoff.next_delay())

    async def _session(self, client: RegistryClient, first_attempt: trio.Event) -> None:
        index, catalog = await client.catalog_services()
        self._contact(index, fresh=True)
        fetched: dict[str, tuple[int, tuple[HealthEntry, ...]]] = {}

        async def fetch(name: str) -> None:
            fetched[name] = await client.health_service(name)

        async with trio.open_nursery() as nursery:
            for name in catalog:
                nursery.start_soon(fetch, name)
        self._health = {name: entries for name, (_i, entries) in fetched.items()}
        for service_index, _entries in fetched.values():
            self._contact(service_index)
        self._rebuild()
        if not self._connected:
            log.info(
                "registry connected",
                registry=self.settings.url,
                services=len(self._view.services),
                endpoints=self._view.endpoint_count,
            )
        self._connected = True
        self._last_error = None
        self._backoff.reset()
        first_attempt.set()

        async with trio.open_nursery() as nursery:
            watches: dict[str, trio.CancelScope] = {}

            def start_watch(name: str, since: int) -> None:
                scope = watches[name] = trio.CancelScope()
                nursery.start_soon(self._watch_service, client, name, since, scope)

            for name, (service_index, _entries) in fetched.items():
                start_watch(name, service_index)
            while True:
                new_index, catalog = await client.catalog_services(index=index, wait_s=self.wait_s)
                self._contact(new_index)
                index = await _next_index(index, new_index)
                for name in catalog.keys() - watches.keys():
                    log.debug("service appeared", service=name)
                    start_watch(name, 0)
                for name in watches.keys() - catalog.keys():
                    log.debug("service gone", service=name)
                    watches.pop(name).cancel()
                    self._health.pop(name, None)
                    self._rebuild()

    async def _watch_service(
        self, client: RegistryClient, name: str, index: int, scope: trio.CancelScope
    ) -> None:
        with scope:
            while True:
                new_index, entries = await client.health_service(
                    name, index=index, wait_s=self.wait_s if index else None
                )
                if scope.cancel_called:
                    # The catalog dropped the service while this answer was on its way; a
                    # finished thread's result is delivered despite the cancel, so it must
                    # not bring the service back.
                    return
                self._contact(new_index)
                if entries != self._health.get(name):
                    self._health[name] = entries
                    self._rebuild()
                index = await _next_index(index, new_index)

    # -- state ---------------------------------------------------------------------------------

    def _rebuild(self) -> None:
        view = build_view(self._health, self._view.version + 1)
        if view.same_services(self._view):
            return
        self._view = view
        log.debug(
            "discovery view changed",
            version=view.version,
            services=len(view.services),
            endpoints=view.endpoint_count,
        )
        self._changed.set()
        self._changed = trio.Event()

    def _contact(self, index: int, *, fresh: bool = False) -> None:
        self._last_contact = self._clock()
        # Within a session indexes only grow; a new session may find the registry reset.
        self._last_index = index if fresh else max(self._last_index, index)

    def _failed(self, exc: RegistryError) -> None:
        self._errors += 1
        self._last_error = str(exc)
        if self._connected or self._errors == 1:
            what = (
                "registry unreachable, keeping the last view"
                if isinstance(exc, RegistryUnavailable)
                else "registry refused the watch, keeping the last view"
            )
            log.warning(
                what,
                registry=self.settings.url,
                error=str(exc),
                services=len(self._view.services),
            )
        else:
            log.debug("registry still failing", error=str(exc))
        self._connected = False


async def _next_index(old: int, new: int) -> int:
    """The index for the next blocking query, following Consul's rules for clients.

    An index that went backwards means the registry's state was reset: start over from 0
    (an immediate answer). An unchanged index after an early return is a spurious wake-up.
    """
    if new < old:
        return 0
    if new == old:
        await trio.sleep(_SPURIOUS_PAUSE_S)
    return max(new, 1)


def _first_leaf(group: BaseExceptionGroup[RegistryError]) -> RegistryError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, RegistryError)
    return exc


class DiscoveryCollector(Collector):
    """``controld_registry_*`` and ``controld_discovery_*`` metrics, built at scrape time."""

    def __init__(self, watcher: RegistryWatcher) -> None:
        self._watcher = watcher

    def describe(self) -> Iterable[Metric]:
        """Sample-free families, so registration can check names without a collection."""
        return _families()

    def collect(self) -> Iterator[Metric]:
        """Current values of the watcher."""
        up, errors, services, endpoints, contact = _families()
        status = self._watcher.status
        view = self._watcher.view
        up.add_metric([], 1.0 if status.connected else 0.0)
        errors.add_metric([], status.errors)
        services.add_metric([], len(view.services))
        for name, eps in view.services.items():
            endpoints.add_metric([name], len(eps))
        if status.last_contact is not None:
            contact.add_metric([], status.last_contact)
        yield from (up, errors, services, endpoints, contact)


def _families() -> tuple[
    GaugeMetricFamily, CounterMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily
]:
    return (
        GaugeMetricFamily(
            "controld_registry_up", "1 while the registry watches are connected, else 0."
        ),
        CounterMetricFamily(
            "controld_registry_watch_errors",
            "Registry watch sessions that ended in an error (the view was kept).",
        ),
        GaugeMetricFamily("controld_discovery_services", "Services in the discovery view."),
        GaugeMetricFamily(
            "controld_discovery_endpoints",
            "Healthy endpoints in the discovery view, by service.",
            labels=("service",),
        ),
        GaugeMetricFamily(
            "controld_registry_last_contact_timestamp_seconds",
            "Unix time of the last answer from the registry.",
        ),
    )
