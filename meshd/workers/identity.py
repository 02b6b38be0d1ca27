"""The workload identity of a worker process: the primary's, relayed over the channel."""

from __future__ import annotations

from typing import Any

from meshd.identity.holder import IdentityHolder
from meshd.identity.material import parse_identity

__all__ = ["RelayedIdentity"]


class RelayedIdentity(IdentityHolder):
    """The primary's workload identity, as its channel delivers it (same consumer API as
    :class:`~meshd.identity.service.IdentityService`)."""

    def apply(self, message: dict[str, Any]) -> None:
        """Put the identity of an ``identity`` message in force (or drop it)."""
        if "cert" not in message:
            self._drop()
            return
        identity = parse_identity(
            str(message["key"]).encode("ascii"),
            str(message["cert"]).encode("ascii"),
            tuple(str(pem).encode("ascii") for pem in message["bundle"]),
            source="the primary's identity",
        )
        self._put(identity)

    def apply_revoked(self, message: dict[str, Any]) -> None:
        """Put the serials of a ``revoked`` message in force."""
        self._set_revoked(frozenset(int(s, 16) for s in message["serials"]))

    def describe(self) -> dict[str, object]:
        """State for ``/config_dump`` (no key material)."""
        return {
            "identity": None if self._current is None else self._current.describe(),
            "from_primary": True,
        }
