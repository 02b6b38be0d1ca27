"""The CA's state: the signing root and the trust bundle, and the root rotation steps.

A rotation under traffic runs in three steps, each persisted before it takes effect:

1. :meth:`CertificateAuthority.stage_new_root`: a new root joins the bundle; the old one still
   signs. Sidecars pick up the bundle (old + new) through their bundle long-poll.
2. :meth:`CertificateAuthority.activate`: the new root signs; the bundle still holds both, so
   leaves of either root verify while sidecars renew.
3. :meth:`CertificateAuthority.retire_old`: once every leaf has been renewed by the new root,
   the old root leaves the bundle and its files are deleted (the check that no old-root leaf
   is outstanding is :meth:`controld.ca.service.IdentityService.rotate`'s).

Each step moves the bundle's *index* forward and wakes :meth:`CertificateAuthority.wait_bundle`
callers (``GET /v1/bundle?index=&wait=``), so sidecars learn a new bundle within a round trip
rather than at their next renewal. The index isn't persisted: it starts at the wall clock in
milliseconds, so it still moves forward across a restart and a poller's stale index differs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import trio
from cryptography import x509

from controld.ca.authority import (
    DEFAULT_LEAF_TTL,
    LeafKey,
    RootCA,
    generate_root,
    sign_leaf,
    verify_leaf,
)
from controld.ca.errors import CAFileError, RotationError
from controld.ca.storage import CAStore
from meshcore.pki import signed_by

__all__ = ["MAX_BUNDLE_WAIT_S", "CertificateAuthority", "RotationState"]

#: Longest a bundle long-poll waits for a change.
MAX_BUNDLE_WAIT_S = 300.0


def _clock_index() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class RotationState:
    """Which root signs and which roots are trusted (ids, oldest first)."""

    active: str
    bundle: tuple[str, ...]

    @property
    def phase(self) -> str:
        """``"stable"`` (one root), ``"staged"`` (a new root trusted, the old one signs) or
        ``"active"`` (the new root signs, the old one still trusted)."""
        if len(self.bundle) == 1:
            return "stable"
        return "staged" if self.active == self.bundle[0] else "active"


class CertificateAuthority:
    """Signs leaves with the active root; persists roots and rotation state in a
    :class:`~controld.ca.storage.CAStore`."""

    def __init__(self, store: CAStore, roots: dict[str, RootCA], state: RotationState) -> None:
        self._store = store
        self._roots = roots
        self._state = state
        self._index = _clock_index()
        self._changed = trio.Event()

    @classmethod
    def load_or_create(
        cls, directory: Path, *, import_root: RootCA | None = None
    ) -> CertificateAuthority:
        """Load the CA in ``directory``; on first start create it with ``import_root`` or a
        freshly generated root. ``import_root`` is ignored once the CA exists.

        Raises :class:`~controld.ca.errors.CAFileError`.
        """
        store = CAStore(directory)
        store.ensure_dir()
        found = store.read_state()
        if found is None:
            root = import_root if import_root is not None else generate_root()
            store.write_root(root)
            store.write_state(root.id, [root.id])
            return cls(store, {root.id: root}, RotationState(root.id, (root.id,)))
        active, bundle = found
        roots = {root_id: store.load_root(root_id) for root_id in bundle}
        if active not in roots:
            raise CAFileError(f"CA state in {directory} names an unknown active root")
        return cls(store, roots, RotationState(active, tuple(bundle)))

    @property
    def store(self) -> CAStore:
        """The CA directory."""
        return self._store

    @property
    def state(self) -> RotationState:
        """The current rotation state."""
        return self._state

    @property
    def index(self) -> int:
        """The bundle's index: it changes (grows) whenever the bundle or the signer does."""
        return self._index

    async def wait_bundle(self, after: int, wait_s: float) -> int:
        """The index, at once when it isn't ``after``; else once it changes or after
        ``wait_s`` seconds (capped at :data:`MAX_BUNDLE_WAIT_S`), whichever comes first."""
        if self._index == after:
            with trio.move_on_after(min(max(0.0, wait_s), MAX_BUNDLE_WAIT_S)):
                while self._index == after:
                    await self._changed.wait()
        else:
            await trio.lowlevel.checkpoint()
        return self._index

    def bundle_changed(self) -> None:
        """Something the bundle carries besides the roots changed (the revoked leaves): new
        index, wake the long-polls."""
        self._bump()

    def _bump(self) -> None:
        """The bundle or the signer changed: new index, wake the long-polls."""
        self._index = max(self._index + 1, _clock_index())
        self._changed.set()
        self._changed = trio.Event()

    def root(self, root_id: str) -> RootCA | None:
        """A root of the bundle by id."""
        return self._roots.get(root_id)

    def issuer_id(self, leaf: x509.Certificate) -> str | None:
        """The id of the bundle root that signed ``leaf`` (``None``: none of them)."""
        bundle = self._state.bundle
        return next((r for r in bundle if signed_by(leaf, self._roots[r].cert)), None)

    @property
    def signer(self) -> RootCA:
        """The root that signs new leaves."""
        return self._roots[self._state.active]

    def bundle(self) -> list[x509.Certificate]:
        """The trusted roots, oldest first."""
        return [self._roots[root_id].cert for root_id in self._state.bundle]

    def bundle_pem(self) -> list[str]:
        """The trusted roots in PEM, oldest first."""
        return [self._roots[root_id].cert_pem() for root_id in self._state.bundle]

    def sign(
        self,
        public_key: LeafKey,
        identity: str,
        *,
        ttl: timedelta = DEFAULT_LEAF_TTL,
        now: datetime | None = None,
        instance_id: str | None = None,
    ) -> x509.Certificate:
        """A leaf for ``identity`` (of instance ``instance_id``) signed by the active root."""
        return sign_leaf(
            self.signer, public_key, identity, ttl=ttl, now=now, instance_id=instance_id
        )

    def verify(self, leaf: x509.Certificate, *, now: datetime | None = None) -> str:
        """The SPIFFE ID of a leaf chaining to the bundle (``RenewalRefused`` otherwise)."""
        return verify_leaf(leaf, self.bundle(), now=now)

    def stage_new_root(self, *, new_root: RootCA | None = None) -> RootCA:
        """Step 1: add a new root (generated unless given) to the bundle; the old one signs."""
        if self._state.phase != "stable":
            raise RotationError(f"a rotation is already in progress ({self._state.phase})")
        root = new_root if new_root is not None else generate_root()
        self._store.write_root(root)
        state = RotationState(self._state.active, (*self._state.bundle, root.id))
        self._store.write_state(state.active, list(state.bundle))
        self._roots[root.id] = root
        self._state = state
        self._bump()
        return root

    def activate(self) -> RootCA:
        """Step 2: the staged root signs; the bundle keeps both."""
        if self._state.phase != "staged":
            raise RotationError(f"no staged root to activate ({self._state.phase})")
        state = RotationState(self._state.bundle[-1], self._state.bundle)
        self._store.write_state(state.active, list(state.bundle))
        self._state = state
        self._bump()
        return self.signer

    def retire_old(self) -> str:
        """Step 3: drop the old root from the bundle and delete its files; its id."""
        if self._state.phase != "active":
            raise RotationError(f"no old root to retire ({self._state.phase})")
        old = self._state.bundle[0]
        state = RotationState(self._state.active, (self._state.active,))
        self._store.write_state(state.active, list(state.bundle))
        self._state = state
        del self._roots[old]
        self._bump()
        self._store.remove_root(old)
        return old
