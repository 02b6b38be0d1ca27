"""Runs the agent's health checks: HTTP/TCP probes, TTL expiry, alias checks, critical reaping."""

from __future__ import annotations

import logging
import random

import trio

from controld.registry.agent import Agent
from controld.registry.errors import RequestError
from controld.registry.model import CRITICAL, PASSING, CheckSpec
from controld.registry.probes import http_probe, tcp_probe
from controld.registry.state import Txn

__all__ = ["CheckRunner"]

log = logging.getLogger("controld.registry.checks")

_RANK = {"passing": 0, "warning": 1, "critical": 2}


class CheckRunner:
    """Owns one task per interval check plus the TTL, alias and reaper tasks.

    ``deregister_min`` is the floor of ``DeregisterCriticalServiceAfter`` (Consul: one minute)
    and ``reap_interval`` how often critical services are looked at (Consul: 30 s).
    """

    def __init__(
        self, agent: Agent, *, deregister_min: float = 60.0, reap_interval: float = 30.0
    ) -> None:
        self.agent = agent
        self.deregister_min = deregister_min
        self.reap_interval = reap_interval
        self._nursery: trio.Nursery | None = None
        self._running: dict[str, tuple[CheckSpec, trio.CancelScope]] = {}
        self._critical_since: dict[str, float] = {}
        self._alias_wake = trio.Event()
        agent.state.commit_hooks.append(self._on_commit)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every check until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            now = trio.current_time()
            for check in self.agent.local_checks():
                self._sync(check.check_id)
                if check.spec is not None and check.spec.kind == "ttl":
                    self.agent.ttl_timers.set_in(check.check_id, check.spec.ttl)
                if check.status == CRITICAL:
                    self._critical_since[check.check_id] = now
            nursery.start_soon(self.agent.ttl_timers.run, self._ttl_expired)
            nursery.start_soon(self._reaper)
            nursery.start_soon(self._alias_loop)
            task_status.started()
            await trio.sleep_forever()

    def _on_commit(self, txn: Txn) -> None:
        node = self.agent.node
        now = trio.current_time()
        for check_node, check_id in txn.changed_checks:
            if check_node != node:
                continue
            check = self.agent.local_check(check_id)
            if check is not None and check.status == CRITICAL:
                self._critical_since.setdefault(check_id, now)
            else:
                self._critical_since.pop(check_id, None)
            if check is None:
                self.agent.ttl_timers.discard(check_id)
            if self._nursery is not None:
                self._sync(check_id)
        if txn.changed_checks or any(t.startswith("service.") for t in txn.topics):
            self._alias_wake.set()

    def _sync(self, check_id: str) -> None:
        check = self.agent.local_check(check_id)
        spec = check.spec if check is not None else None
        wanted = spec if spec is not None and spec.kind in ("http", "tcp") else None
        current = self._running.get(check_id)
        if current is not None and current[0] == wanted:
            return
        if current is not None:
            current[1].cancel()
            del self._running[check_id]
        if wanted is not None and self._nursery is not None:
            scope = trio.CancelScope()
            self._running[check_id] = (wanted, scope)
            self._nursery.start_soon(self._interval_loop, check_id, wanted, scope)

    async def _interval_loop(self, check_id: str, spec: CheckSpec, scope: trio.CancelScope) -> None:
        with scope:
            # Spread first runs like Consul's random stagger, but report soon after registering.
            await trio.sleep(random.random() * min(spec.interval, 0.5))  # noqa: S311
            while True:
                probe = http_probe if spec.kind == "http" else tcp_probe
                status, output = await probe(spec)
                self._record(check_id, status, output)
                await trio.sleep(spec.interval)

    def _record(self, check_id: str, status: str, output: str) -> None:
        try:
            self.agent.set_status(check_id, status, output)
        except RequestError as exc:
            log.warning("check %s: could not record its result: %s", check_id, exc)

    def _ttl_expired(self, check_id: str) -> None:
        check = self.agent.local_check(check_id)
        if check is None:
            return
        output = "TTL expired"
        if check.output and check.status != CRITICAL:
            output = f"TTL expired (last output before timeout follows): {check.output}"
        elif check.status == CRITICAL and check.output.startswith("TTL expired"):
            output = check.output
        self._record(check_id, CRITICAL, output)

    async def _reaper(self) -> None:
        while True:
            await trio.sleep(self.reap_interval)
            now = trio.current_time()
            for check in self.agent.local_checks():
                spec = check.spec
                if spec is None or spec.deregister_after <= 0 or not check.service_id:
                    continue
                since = self._critical_since.get(check.check_id)
                limit = max(spec.deregister_after, self.deregister_min)
                if since is not None and now - since >= limit:
                    log.info("deregistering %s: critical for %.0fs", check.service_id, now - since)
                    try:
                        self.agent.reap_service(check.service_id)
                    except RequestError as exc:
                        log.warning("could not deregister %s: %s", check.service_id, exc)

    async def _alias_loop(self) -> None:
        while True:
            await self._alias_wake.wait()
            self._alias_wake = trio.Event()
            self._update_aliases()

    def _update_aliases(self) -> None:
        st = self.agent.state
        for check in self.agent.local_checks():
            spec = check.spec
            if spec is None or spec.kind != "alias":
                continue
            node = spec.alias_node or self.agent.node
            if spec.alias_service:
                svc = st.services.get(node, {}).get(spec.alias_service)
                if svc is None:
                    self._record(
                        check.check_id,
                        CRITICAL,
                        f"Service {spec.alias_service} could not be found on node {node}",
                    )
                    continue
                targets = [
                    c
                    for c in st.checks.get(node, {}).values()
                    if (c.service_id == svc.id or not c.service_id) and c.check_id != check.check_id
                ]
            else:
                if node not in st.nodes:
                    self._record(check.check_id, CRITICAL, f"Node {node} could not be found")
                    continue
                targets = [
                    c
                    for c in st.checks.get(node, {}).values()
                    if not c.service_id and c.check_id != check.check_id
                ]
            worst = max((c.status for c in targets), key=lambda s: _RANK.get(s, 2), default=PASSING)
            output = "All checks passing." if worst == PASSING else f"Aliased checks are {worst}."
            self._record(check.check_id, worst, output)
