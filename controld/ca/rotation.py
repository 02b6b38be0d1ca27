"""The CA's state: the signing root and the trust bundle, and the root rotation steps.

A rotation under traffic runs in three steps, each persisted before it takes effect:

1. :meth:`CertificateAuthority.stage_new_root`: a new root joins the bundle; the old one still
   signs. Sidecars pick up the bundle (old + new) at their next renewal or bundle fetch.
2. :meth:`CertificateAuthority.activate`: the new root signs; the bundle still holds both, so
   leaves of either root verify while sidecars renew.
3. :meth:`CertificateAuthority.retire_old`: once every leaf has been renewed by the new root,
   the old root leaves the bundle and its files are deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

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

__all__ = ["CertificateAuthority", "RotationState"]


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
    def state(self) -> RotationState:
        """The current rotation state."""
        return self._state

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
    ) -> x509.Certificate:
        """A leaf for ``identity`` signed by the active root."""
        return sign_leaf(self.signer, public_key, identity, ttl=ttl, now=now)

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
        return root

    def activate(self) -> RootCA:
        """Step 2: the staged root signs; the bundle keeps both."""
        if self._state.phase != "staged":
            raise RotationError(f"no staged root to activate ({self._state.phase})")
        state = RotationState(self._state.bundle[-1], self._state.bundle)
        self._store.write_state(state.active, list(state.bundle))
        self._state = state
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
        self._store.remove_root(old)
        return old
