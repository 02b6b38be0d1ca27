"""Periodic CA chores: removing expired join tokens, refreshing the revoked leaves."""

from __future__ import annotations

import structlog
import trio

from controld.ca.jointokens import JoinTokens
from controld.ca.service import IdentityService
from meshcore.registry.errors import RegistryError

__all__ = ["JoinTokenSweeper", "RevocationSync"]

log = structlog.get_logger("controld.ca")


class JoinTokenSweeper:
    """Sweeps ``tokens`` every ``interval_s`` (a service object: :meth:`run`).

    Several controld replicas may sweep at once: each delete is a check-and-set, so a token
    is removed once and a token consumed meanwhile is left to its consumer.
    """

    def __init__(self, tokens: JoinTokens, *, interval_s: float = 300.0) -> None:
        self.tokens = tokens
        self.interval_s = interval_s
        self.swept = 0
        self.last_error: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep now, then every ``interval_s``, until cancelled; registry errors are logged."""
        task_status.started()
        while True:
            await self.sweep_once()
            await trio.sleep(self.interval_s)

    async def sweep_once(self) -> int:
        """One sweep; how many tokens it removed (0 when the registry failed)."""
        try:
            swept = await self.tokens.sweep()
        except RegistryError as exc:
            self.last_error = str(exc)
            log.warning("join token sweep failed, retrying later", error=str(exc))
            return 0
        self.last_error = None
        self.swept += swept
        if swept:
            log.info("expired join tokens removed", count=swept)
        return swept


class RevocationSync:
    """Rebuilds the revoked leaves from the identity records (a service object: :meth:`run`).

    A revocation through this controld applies at once; this picks up what changed
    otherwise (another replica, a restored registry) and prunes expired leaves.
    """

    def __init__(self, identity: IdentityService, *, interval_s: float = 30.0) -> None:
        self.identity = identity
        self.interval_s = interval_s
        self.last_error: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh once before reporting started (so the first bundles carry the revoked
        leaves), then every ``interval_s``, until cancelled; registry errors are logged."""
        await self.refresh_once()
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            await self.refresh_once()

    async def refresh_once(self) -> bool:
        """One refresh; False when the registry failed (the last list stays)."""
        try:
            await self.identity.refresh_revocations()
        except RegistryError as exc:
            self.last_error = str(exc)
            log.warning("revocation refresh failed, retrying later", error=str(exc))
            return False
        self.last_error = None
        return True
