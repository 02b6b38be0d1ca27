"""Following controld's trust bundle: blocking queries on ``GET /v1/bundle?index=&wait=``.

Errors are retried with jittered backoff; the last bundle stays in force meanwhile. A
controld that doesn't do blocking queries (no index in its answer) is polled instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio

from meshcore.registry import Backoff
from meshd.control.client import ControlClient, ControlError
from meshd.identity.client import Bundle, IdentityClient
from meshd.identity.errors import InvalidIdentity
from meshd.identity.material import Identity, issued_by, with_bundle

__all__ = ["BundleWatch", "newer_bundle", "second_client", "signer_changed"]

log = structlog.get_logger("meshd.identity")


class BundleWatch:
    """Calls ``on_bundle`` with each bundle whose index differs from the last one seen (every
    bundle, from a controld without indexes)."""

    def __init__(
        self,
        client: IdentityClient,
        *,
        wait_s: float,
        poll_s: float,
        retry: tuple[float, float],
    ) -> None:
        self.client = client
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.retry = retry
        #: The last failure (None after a success).
        self.error: str | None = None

    async def run(self, on_bundle: Callable[[Bundle], Awaitable[None]]) -> None:
        """Watch until cancelled."""
        backoff = Backoff(*self.retry)
        index: int | None = None
        while True:
            try:
                if index is None:
                    bundle = await self.client.watch_bundle(None)
                else:
                    bundle = await self.client.watch_bundle(index, self.wait_s)
            except ControlError as exc:
                self.error = f"bundle: {exc}"
                delay = backoff.next_delay()
                log.warning("trust bundle fetch failed; retrying", error=str(exc), in_s=delay)
                await trio.sleep(delay)
                continue
            backoff.reset()
            self.error = None
            if bundle.index is None or bundle.index != index:
                await on_bundle(bundle)
            if bundle.index is None:  # an older controld: no blocking query, poll
                index = None
                await trio.sleep(self.poll_s)
            else:
                index = bundle.index


def signer_changed(identity: Identity, bundle: Bundle | None) -> bool:
    """Whether the root that signs now (``bundle.active``) did not sign ``identity``'s leaf:
    a root rotation is under way and the leaf should be renewed soon."""
    if bundle is None or bundle.active is None:
        return False
    return not issued_by(identity.cert_pem, bundle.active)


def newer_bundle(identity: Identity, answer_index: int | None, watched: Bundle | None) -> Identity:
    """``identity`` (from an enroll/renew answer of bundle index ``answer_index``) with the
    watched bundle instead when that one is newer and covers the leaf."""
    if (
        watched is None
        or watched.index is None
        or answer_index is None
        or watched.index <= answer_index
        or watched.roots == identity.bundle_pems
    ):
        return identity
    try:
        return with_bundle(identity, watched.roots, source="controld's bundle")
    except InvalidIdentity:
        return identity


def second_client(client: IdentityClient) -> IdentityClient:
    """A client to the same controld as ``client`` on a connection of its own (a
    :class:`ControlClient` does one request at a time, and the long-poll parks one)."""
    control = client.control
    return IdentityClient(
        ControlClient(
            control.url,
            timeout_s=control.timeout_s,
            user_agent="meshd-bundle",
            tls=control.tls,
            peer_id=control.peer_id,
            field="identity.controld_url",
        )
    )
