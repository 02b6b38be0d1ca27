"""Records read back from the registry KV that were refused: logged once, counted by kind.

Whatever controld reads under its KV prefix may have been written by someone else (anyone
with write access to the registry). A value that is too large, too deep, not JSON, unsealed,
forged or off-schema is skipped; :class:`InvalidRecords` logs it (a structlog warning naming
the key and the reason) and counts it in ``controld_kv_records_invalid_total{kind}``, once per
key and ModifyIndex however often the value is read again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import structlog
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MAX_REMEMBERED", "InvalidRecords"]

log = structlog.get_logger("controld.store")

#: Refused values remembered (so each is logged once); beyond it the oldest are forgotten and
#: would be logged (and counted) again if read again.
MAX_REMEMBERED = 10_000


class InvalidRecords(Collector):
    """Log-once bookkeeping and the Prometheus counter of refused KV values."""

    def __init__(self) -> None:
        # Insertion-ordered: the oldest entries are dropped first.
        self._seen: dict[tuple[str, int], None] = {}
        #: Refused values per record kind (``resource``, ``revision``, ``history``, ``audit``).
        self.totals: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """Refused values of every kind."""
        return sum(self.totals.values())

    def note(self, kind: str, key: str, modify_index: int, reason: str) -> None:
        """Log and count the refused value of ``key`` (once per key and ModifyIndex)."""
        seen = (key, modify_index)
        if seen in self._seen:
            return
        if len(self._seen) >= MAX_REMEMBERED:
            for old in list(self._seen)[: MAX_REMEMBERED // 2]:
                del self._seen[old]
        self._seen[seen] = None
        self.totals[kind] += 1
        log.warning(
            "invalid KV record skipped",
            kind=kind,
            key=key,
            modify_index=modify_index,
            reason=reason,
        )

    def forget(self, prefix: str, live: Iterable[tuple[str, int]]) -> None:
        """Forget refused values under ``prefix`` that are no longer stored (``live``: those
        still stored), so the memory stays bounded."""
        keep = set(live)
        self._seen = {
            seen: None for seen in self._seen if seen in keep or not seen[0].startswith(prefix)
        }

    def collect(self) -> Iterable[Metric]:
        """``controld_kv_records_invalid_total{kind}``."""
        family = CounterMetricFamily(
            "controld_kv_records_invalid",
            "Values read from controld's KV prefix that were refused (too large or deep, not "
            "JSON, unsealed, forged or off-schema) and skipped, by record kind.",
            labels=["kind"],
        )
        for kind in sorted(self.totals.keys() | {"resource", "revision", "history", "audit"}):
            family.add_metric([kind], self.totals[kind])
        yield family
