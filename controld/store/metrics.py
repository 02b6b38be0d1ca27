"""Prometheus view of the store (registered on the daemon's own registry, never a global)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshcore.model.resources import KINDS

if TYPE_CHECKING:
    from controld.store.store import ResourceStore

__all__ = ["StoreCollector"]


class StoreCollector(Collector):
    """``controld_resources{kind}``, ``controld_store_invalid_values_total``,
    ``controld_store_revision`` and ``controld_store_connected``, read at scrape time."""

    def __init__(self, store: ResourceStore) -> None:
        self._store = store

    def collect(self) -> Iterable[Metric]:
        """Current values."""
        status = self._store.status
        counts = self._store.kind_counts
        resources = GaugeMetricFamily(
            "controld_resources", "Policy resources in force, by kind.", labels=["kind"]
        )
        for kind in sorted(KINDS.keys() | counts.keys()):
            resources.add_metric([kind], counts.get(kind, 0))
        yield resources
        yield CounterMetricFamily(
            "controld_store_invalid_values",
            "Stored values that did not decode and were skipped.",
            value=status.invalid_values,
        )
        yield GaugeMetricFamily(
            "controld_store_revision", "Revision of the resources in force.", value=status.revision
        )
        yield GaugeMetricFamily(
            "controld_store_connected",
            "1 while the store's watch of the registry is connected.",
            value=1 if status.connected else 0,
        )
