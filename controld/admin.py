"""The registry and discovery part of controld's ``/v1/status`` document.

The HTTP API itself (``/v1/status``, ``/metrics``, ``/ready``, ``/live`` and the rest) is
:mod:`controld.api`; the daemon builds its status document with :func:`status_json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controld.discovery import DiscoveryView, WatcherStatus

__all__ = ["RegistryLink", "status_json"]


@dataclass(frozen=True)
class RegistryLink:
    """Which registry controld follows and how."""

    #: ``"embedded"`` (served by this daemon) or ``"external"``.
    mode: str
    #: ``http(s)://host:port`` of the registry.
    address: str


def status_json(link: RegistryLink, status: WatcherStatus, view: DiscoveryView) -> dict[str, Any]:
    """The ``/v1/status`` document for one moment."""
    return {
        "registry": {
            "mode": link.mode,
            "address": link.address,
            "connected": status.connected,
            "last_error": status.last_error,
            "last_contact": status.last_contact,
            "last_index": status.last_index,
            "errors": status.errors,
        },
        "discovery": {
            "version": view.version,
            "services": {
                name: [
                    {
                        "host": ep.host,
                        "port": ep.port,
                        "instance_id": ep.instance_id,
                        "sidecar": ep.sidecar,
                    }
                    for ep in endpoints
                ]
                for name, endpoints in view.services.items()
            },
        },
    }
