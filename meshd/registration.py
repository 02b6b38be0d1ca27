"""Self-registration: the sidecar puts its app and itself into the service registry.

On start the primary process registers, through the Consul agent API (what exactly:
:mod:`meshcore.registry.sidecar`):

* the local service ``<service>`` at the app's port, with a TTL check ``service:<id>`` whose
  status comes from the sidecar's own probe of the app (TCP connect or HTTP GET, every
  ``check.interval_s``; the probe's result is the check's output);
* the sidecar as ``<service>-sidecar-proxy`` (``Kind: connect-proxy``) at the inbound
  listener's bound port, with a TTL check that stays passing while the sidecar runs.

TTL checks are renewed every third of their TTL. When the registry is unreachable the sidecar
keeps serving, retries with jittered backoff, and registers again once it answers (it may have
lost its state: a TTL update for an unknown check means exactly that). On drain both instances
are deregistered first, within :data:`STOP_BUDGET_S`, so the drain is never held up by a slow
registry. On a restart (:meth:`Registration.hand_over`) they stay: the checks are renewed one
last time and the next process registers the same IDs again.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog
import trio
from pydantic import SecretStr

from meshcore.model import SocketAddr
from meshcore.model.bootstrap import RegistryConfig
from meshcore.registry import (
    Backoff,
    CheckStatus,
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailable,
)
from meshcore.registry.sidecar import PlanInputs, RegistrationPlan, plan_registrations
from meshd.appprobe import ProbeResult, probe_app
from meshd.config import RuntimeConfig
from meshd.control.settings import resolve_token
from meshd.listeners import ListenerManager
from meshd.stats import Stats

if TYPE_CHECKING:
    # py-consul and requests load only when a registry is configured (start-up time).
    from meshcore.registry.client import RegistryClient, RegistrySettings

__all__ = [
    "STOP_BUDGET_S",
    "PlanInputs",
    "ProbeResult",
    "Registration",
    "RegistrationPlan",
    "plan_registrations",
    "probe_app",
]

log = structlog.get_logger("meshd.registration")

#: Longest a stop (deregistration included) may hold up the drain.
STOP_BUDGET_S = 2.0


class SidecarView(Protocol):
    """The parts of a :class:`meshd.sidecar.Sidecar` the registration reads."""

    runtime: RuntimeConfig | None
    listeners: ListenerManager


def sidecar_inputs(sidecar: SidecarView, listener: str | None = None) -> PlanInputs | None:
    """Current plan inputs of a running sidecar (``None`` before its first configuration)."""
    runtime = sidecar.runtime
    if runtime is None:
        return None
    inbound = None
    for name, slot in sidecar.listeners.slots.items():
        if slot.model.direction != "inbound" or (listener is not None and name != listener):
            continue
        try:
            inbound = SocketAddr(host=slot.model.address.host, port=slot.port)
        except OSError:  # closed while draining
            inbound = None
        break
    return PlanInputs(bootstrap=runtime.bootstrap, inbound=inbound)


# ----------------------------------------------------------------------------------------------
# Probing the app
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# The service object
# ----------------------------------------------------------------------------------------------


class Registration:
    """Keeps a sidecar's registrations and checks in the registry while it runs."""

    def __init__(
        self,
        config: RegistryConfig,
        inputs: Callable[[], PlanInputs | None],
        *,
        stats: Stats | None = None,
        hostname: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self._inputs = inputs
        self._stats = stats
        self._hostname = hostname or socket.gethostname()
        self._backoff = backoff or Backoff(0.5, 30.0)
        #: What the registry holds as far as we know (``None``: register at the next tick).
        self.registered: RegistrationPlan | None = None
        #: Result of the last probe of the app.
        self.last_probe: ProbeResult | None = None
        #: ``None`` until the first attempt; then whether the last one worked (registrations
        #: in place, TTL updates accepted).
        self.in_sync: bool | None = None
        self.last_error: str | None = None
        self._ids: frozenset[str] = frozenset()  # instances we may have put into the registry
        self._stopping = False
        self._abandon = False
        self._handing_over = False
        self._wake = trio.Event()
        self._done = trio.Event()
        self._scope = trio.CancelScope()
        self._probing: trio.CancelScope | None = None

    @classmethod
    def for_sidecar(
        cls,
        sidecar: SidecarView,
        config: RegistryConfig,
        stats: Stats | None = None,
        *,
        bootstrap_path: Path | None = None,
    ) -> Registration:
        """A registration that follows ``sidecar``'s configuration and inbound listener.

        ``registry.token_file`` is read here (relative to ``bootstrap_path``), raising
        :class:`~meshcore.errors.ConfigError` when it can't be.
        """
        if config.token_file is not None:
            where = f"{bootstrap_path or 'bootstrap'}: registry"
            token = resolve_token(
                None, config.token_file, bootstrap_path=bootstrap_path or Path("."), where=where
            )
            config = config.model_copy(update={"token": SecretStr(token or ""), "token_file": None})
        return cls(config, lambda: sidecar_inputs(sidecar, config.inbound_listener), stats=stats)

    def settings(self) -> RegistrySettings:
        """Client settings from the ``registry`` section."""
        from meshcore.registry.client import RegistrySettings

        token = self.config.token.get_secret_value() if self.config.token is not None else None
        return RegistrySettings(
            url=self.config.address,
            token=token,
            datacenter=self.config.datacenter,
            timeout_s=self.config.timeout_s,
            max_concurrency=4,
        )

    async def run(
        self, *, task_status: trio.TaskStatus[Registration] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Register, keep the checks alive, deregister when stopped (or cancelled)."""
        from meshcore.registry.client import RegistryClient

        with RegistryClient(self.settings()) as client:
            try:
                with self._scope:
                    # Serving never waits for the registry: ready at once, register in the back.
                    task_status.started(self)
                    await self._loop(client)
            finally:
                if self._handing_over:
                    # A restart: the registrations stay for the next process; renewing the
                    # checks now gives it a whole TTL to register again.
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + STOP_BUDGET_S
                        await self._renew_last(client)
                # Stopped, or cancelled from outside: leave the registry clean, briefly.
                elif self._ids and not self._abandon:
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + STOP_BUDGET_S
                        await self._deregister(client)
                self._done.set()

    async def stop(self) -> None:
        """Deregister and stop; returns within :data:`STOP_BUDGET_S` whatever the registry does."""
        self._stopping = True
        self._wake.set()
        if self._probing is not None:
            self._probing.cancel()  # a slow app must not eat the deregistration's budget
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + STOP_BUDGET_S
            await self._done.wait()
        if not self._done.is_set():
            log.warning("registry: deregistration did not finish in time, giving up")
            self._abandon = True
            self._scope.cancel()

    async def hand_over(self) -> None:
        """Stop without deregistering (a restart); returns within :data:`STOP_BUDGET_S`."""
        self._handing_over = True
        await self.stop()

    async def _renew_last(self, client: RegistryClient) -> None:
        plan, probe = self.registered, self.last_probe
        if plan is None or probe is None:
            return
        try:
            await self._report(client, plan, probe)
        except RegistryError as exc:
            log.warning("registry: last renewal before the restart failed", error=str(exc))
            return
        log.info("restart: registrations kept", service_ids=sorted(plan.service_ids))

    def describe(self) -> dict[str, object]:
        """JSON-able state, for logs and tests."""
        plan = self.registered
        return {
            "registered": plan is not None,
            "service_ids": sorted(plan.service_ids) if plan is not None else [],
            "in_sync": self.in_sync,
            "last_error": self.last_error,
            "app_status": self.last_probe.status if self.last_probe else None,
        }

    # -- the loop ------------------------------------------------------------------------------

    async def _loop(self, client: RegistryClient) -> None:
        while not self._stopping:
            delay = self._tick_s()
            try:
                await self._tick(client)
            except RegistryError as exc:
                delay = self._failed(exc)
            else:
                if self.in_sync is False:
                    log.info("registry in sync again", registry=self.config.address)
                self.in_sync = True
                self._backoff.reset()
            with trio.move_on_after(delay):
                await self._wake.wait()

    def _tick_s(self) -> float:
        check = self.config.check
        return min(check.interval_s, check.ttl / 3)

    def _plan(self) -> RegistrationPlan | None:
        inputs = self._inputs()
        if inputs is None:
            return None
        return plan_registrations(inputs, self.config, hostname=self._hostname)

    async def _tick(self, client: RegistryClient) -> None:
        plan = self._plan()
        if plan is None:
            return
        with trio.CancelScope() as self._probing:
            probe = await probe_app(plan.check, plan.app)
        self._probing = None
        if self._stopping:  # stop() cut the probe short: deregistration comes next
            return
        if self.last_probe is None or probe.status != self.last_probe.status:
            level = log.info if probe.status == "passing" else log.warning
            level("app health changed", status=probe.status, output=probe.output)
        self.last_probe = probe
        for _attempt in range(2):
            if plan != self.registered:
                await self._register(client, plan, probe.status)
            if await self._report(client, plan, probe):
                return
            # The registry forgot our checks (restarted without its data, or dropped us).
            log.warning("registry lost the registration, registering again")
            self._event("lost")
            self.registered = None
        raise RegistryProtocolError("the registry does not keep the checks just registered")

    async def _register(
        self, client: RegistryClient, plan: RegistrationPlan, app_status: CheckStatus
    ) -> None:
        for stale in sorted(self._ids - plan.service_ids):
            await client.deregister_service(stale)
        self._ids |= plan.service_ids
        # Checks start as the probe just found them: no critical blip on a re-registration.
        await client.register_service(plan.service.with_check_status(app_status))
        if plan.proxy is not None:
            await client.register_service(plan.proxy.with_check_status("passing"))
        self._ids = plan.service_ids
        self.registered = plan
        self._event("registered")
        log.info(
            "registered",
            registry=self.config.address,
            service_ids=sorted(plan.service_ids),
            address=plan.service.address or None,
            port=plan.service.port,
            proxy_port=plan.proxy.port if plan.proxy is not None else None,
        )

    async def _report(
        self, client: RegistryClient, plan: RegistrationPlan, probe: ProbeResult
    ) -> bool:
        known = await client.update_ttl(plan.service.checks[0].check_id, probe.status, probe.output)
        if plan.proxy is not None:
            alive = await client.update_ttl(
                plan.proxy.checks[0].check_id, "passing", "meshd sidecar serving"
            )
            known = known and alive
        self._event("ttl_updates")
        return known

    def _failed(self, exc: RegistryError) -> float:
        self._event("errors")
        self.registered = None  # it may have lost our state: register again once it answers
        self.last_error = str(exc)
        delay = self._backoff.next_delay()
        if self.in_sync is not False:
            what = (
                "registry unreachable, serving on and retrying"
                if isinstance(exc, RegistryUnavailable)
                else "registry refused the registration, serving on and retrying"
            )
            log.warning(
                what, registry=self.config.address, error=str(exc), retry_in_s=round(delay, 2)
            )
        else:
            log.debug("registry still failing", error=str(exc), retry_in_s=round(delay, 2))
        self.in_sync = False
        return delay

    async def _deregister(self, client: RegistryClient) -> None:
        # Proxy first: nothing should pick the sidecar while its service is already gone.
        ids = sorted(self._ids, key=lambda i: (not i.endswith("-sidecar-proxy"), i))
        for service_id in ids:
            try:
                await client.deregister_service(service_id)
            except RegistryError as exc:
                log.warning("deregistration failed", service_id=service_id, error=str(exc))
                return
        if ids:
            self._event("deregistered")
            log.info("deregistered", service_ids=ids)
        self._ids = frozenset()
        self.registered = None

    def _event(self, name: str) -> None:
        if self._stats is not None:
            self._stats.registry_event(name)
