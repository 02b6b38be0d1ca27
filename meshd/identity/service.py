"""Keeping the sidecar's workload certificate: load, enroll once, renew before expiry.

At start the identity saved under the state directory is used if it is valid and unexpired;
otherwise the sidecar enrolls with the single-use join token read from ``join_token_file``
(the file is deleted once the token is spent). Each leaf is renewed, with a fresh key, at a
uniformly random point between 50 % and 70 % of its lifetime, so a fleet enrolled at once
does not renew in lockstep. Failed renewals are retried with jittered backoff while the
current certificate stays in force; once it expires it is dropped (``current`` is ``None``)
and, if a new join token has been put in place, the sidecar enrolls again.

Consumers (TLS contexts) read :attr:`IdentityService.current` and wait for the next one with
:meth:`IdentityService.wait_changed`; new identities apply to new connections.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog
import trio

from meshcore.errors import ConfigError
from meshcore.model.bootstrap import Bootstrap, IdentityConfig
from meshcore.registry import Backoff
from meshd.control.client import ControlClient, ControlError
from meshd.identity.client import IdentityClient, Issued
from meshd.identity.csr import build_csr, spiffe_id_for
from meshd.identity.errors import IdentityError, InvalidIdentity
from meshd.identity.files import IdentityStore
from meshd.identity.holder import IdentityHolder
from meshd.identity.keys import PrivateKey, generate_key, key_from_pem
from meshd.identity.material import Identity, parse_identity

__all__ = ["RENEW_FROM", "RENEW_TO", "IdentityService", "renewal_delay"]

log = structlog.get_logger("meshd.identity")

T = TypeVar("T")

#: Renewal happens at a uniformly random point in this fraction of the leaf's lifetime.
RENEW_FROM = 0.5
RENEW_TO = 0.7
_MAX_TOKEN = 4096


def renewal_delay(start: float, not_after: float, now: float, rng: random.Random) -> float:
    """Seconds from ``now`` to a random point in 50-70 % of ``[start, not_after]`` (>= 0)."""
    lifetime = max(0.0, not_after - start)
    at = start + lifetime * rng.uniform(RENEW_FROM, RENEW_TO)
    return max(0.0, at - now)


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
    ) -> None:
        super().__init__()
        self.store = store
        self.client = client
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

    @classmethod
    def from_bootstrap(cls, bootstrap: Bootstrap, base_dir: Path) -> IdentityService:
        """The service for ``bootstrap.identity``; relative paths are relative to ``base_dir``."""
        config = bootstrap.identity
        if config is None:
            raise ConfigError("identity: not configured")
        url = _controld_url(config, bootstrap)
        token_file = config.join_token_file
        return cls(
            IdentityStore(base_dir / config.state_dir),
            IdentityClient(ControlClient(url, user_agent="meshd-identity")),
            service=bootstrap.service,
            namespace=bootstrap.namespace,
            join_token_file=None if token_file is None else base_dir / token_file,
        )

    # -- what consumers use ----------------------------------------------------------------

    def describe(self) -> dict[str, object]:
        """State for ``/config_dump``: the identity (no key), next renewal, last error."""
        return {
            "identity": None if self._current is None else self._current.describe(),
            "state_dir": str(self.store.state_dir),
            "renew_at": self._renew_at,
            "last_error": self._last_error,
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

    async def _run(self, task_status: trio.TaskStatus[Identity]) -> None:
        start = self._clock()
        loaded = self._load_at_start()
        if loaded is None:
            identity = await self._enroll()
            start = max(start, identity.not_before.timestamp())
        else:
            identity, start = loaded, loaded.not_before.timestamp()
        task_status.started(identity)
        while True:
            not_after = identity.not_after.timestamp()
            delay = renewal_delay(start, not_after, self._clock(), self._rng)
            self._renew_at = self._clock() + delay
            log.info("identity renewal scheduled", spiffe_id=identity.spiffe_id, in_s=delay)
            await trio.sleep(delay)
            start = self._clock()
            identity = await self._renew_until_done(identity)
            start = max(start, identity.not_before.timestamp())

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
        return self.join_token_file is not None and self.join_token_file.exists()

    def _read_join_token(self) -> str:
        path = self.join_token_file
        if path is None:
            raise IdentityError("no saved identity and no identity.join_token_file to enroll with")
        try:
            with path.open("rb") as f:
                token = f.read(_MAX_TOKEN).decode("utf-8", "replace").strip()
        except OSError as exc:
            raise IdentityError(f"join token {path}: {exc.strerror or exc}") from exc
        if not token:
            raise IdentityError(f"join token {path}: empty")
        return token

    def _forget_join_token(self) -> None:
        assert self.join_token_file is not None
        try:
            self.join_token_file.unlink(missing_ok=True)
        except OSError as exc:
            # The token is spent (single use) either way; say so, don't fail over it.
            log.warning(
                "cannot delete the used join token", path=str(self.join_token_file), error=str(exc)
            )

    async def _enroll(self) -> Identity:
        backoff = Backoff(*self._retry)
        while True:
            token = self._read_join_token()
            key = generate_key()
            spiffe_id = (
                None
                if self.trust_domain is None
                else spiffe_id_for(self.trust_domain, self.namespace, self.service)
            )
            csr = build_csr(key, spiffe_id=spiffe_id, common_name=self.service)
            try:
                issued = await self.client.enroll(token, csr)
            except ControlError as exc:  # EnrollmentRefused is not one: the token is bad
                await self._failed("enrollment", exc, backoff)
                continue
            del token
            self._forget_join_token()
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
        assert self._key is not None
        old_key = self._key
        while True:
            key = generate_key()
            csr = build_csr(key, spiffe_id=current.spiffe_id, common_name=self.service)
            try:
                issued = await self.client.renew(
                    csr, current_cert_pem=current.cert_pem, current_key=old_key, now=self._clock()
                )
                identity = await self._accept(key, issued, "renew")
            except (ControlError, IdentityError) as exc:
                # Refusals (revoked, clock skew) are retried too: the cert stays until expiry.
                if current.not_after.timestamp() <= self._clock():
                    self._expire(current)
                    if self._has_join_token():
                        return await self._enroll()
                await self._failed("renewal", exc, backoff, until=current.not_after.timestamp())
                continue
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
            self._current = None

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


def _controld_url(config: IdentityConfig, bootstrap: Bootstrap) -> str:
    if config.controld_url is not None:
        return config.controld_url
    if bootstrap.snapshot.controld is None:
        raise ConfigError("identity.controld_url: required when snapshot.controld is not set")
    return bootstrap.snapshot.controld.url
