"""Leaves issued and not yet renewed or expired, per root: what makes retiring a root safe.

Retiring the old root while a sidecar still holds a leaf it signed would cut that sidecar off
(its peers stop trusting it, and it can't renew). So every leaf controld signs is recorded
(serial, signing root, ``not_after``); it stops being outstanding when its holder renews (the
renew request proves that leaf) or when it expires.

The record is kept in memory only. Leaves issued before controld started are unknown to it:
for the roots already in the bundle at start, :meth:`OutstandingLeaves.outstanding` reports
``untracked_until`` (start + the leaf lifetime), before which a retire stays refused, because
such a leaf may still be out there. That errs on the safe side; ``force`` skips the check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509

__all__ = ["Outstanding", "OutstandingLeaves"]

#: Expired records are swept once this many leaves were recorded since the last sweep.
_SWEEP_EVERY = 1024


@dataclass(frozen=True, slots=True)
class Outstanding:
    """The outstanding leaves of one root."""

    #: Leaves recorded, neither renewed nor expired.
    count: int
    #: When the last of them expires (``None`` without any).
    last_expiry: datetime | None
    #: Leaves issued before controld started may be out until then (``None``: none can be).
    untracked_until: datetime | None

    @property
    def clear(self) -> bool:
        """Nothing known or possibly out there."""
        return self.count == 0 and self.untracked_until is None

    def describe(self) -> str:
        """A sentence for an operator (used in the 409 of a refused retire)."""
        parts = []
        if self.count and self.last_expiry is not None:
            parts.append(
                f"{self.count} leaf certificate(s) issued by it are neither renewed nor "
                f"expired; the last expires at {_iso(self.last_expiry)}"
            )
        if self.untracked_until is not None:
            parts.append(
                "leaves issued before controld started are not tracked and may be valid "
                f"until {_iso(self.untracked_until)}"
            )
        return "; ".join(parts) or "no outstanding leaves"

    def as_json(self) -> dict[str, object]:
        """For ``GET /v1/ca``."""
        return {
            "count": self.count,
            "last_expiry": None if self.last_expiry is None else _iso(self.last_expiry),
            "untracked_until": None if self.untracked_until is None else _iso(self.untracked_until),
        }


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OutstandingLeaves:
    """Issued leaves by serial: ``serial -> (root id, not_after)`` (in memory)."""

    def __init__(self, *, started: datetime, roots_at_start: tuple[str, ...]) -> None:
        self._leaves: dict[int, tuple[str, datetime]] = {}
        self._started = started
        self._roots_at_start = frozenset(roots_at_start)
        self._since_sweep = 0

    def __len__(self) -> int:
        return len(self._leaves)

    def issued(self, root_id: str, leaf: x509.Certificate, *, now: datetime) -> None:
        """Record a leaf ``root_id`` just signed."""
        self._leaves[leaf.serial_number] = (root_id, leaf.not_valid_after_utc)
        self._since_sweep += 1
        if self._since_sweep >= _SWEEP_EVERY:
            self.sweep(now)

    def renewed(self, leaf: x509.Certificate) -> None:
        """``leaf``'s holder got a new one: it is no longer outstanding."""
        self._leaves.pop(leaf.serial_number, None)

    def sweep(self, now: datetime) -> None:
        """Forget the expired leaves."""
        self._since_sweep = 0
        self._leaves = {s: v for s, v in self._leaves.items() if v[1] > now}

    def outstanding(self, root_id: str, *, now: datetime, leaf_ttl: timedelta) -> Outstanding:
        """What is outstanding of ``root_id`` at ``now``; ``leaf_ttl`` bounds the leaves
        issued before controld started."""
        expiries = [na for rid, na in self._leaves.values() if rid == root_id and na > now]
        untracked: datetime | None = None
        if root_id in self._roots_at_start and self._started + leaf_ttl > now:
            untracked = self._started + leaf_ttl
        return Outstanding(len(expiries), max(expiries, default=None), untracked)
