"""Jittered exponential backoff for reconnecting to the registry.

Many sidecars lose the same registry at the same moment; without jitter they would all come
back in lockstep. Each delay is drawn uniformly from the upper half of the current step
("equal jitter"), so it never collapses to zero and never exceeds ``maximum_s``.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays of ``initial_s * multiplier**n``, capped at ``maximum_s``, with equal jitter."""

    def __init__(
        self,
        initial_s: float = 0.5,
        maximum_s: float = 30.0,
        *,
        multiplier: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial_s <= maximum_s or multiplier < 1:
            raise ValueError("need 0 < initial_s <= maximum_s and multiplier >= 1")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.multiplier = multiplier
        # Not for security: spreading retries only.
        self._rng = rng or random.Random()  # noqa: S311
        self._step = initial_s
        #: Failures since the last :meth:`reset`.
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (and grow the step)."""
        step = self._step
        self._step = min(self.maximum_s, step * self.multiplier)
        self.failures += 1
        return step / 2 + self._rng.uniform(0, step / 2)

    def reset(self) -> None:
        """An attempt succeeded: the next failure starts from ``initial_s`` again."""
        self._step = self.initial_s
        self.failures = 0
