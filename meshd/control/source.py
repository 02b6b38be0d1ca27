"""Snapshots from controld: register, long-poll, apply, ACK by the next poll, NACK on rejection.

Protocol (controld's HTTP API, Contract 5; its models, paths and headers are
:mod:`meshcore.api.sidecar`'s):

* ``POST /v1/proxies/{id}`` registers the sidecar's :class:`ProxyDescriptor` (again after a
  404 on a poll: controld restarted and forgot it, or after a reload changed the descriptor).
* ``GET /v1/snapshots/{id}?version=V&hash=H&wait=W`` reports the snapshot in service (this *is*
  the ACK of ``V``) and returns 200 with a newer one at once, or 304 after up to ``W`` s.
* Every request carries the features the sidecar enforces (``x-meshd-features``), so
  controld knows what it may send; a snapshot using another one is NACKed (by ``apply``).
* A poll answer with ``x-meshd-drain: 1`` relays an operator's drain request
  (``POST /v1/proxies/{id}/drain``): the sidecar drains as on SIGTERM.
* A snapshot that fails validation or can't be applied is NACKed with
  ``POST /v1/snapshots/{id}/nack {version, hash, error}``; polling continues with the old
  version and hash, so the running configuration stays and controld knows why.

While controld is unreachable (connection errors, timeouts, 5xx) or answers something that
isn't the protocol's, the sidecar keeps serving what it has and retries with jittered
exponential backoff up to ``retry_max_s``. Each applied snapshot is written to ``cache_file``
(:mod:`meshd.control.cache`), read back when controld can't be reached at start.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import trio
from pydantic import ValidationError

from meshcore.api.sidecar import (
    DRAIN_HEADER,
    DRAIN_VALUE,
    FEATURES_HEADER,
    MAX_NACK_ERROR,
    NackRequest,
    RawSnapshotAnswer,
    Registered,
    nack_path,
    proxy_path,
    snapshot_path,
    snapshot_query,
)
from meshcore.errors import ConfigError
from meshcore.model.bootstrap import ControlSource as ControlSourceConfig
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.snapshot import Snapshot
from meshcore.registry import Backoff
from meshd.control.cache import validate_snapshot, write_cache
from meshd.control.client import (
    ControlClient,
    ControlError,
    ControlResponse,
    ControlUnavailable,
)
from meshd.errors import SnapshotRejected

__all__ = ["ControlSource"]

log = structlog.get_logger("meshd.control")

#: The callback that puts a snapshot in service; raises to reject it.
ApplyFn = Callable[[Snapshot], None]
#: Errors of ``apply`` (and of validation) that mean "rejected", i.e. NACK and keep the old one.
REJECTIONS = (SnapshotRejected, ConfigError, ValidationError)
_INITIAL_BACKOFF_S = 0.25


class _NoTokenYet(ControlError):
    """The token comes with the identity's enrollment, which hasn't happened yet."""


class _ServerError(ControlError):
    """controld answered, but not with something the protocol allows here."""


class ControlSource:
    """Keeps the sidecar's snapshot in step with controld (a service object: :meth:`run`).

    ``apply`` is called on the Trio thread with each new, validated snapshot; it raises
    :class:`SnapshotRejected` or :class:`ConfigError` to reject it.
    """

    def __init__(
        self,
        config: ControlSourceConfig,
        descriptor: ProxyDescriptor,
        apply: ApplyFn,
        *,
        token: str | None = None,
        cache_file: Path | None = None,
        user_agent: str = "",
        on_rejected: Callable[[str], None] | None = None,
        token_provider: Callable[[], str | None] | None = None,
        tls: Callable[[], ssl.SSLContext] | None = None,
        peer_id: Callable[[], str | None] | None = None,
        features: str | None = None,
        on_drain: Callable[[], None] | None = None,
    ) -> None:
        self._apply = apply
        #: The features header value (None: not sent, as an older meshd).
        self._features = features
        #: Called when a poll answer says an operator asked this sidecar to drain.
        self._on_drain = on_drain
        #: For an https controld: the context of each new connection, controld's SPIFFE ID.
        self._tls = tls
        self._peer_id = peer_id
        self._on_rejected = on_rejected
        self._user_agent = user_agent
        #: Without a ``token``: where it comes from once there is one (the sidecar token
        #: controld hands out with the enrollment); polls wait for it.
        self._token_provider = token_provider
        self._configure(config, descriptor, token, cache_file)
        #: Set once a snapshot from controld (not from the cache) is in service.
        self.first_applied = trio.Event()
        #: The last request to controld succeeded.
        self.connected = False
        self.registered = False
        self.last_error: str | None = None
        #: Version and hash of the snapshot in service (reported, i.e. ACKed, by each poll).
        self.version: int | None = None
        self.hash: str | None = None
        self.last_nack: dict[str, Any] | None = None
        self.applied = 0
        self.rejected = 0
        self.polls = 0
        self.failures = 0
        self._scope: trio.CancelScope | None = None
        self._side: ControlClient | None = None
        self._side_key: tuple[str, str | None] | None = None

    def _configure(
        self,
        config: ControlSourceConfig,
        descriptor: ProxyDescriptor,
        token: str | None,
        cache_file: Path | None,
    ) -> None:
        self.config = config
        self.descriptor = descriptor
        self.cache_file = cache_file
        self._token = token
        self._client = ControlClient(
            config.url,
            token=token,
            timeout_s=config.timeout_s,
            user_agent=self._user_agent,
            tls=self._tls,
            peer_id=self._peer_id,
            headers=None if self._features is None else {FEATURES_HEADER: self._features},
        )
        self._backoff = Backoff(min(_INITIAL_BACKOFF_S, config.retry_max_s), config.retry_max_s)
        proxy_id = descriptor.proxy_id
        self._paths = (proxy_path(proxy_id), snapshot_path(proxy_id), nack_path(proxy_id))

    # -- control --------------------------------------------------------------------------------

    def side_client(self) -> ControlClient | None:
        """A second client with this source's settings (URL, token, TLS), for requests beside
        the long-poll (telemetry reports); rebuilt when those change. None while the token
        is still to come from the enrollment."""
        # The latest enrolled token (each renewal revokes the previous one).
        token = self._token_provider() if self._token_provider is not None else self._token
        if token is None and self._token_provider is not None:
            return None
        key = (self.config.url, token)
        if self._side is None or self._side_key != key:
            if self._side is not None:
                self._side.close()
            self._side = ControlClient(
                self.config.url,
                token=token,
                timeout_s=self.config.timeout_s,
                user_agent=self._user_agent,
                tls=self._tls,
                peer_id=self._peer_id,
            )
            self._side_key = key
        return self._side

    def adopt(self, version: int, digest: str) -> None:
        """A snapshot from elsewhere (the cache) is in service: report it in the next poll."""
        self.version = version
        self.hash = digest

    def update(
        self,
        config: ControlSourceConfig,
        descriptor: ProxyDescriptor,
        *,
        token: str | None = None,
        cache_file: Path | None = None,
    ) -> None:
        """A reload changed the settings or the descriptor: reconnect and register again."""
        old_client = self._client
        self._configure(config, descriptor, token, cache_file)
        old_client.close()
        self.registered = False
        if self._scope is not None:
            self._scope.cancel()

    def describe(self) -> dict[str, Any]:
        """State for the admin API (``/config_dump``, ``/stats``)."""
        return {
            "url": self.config.url,
            "proxy_id": self.descriptor.proxy_id,
            "connected": self.connected,
            "registered": self.registered,
            "version": self.version,
            "hash": self.hash,
            "last_error": self.last_error,
            "last_nack": self.last_nack,
            "applied": self.applied,
            "rejected": self.rejected,
            "polls": self.polls,
            "failures": self.failures,
        }

    # -- the loop -------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[ControlSource] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll controld until cancelled (reports itself at once: the first poll may take long)."""
        task_status.started(self)
        try:
            while True:
                with trio.CancelScope() as scope:
                    self._scope = scope
                    await self._follow()
                self._scope = None
        finally:
            self._client.close()
            if self._side is not None:
                self._side.close()

    async def _follow(self) -> None:
        while True:
            try:
                await self._step()
            except ControlError as exc:
                self.connected = not isinstance(exc, ControlUnavailable | _NoTokenYet)
                self.failures += 1
                self.last_error = str(exc)
                delay = self._backoff.next_delay()
                # The first failure of a run is news; the retries after it are not.
                level = log.warning if self._backoff.failures == 1 else log.debug
                level("controld unreachable or failing, retrying", error=str(exc), retry_in=delay)
                self._client.close()
                await trio.sleep(delay)
            else:
                self._backoff.reset()

    def _take_provided_token(self) -> None:
        token = self._token_provider() if self._token_provider is not None else None
        if token is None:
            raise _NoTokenYet("no sidecar token yet: waiting for the identity's enrollment")
        if token == self._token:
            return
        self._client.close()
        self._configure(self.config, self.descriptor, token, self.cache_file)

    async def _step(self) -> None:
        if self._token_provider is not None:
            # Every renewal brings a new token (the previous one is revoked): use the latest.
            self._take_provided_token()
        client = self._client
        just_registered = False
        register, poll, _ = self._paths
        if not self.registered:
            answer = await client.post_json(register, self.descriptor.model_dump(mode="json"))
            if not 200 <= answer.status < 300:
                raise _ServerError(f"registering: {answer.error_text()}")
            answer.parse(Registered, "registration answer")
            self.registered = just_registered = True
            log.info("registered with controld", url=self.config.url)
        query = snapshot_query(self.version, self.hash, self.config.wait_s)
        self.polls += 1
        answer = await client.get(poll, query, wait_s=self.config.wait_s)
        if answer.headers.get(DRAIN_HEADER) == DRAIN_VALUE and self._on_drain is not None:
            log.warning("controld asks this sidecar to drain")
            self._on_drain()
        if answer.status == 304:
            self.connected = True
            return
        if answer.status == 404:
            self.registered = False
            if just_registered:
                raise _ServerError(f"unknown proxy right after registering: {answer.error_text()}")
            log.info("controld does not know this sidecar, registering again")
            return
        if answer.status != 200:
            raise _ServerError(f"polling: {answer.error_text()}")
        self.connected = True
        self.last_error = None
        await self._receive(answer)

    async def _receive(self, answer: ControlResponse) -> None:
        # The snapshot stays a dict here: a bad one is rejected (NACKed) below, not retried.
        parsed = answer.parse(RawSnapshotAnswer, "snapshot answer")
        version, digest, document = parsed.version, parsed.hash, parsed.snapshot
        if digest == self.hash:
            # Same content under a new version: nothing to apply, only to report.
            self.version = version
            return
        nack = self.last_nack
        if nack is not None and nack["hash"] == digest:
            # controld missed the NACK (lost with a broken connection): say it again, and
            # pause so that a controld that ignores NACKs can't make this a busy loop.
            await self._send_nack(version, digest, nack["error"])
            raise _ServerError(f"controld sent snapshot {version} again after its NACK")
        try:
            snapshot = validate_snapshot(document, version, f"snapshot {version}")
            self._apply(snapshot)
        except REJECTIONS as exc:
            await self._nack(version, digest, str(exc))
            return
        self.version, self.hash = version, digest
        self.applied += 1
        self.first_applied.set()
        if self.cache_file is not None:
            await self._save(version, digest, document)

    async def _nack(self, version: int, digest: str, error: str) -> None:
        self.rejected += 1
        error = error[:MAX_NACK_ERROR]
        if self._on_rejected is not None:
            self._on_rejected(error)
        self.last_nack = {"version": version, "hash": digest, "error": error, "time": time.time()}
        log.error("snapshot rejected, keeping the running one", version=version, error=error)
        await self._send_nack(version, digest, error)

    async def _send_nack(self, version: int, digest: str, error: str) -> None:
        body = NackRequest(version=version, hash=digest, error=error)
        answer = await self._client.post_json(self._paths[2], body.model_dump(mode="json"))
        if not 200 <= answer.status < 300:
            raise _ServerError(f"sending NACK: {answer.error_text()}")

    async def _save(self, version: int, digest: str, document: dict[str, Any]) -> None:
        path = self.cache_file
        assert path is not None
        try:
            await trio.to_thread.run_sync(write_cache, path, version, digest, document)
        except OSError as exc:
            # The cache only helps a later start; serving goes on without it.
            log.warning("cannot write the snapshot cache", path=str(path), error=str(exc))
