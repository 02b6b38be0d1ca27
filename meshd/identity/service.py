"""Keeping the sidecar's workload certificate: load, enroll once, renew before expiry.

At start the identity saved under the state directory is used if it is valid and unexpired;
otherwise the sidecar enrolls with the single-use join token read from ``join_token_file``
(the file is deleted once the token is spent). Each leaf is renewed, with a fresh key, at a
uniformly random point between 50 % and 70 % of its lifetime, so a fleet enrolled at once
does not renew in lockstep. Failed renewals are retried with jittered backoff while the
current certificate stays in force; once it expires it is dropped (``current`` is ``None``)
and, if a new join token has been put in place, the sidecar enrolls again.

The trust bundle is watched apart from the leaf: a long-poll of ``GET /v1/bundle?index=``
(jittered backoff on errors; the last bundle stays while controld is unreachable) applies a
changed bundle to the identity in force at once (same leaf and key, new roots) and saves it.
When the root that now signs (``active``) did not sign the current leaf, a root rotation is
under way: the leaf is renewed after a random delay of up to ``rotation_renew_jitter_s``
instead of at 50-70 % of its life, so that the old root can be retired soon.

Consumers (TLS contexts) read :attr:`IdentityService.current` and wait for the next one with
:meth:`IdentityService.wait_changed` (or for any change, expiry included, with
:meth:`~meshd.identity.holder.IdentityHolder.wait_version`); new identities apply to new
connections.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog
import trio

from meshcore.model.bootstrap import Bootstrap
from meshcore.registry import Backoff
from meshd.control.client import ControlError
from meshd.identity.bundlewatch import BundleWatch, newer_bundle, second_client, signer_changed
from meshd.identity.client import Bundle, IdentityClient, Issued
from meshd.identity.csr import build_csr, spiffe_id_for
from meshd.identity.errors import IdentityError, InvalidIdentity
from meshd.identity.files import IdentityStore
from meshd.identity.holder import IdentityHolder
from meshd.identity.jointoken import forget_join_token, has_join_token, read_join_token
from meshd.identity.keys import PrivateKey, generate_key, key_from_pem
from meshd.identity.material import Identity, parse_identity, with_bundle
from meshd.identity.schedule import BUNDLE_POLL_S, RENEW_FROM, RENEW_TO, renewal_delay
from meshd.identity.trust import ControldTrust, first_contact

__all__ = ["RENEW_FROM", "RENEW_TO", "IdentityService", "renewal_delay"]

log = structlog.get_logger("meshd.identity")

T = TypeVar("T")


class IdentityService(IdentityHolder):
    """Owns the workload identity (a service object: :meth:`run`).

    The service owns ``client``'s connection (closed when :meth:`run` ends); it must not be
    shared with another task (a :class:`ControlClient` does one request at a time).
    """

    def __init__(
        self,
        store: IdentityStore,
        client: IdentityClient,
        *,
        service: str,
        namespace: str = "default",
        join_token_file: Path | None = None,
        trust_domain: str | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        bundle_client: IdentityClient | None = None,
        rotation_renew_jitter_s: float = 10.0,
        bundle_wait_s: float = 300.0,
        bundle_poll_s: float = BUNDLE_POLL_S,
        trust: ControldTrust | None = None,
        ca_file: Path | None = None,
        instance: str | None = None,
    ) -> None:
        super().__init__()
        #: The proxy id sent at enrollment (recorded with the identity, for display).
        self.instance = instance
        #: How controld is verified (None: a plain-http client, in tests of the logic only).
        self.trust = trust
        if trust is not None:
            trust.current = lambda: self._current
        self.ca_file = ca_file
        self.store = store
        self.client = client
        # The bundle long-poll runs beside renewals: a connection of its own.
        self.bundle_client = bundle_client or second_client(client)
        self.rotation_renew_jitter_s = rotation_renew_jitter_s
        self.bundle_wait_s = bundle_wait_s
        self.bundle_poll_s = bundle_poll_s
        #: The last bundle controld sent (None before the first answer).
        self.bundle: Bundle | None = None
        self._bundle_watch: BundleWatch | None = None
        self._sleep: trio.CancelScope | None = None
        self._save_lock = trio.Lock()
        self.service = service
        self.namespace = namespace
        self.join_token_file = join_token_file
        self.trust_domain = trust_domain
        self._clock = clock
        # Not for security: spreading renewals only.
        self._rng = rng or random.Random()  # noqa: S311
        self._retry = (retry_initial_s, retry_max_s)
        self._key: PrivateKey | None = None
        self._renew_at: float | None = None
        self._last_error: str | None = None
        self.sidecar_token: str | None = store.load_sidecar_token()
        #: The token of the last renewal, until it is saved (see ``_renew_forever``).
        self._token_to_save: str | None = None

    @classmethod
    def from_bootstrap(cls, bootstrap: Bootstrap, base_dir: Path) -> IdentityService:
        """The service for ``bootstrap.identity``; relative paths are relative to ``base_dir``."""
        from meshd.identity.fromconfig import identity_service

        return identity_service(bootstrap, base_dir)

    # -- what consumers use ----------------------------------------------------------------

    def describe(self) -> dict[str, object]:
        """State for ``/config_dump``: the identity (no key), next renewal, last error."""
        return {
            "identity": None if self._current is None else self._current.describe(),
            "state_dir": str(self.store.state_dir),
            "renew_at": self._renew_at,
            "last_error": self._last_error,
            "bundle": None
            if self.bundle is None
            else {
                "index": self.bundle.index,
                "roots": len(self.bundle.roots),
                "revoked": len(self.bundle.revoked),
            },
            "bundle_error": None if self._bundle_watch is None else self._bundle_watch.error,
        }

    # -- the service -------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Identity] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Load or enroll, report the first identity through ``task_status``, then renew forever.

        Raises :class:`IdentityError` when there is no usable identity and no join token, or
        when controld refuses the join token.
        """
        try:
            await self._run(task_status)
        except IdentityError as exc:
            self._last_error = str(exc)
            raise
        finally:
            self.client.control.close()
            self.bundle_client.control.close()

    async def _run(self, task_status: trio.TaskStatus[Identity]) -> None:
        start = self._clock()
        loaded = self._load_at_start()
        if loaded is None:
            identity = await self._enroll()
            start = max(start, identity.not_before.timestamp())
        else:
            identity, start = loaded, loaded.not_before.timestamp()
        task_status.started(identity)
        async with trio.open_nursery() as nursery:
            watch = self._bundle_watch = BundleWatch(
                self.bundle_client,
                wait_s=self.bundle_wait_s,
                poll_s=self.bundle_poll_s,
                retry=self._retry,
            )
            nursery.start_soon(watch.run, self.apply_bundle)
            await self._renew_forever(identity, start)

    async def _renew_forever(self, identity: Identity, start: float) -> None:
        while True:
            not_after = identity.not_after.timestamp()
            delay = renewal_delay(start, not_after, self._clock(), self._rng)
            if signer_changed(identity, self.bundle):
                delay = min(delay, self._rotation_delay())
            self._renew_at = self._clock() + delay
            log.info("identity renewal scheduled", spiffe_id=identity.spiffe_id, in_s=delay)
            with trio.CancelScope(deadline=trio.current_time() + delay) as self._sleep:
                # Saved while waiting for the next renewal: its thread hop never delays one.
                token, self._token_to_save = self._token_to_save, None
                if token is not None:
                    try:
                        error = await self._persist(self.store.save_sidecar_token, token)
                    except trio.Cancelled:
                        # The renewal is due before the save began (an overdue schedule):
                        # the token stays to save, unless a newer one replaced it meanwhile.
                        if self._token_to_save is None:
                            self._token_to_save = token
                        raise
                    self._last_error = self._last_error or error
                await trio.sleep_forever()
            self._sleep = None
            start = self._clock()
            # The bundle watch may have put a newer bundle on the same leaf in force.
            current = self._current if self._current is not None else identity
            identity = await self._renew_until_done(current)
            start = max(start, identity.not_before.timestamp())

    def _rotation_delay(self) -> float:
        return self._rng.uniform(0.0, self.rotation_renew_jitter_s)

    def _renew_soon(self) -> None:
        """Bring a scheduled renewal forward to within ``rotation_renew_jitter_s``."""
        sleep = self._sleep
        if sleep is None:  # renewing now; the next schedule checks the signer again
            return
        delay = self._rotation_delay()
        if trio.current_time() + delay < sleep.deadline:
            sleep.deadline = trio.current_time() + delay
            self._renew_at = self._clock() + delay
            log.info("root rotation: renewing soon", in_s=round(delay, 3))

    # -- the trust bundle --------------------------------------------------------------------

    async def apply_bundle(self, bundle: Bundle) -> None:
        """Put ``bundle`` in force on the current leaf (saved first); renew soon when a root
        rotation made another root the signer. Its revoked serials apply at once."""
        previous, self.bundle = self.bundle, bundle
        self._set_revoked(bundle.revoked)
        # Saving and putting in force happen under one lock, so a renewal's answer and a
        # bundle never overtake each other between the files and memory.
        async with self._save_lock:
            current = self._current
            if current is None:
                return  # expired: the renewal loop enrolls again (with its answer's bundle)
            if bundle.roots != current.bundle_pems:
                try:
                    updated = with_bundle(current, bundle.roots, source="controld's bundle")
                except InvalidIdentity as exc:
                    # The leaf's root was retired already: only a new leaf helps.
                    log.error("the new trust bundle does not cover the leaf", error=str(exc))
                    self._renew_soon()
                    return
                error = await self._persist(self.store.save, updated)
                self._last_error = self._last_error or error
                self._put(updated)
                log.info(
                    "trust bundle applied",
                    roots=len(bundle.roots),
                    index=bundle.index,
                    before=None if previous is None else len(previous.roots),
                )
        if signer_changed(current, self.bundle):
            self._renew_soon()

    def _load_at_start(self) -> Identity | None:
        try:
            identity = self.store.load()
        except InvalidIdentity as exc:
            if not self._has_join_token():
                raise
            log.warning("saved identity unusable; enrolling again", error=str(exc))
            return None
        if identity is None:
            return None
        if identity.not_after.timestamp() <= self._clock():
            if not self._has_join_token():
                raise IdentityError(
                    f"{self.store.current_dir}: the certificate expired at "
                    f"{identity.not_after.isoformat()} and there is no join token to enroll again"
                )
            log.warning("saved identity expired; enrolling again", spiffe_id=identity.spiffe_id)
            return None
        self._put_in_force(identity, key_from_pem(identity.key_pem))
        log.info("identity loaded", spiffe_id=identity.spiffe_id)
        return self._current

    def _has_join_token(self) -> bool:
        return has_join_token(self.join_token_file)

    async def _enroll(self) -> Identity:
        backoff = Backoff(*self._retry)
        while True:
            token = read_join_token(self.join_token_file)
            key = generate_key()
            spiffe_id = (
                None
                if self.trust_domain is None
                else spiffe_id_for(self.trust_domain, self.namespace, self.service)
            )
            csr = build_csr(key, spiffe_id=spiffe_id, common_name=self.service)
            try:
                if self.trust is not None and self.client.control.tls is not None:
                    await first_contact(self.trust, self.client.control, token, self.ca_file)
                issued = await self.client.enroll(token, csr, instance=self.instance)
            except ControlError as exc:  # EnrollmentRefused is not one: the token is bad
                await self._failed("enrollment", exc, backoff)
                continue
            del token
            assert self.join_token_file is not None
            forget_join_token(self.join_token_file)
            try:
                identity = await self._accept(key, issued, "enroll")
            except InvalidIdentity as exc:
                # The token is spent: nothing to retry with.
                raise IdentityError(f"controld's enrollment answer is unusable: {exc}") from exc
            if issued.sidecar_token is not None:
                self.sidecar_token = issued.sidecar_token
                error = await self._persist(self.store.save_sidecar_token, issued.sidecar_token)
                self._last_error = self._last_error or error
            log.info(
                "enrolled", spiffe_id=identity.spiffe_id, not_after=identity.not_after.isoformat()
            )
            return identity

    async def _renew_until_done(self, current: Identity) -> Identity:
        backoff = Backoff(*self._retry)
        while True:
            key = generate_key()
            csr = build_csr(key, spiffe_id=current.spiffe_id, common_name=self.service)
            try:
                issued = await self.client.renew(csr)
                identity = await self._accept(key, issued, "renew")
            except (ControlError, IdentityError) as exc:
                # Refusals (revoked, clock skew) are retried too: the cert stays until expiry.
                if self._current is not None and self._current.cert_pem == current.cert_pem:
                    current = self._current  # a newer bundle on the same leaf
                if current.not_after.timestamp() <= self._clock():
                    self._expire(current)
                    if self._has_join_token():
                        return await self._enroll()
                await self._failed("renewal", exc, backoff, until=current.not_after.timestamp())
                continue
            if issued.sidecar_token is not None:
                # Each renewal brings a new sidecar token (the previous one is revoked).
                self.sidecar_token = self._token_to_save = issued.sidecar_token
            log.info(
                "renewed", spiffe_id=identity.spiffe_id, not_after=identity.not_after.isoformat()
            )
            return identity

    async def _accept(self, key: PrivateKey, issued: Issued, where: str) -> Identity:
        identity = parse_identity(
            key, issued.cert_pem, issued.bundle_pems, source=f"{where} answer"
        )
        if identity.spiffe_id != issued.spiffe_id:
            raise InvalidIdentity(
                f"{where} answer: spiffe_id {issued.spiffe_id!r} is not the certificate's "
                f"{identity.spiffe_id!r}"
            )
        async with self._save_lock:
            identity = newer_bundle(identity, issued.bundle_index, self.bundle)
            error = await self._persist(self.store.save, identity)
            self._put_in_force(identity, key)
            self._last_error = error
        assert self._current is not None
        return self._current

    async def _persist(self, save: Callable[[T], object], value: T) -> str | None:
        # The identity in memory is what serves; the files only matter after a restart, so
        # failing to write them is reported, not fatal (the next renewal writes again).
        try:
            await trio.to_thread.run_sync(save, value)
        except OSError as exc:
            error = f"cannot save under {self.store.state_dir}: {exc}"
            log.error("cannot save the identity", error=error)
            return error
        return None

    def _put_in_force(self, identity: Identity, key: PrivateKey) -> None:
        self._key = key
        self._last_error = None
        self._put(identity)

    def _expire(self, identity: Identity) -> None:
        if self._current is not None:
            log.error("identity expired", spiffe_id=identity.spiffe_id)
            self._drop()

    async def _failed(
        self, what: str, exc: Exception, backoff: Backoff, *, until: float | None = None
    ) -> None:
        self._last_error = f"{what}: {exc}"
        delay = backoff.next_delay()
        if until is not None and self._current is not None:
            # Wake at expiry at the latest, to drop the certificate on time.
            delay = max(0.0, min(delay, until - self._clock()))
        log.warning(
            "identity request failed; retrying",
            what=what,
            error=str(exc),
            retry_in_s=round(delay, 3),
        )
        await trio.sleep(delay)
