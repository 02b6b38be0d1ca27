"""When a workload certificate is renewed, and how often the bundle is polled without blocking
queries."""

from __future__ import annotations

import random

__all__ = ["BUNDLE_POLL_S", "RENEW_FROM", "RENEW_TO", "renewal_delay"]

#: Renewal happens at a uniformly random point in this fraction of the leaf's lifetime.
RENEW_FROM = 0.5
RENEW_TO = 0.7
#: Poll interval of the bundle when controld doesn't do blocking queries.
BUNDLE_POLL_S = 60.0


def renewal_delay(start: float, not_after: float, now: float, rng: random.Random) -> float:
    """Seconds from ``now`` to a random point in 50-70 % of ``[start, not_after]`` (>= 0)."""
    lifetime = max(0.0, not_after - start)
    at = start + lifetime * rng.uniform(RENEW_FROM, RENEW_TO)
    return max(0.0, at - now)
