"""Endpoint health changes seen in the discovery view, as control-plane events.

The registry watcher swaps in a new :class:`~controld.discovery.DiscoveryView` (service ->
healthy endpoints) on every change; comparing two consecutive views is cheap and says which
endpoints joined a service's healthy set and which left it (failing checks, or deregistered:
the view doesn't tell the two apart). The first view read from the registry is the baseline:
a controld starting up records no event for every endpoint it finds.
"""

from __future__ import annotations

from typing import Protocol

import trio

from controld.discovery import DiscoveryView, ServiceEndpoint
from controld.events.ring import EventSink, NewEvent, record_all

__all__ = ["EndpointWatch", "endpoint_events"]


class ViewSource(Protocol):
    """The registry watcher as followed here."""

    @property
    def view(self) -> DiscoveryView:
        """The view in force."""
        ...

    async def wait_view(self, after_version: int) -> DiscoveryView:
        """The view once its version exceeds ``after_version``."""
        ...


def _where(service: str, endpoint: ServiceEndpoint) -> str:
    return f"{service}/{endpoint.host}:{endpoint.port}"


def endpoint_events(before: DiscoveryView, after: DiscoveryView) -> list[NewEvent]:
    """An event for each endpoint that joined or left its service's healthy endpoints, by
    service and address."""
    out: list[NewEvent] = []
    for service in sorted(before.services.keys() | after.services.keys()):
        old = set(before.endpoints(service))
        new = set(after.endpoints(service))
        for endpoint in sorted(new - old):
            detail = f"instance {endpoint.instance_id} on {endpoint.node}"
            out.append(NewEvent("endpoint.healthy", _where(service, endpoint), detail))
        for endpoint in sorted(old - new):
            detail = f"instance {endpoint.instance_id}: failing or deregistered"
            out.append(NewEvent("endpoint.unhealthy", _where(service, endpoint), detail, "warning"))
    return out


class EndpointWatch:
    """Records :func:`endpoint_events` of each new view of ``views``."""

    def __init__(self, views: ViewSource, events: EventSink) -> None:
        self._views = views
        self._events = events

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the views until cancelled."""
        current = self._views.view
        # Version 0 is the empty view before the registry answered: not a baseline.
        baseline = current.version == 0
        task_status.started()
        while True:
            new = await self._views.wait_view(current.version)
            if baseline:
                baseline = False
            else:
                record_all(self._events, endpoint_events(current, new))
            current = new
