"""Linkerd's retry budget: retries may add only a share of the traffic, plus a small floor.

Over the last ``ttl_s`` seconds the cluster may send::

    percent / 100 * requests + min_retries_per_second * ttl_s - retries

more retries, where ``requests`` and ``retries`` are those seen in that window. So during a
total outage a backend receives at most ``requests * (1 + percent/100)`` plus the floor,
however many attempts a route's retry policy allows.

The window slides in buckets of about a second (``ttl_s`` rounded, at least one bucket, at
most :data:`MAX_BUCKETS`). Sans-IO: every method takes the time.
"""

from __future__ import annotations

import math
from typing import Final

from meshcore.model.policy import RetryBudget

__all__ = ["MAX_BUCKETS", "RetryBudgetWindow"]

#: Upper bound on the window's buckets (a one-hour ``ttl_s``: one bucket a second).
MAX_BUCKETS: Final = 3600


class RetryBudgetWindow:
    """Requests and retries of the last ``ttl_s`` seconds, and what that leaves for retries."""

    __slots__ = (
        "_epoch",
        "_requests",
        "_retries",
        "_width",
        "budget",
        "requests",
        "retries",
    )

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        count = min(max(round(budget.ttl_s), 1), MAX_BUCKETS)
        self._width = budget.ttl_s / count
        self._requests = [0] * count
        self._retries = [0] * count
        #: Index (time // width) of the newest bucket.
        self._epoch: int | None = None
        #: Sums over the window.
        self.requests = 0
        self.retries = 0

    def _advance(self, now: float) -> int:
        """Drop the buckets that left the window; the newest bucket's position."""
        epoch = int(now // self._width)
        last = self._epoch
        count = len(self._requests)
        if epoch == last:
            return epoch % count  # still the newest bucket: the usual case, per request
        if last is None or epoch - last >= count:
            if self.requests or self.retries:
                self._requests = [0] * count
                self._retries = [0] * count
                self.requests = self.retries = 0
        elif epoch > last:
            for e in range(last + 1, epoch + 1):
                slot = e % count
                self.requests -= self._requests[slot]
                self.retries -= self._retries[slot]
                self._requests[slot] = 0
                self._retries[slot] = 0
        if last is None or epoch > last:
            self._epoch = epoch
        return (self._epoch if self._epoch is not None else epoch) % count

    def record_request(self, now: float) -> None:
        """A request (not a retry) started."""
        epoch = int(now // self._width)
        # Still the newest bucket, the usual case: _advance's first test, without its call.
        slot = epoch % len(self._requests) if epoch == self._epoch else self._advance(now)
        self._requests[slot] += 1
        self.requests += 1

    def remaining(self, now: float) -> float:
        """Retries the budget allows now."""
        self._advance(now)
        budget = self.budget
        floor = budget.min_retries_per_second * budget.ttl_s
        allowed = budget.percent / 100 * self.requests + floor
        return allowed - self.retries

    def try_retry(self, now: float) -> bool:
        """Take one retry from the budget; False (nothing taken) when it is spent."""
        if self.remaining(now) < 1:
            return False
        self._retries[self._advance(now)] += 1
        self.retries += 1
        return True

    def describe(self, now: float) -> dict[str, object]:
        """State for the admin API."""
        return {
            "remaining": math.floor(max(self.remaining(now), 0.0)),
            "requests": self.requests,
            "retries": self.retries,
            **self.budget.model_dump(mode="json"),
        }
