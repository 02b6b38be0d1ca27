"""The identity in force, numbered by generation, and a way to wait for the next one.

Two counters: ``generation`` numbers the identities put in force; ``version`` counts every
change, including the identity being dropped (expired) and a new list of revoked peer
certificates, which :meth:`wait_version` reports and :meth:`wait_changed` (new identities
only) does not.
"""

from __future__ import annotations

import trio

from meshd.identity.material import Identity

__all__ = ["IdentityHolder"]


class IdentityHolder:
    """Base of the identity sources (enrolled or from files) that TLS contexts follow."""

    def __init__(self) -> None:
        self._current: Identity | None = None
        self._generation = 0
        self._version = 0
        self._changed = trio.Event()
        self._revoked: frozenset[int] = frozenset()

    @property
    def current(self) -> Identity | None:
        """The identity in force (``None`` before the first one and after expiry)."""
        return self._current

    @property
    def revoked(self) -> frozenset[int]:
        """Serials of revoked certificates (controld's bundle): peers presenting one are
        refused."""
        return self._revoked

    @property
    def generation(self) -> int:
        """Number of identities put in force so far."""
        return self._generation

    @property
    def version(self) -> int:
        """Number of changes so far (new identities and drops)."""
        return self._version

    async def wait_version(self, after: int) -> int:
        """The version, once it is above ``after`` (at once if it is already)."""
        while self._version <= after:
            await self._changed.wait()
        return self._version

    async def wait_changed(self, after: int) -> Identity:
        """The first identity in force with a generation above ``after`` (waits for it)."""
        while self._current is None or self._current.generation <= after:
            await self._changed.wait()
        return self._current

    def _put(self, identity: Identity) -> Identity:
        """Put ``identity`` in force as the next generation and wake the waiters."""
        self._generation += 1
        self._current = identity.with_generation(self._generation)
        self._wake()
        return self._current

    def _set_revoked(self, serials: frozenset[int]) -> None:
        """A new list of revoked serials; wakes the waiters when it differs."""
        if serials != self._revoked:
            self._revoked = serials
            self._wake()

    def _drop(self) -> None:
        """No identity in force any more (it expired); wake the waiters."""
        if self._current is not None:
            self._current = None
            self._wake()

    def _wake(self) -> None:
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()
