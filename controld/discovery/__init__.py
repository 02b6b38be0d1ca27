"""controld's registry adapter: a live service -> healthy endpoints view of the registry.

:class:`RegistryWatcher` follows a Consul-compatible registry with blocking queries and keeps
an immutable :class:`DiscoveryView`; :func:`build_view` is the pure rule that turns health
entries into endpoints.
"""

from controld.discovery.view import DiscoveryView, ServiceEndpoint, build_view, is_proxy_service
from controld.discovery.watcher import DiscoveryCollector, RegistryWatcher, WatcherStatus

__all__ = [
    "DiscoveryCollector",
    "DiscoveryView",
    "RegistryWatcher",
    "ServiceEndpoint",
    "WatcherStatus",
    "build_view",
    "is_proxy_service",
]
