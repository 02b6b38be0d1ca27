"""Sessions: create, destroy, renew, and TTL invalidation (Consul's 2x TTL grace)."""

from __future__ import annotations

import uuid
from typing import Any

from controld.registry import defs
from controld.registry.durations import format_duration, parse_duration
from controld.registry.errors import BadRequest, NotFound, RequestError
from controld.registry.model import CRITICAL, Session
from controld.registry.state import State
from controld.registry.timers import DeadlineQueue

__all__ = ["Sessions"]

Json = dict[str, Any]

TTL_MIN = 10.0
TTL_MAX = 86400.0
MAX_LOCK_DELAY = 60.0
TTL_MULTIPLIER = 2  # Consul's SessionTTLMultiplier
SERF_CHECK = "serfHealth"


def _lock_delay(body: Json) -> float:
    value = body.get("LockDelay")
    if value is None:
        return 15.0
    if isinstance(value, bool):
        raise BadRequest("Request decode failed: LockDelay: invalid duration")
    if isinstance(value, int | float):
        # Like Consul: small numbers are seconds, larger ones nanoseconds.
        return float(value) if value < 1000 else float(value) / 1e9
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise BadRequest(f"Request decode failed: LockDelay: {exc}") from exc
    raise BadRequest("Request decode failed: LockDelay: invalid duration")


class Sessions:
    """Session operations plus the TTL timers (served by :meth:`run`)."""

    def __init__(self, state: State, default_node: str) -> None:
        self.state = state
        self.default_node = default_node
        self.timers: DeadlineQueue[str] = DeadlineQueue()

    def arm_loaded(self) -> None:
        """Start a full TTL for every session read from disk (Consul resets them on restart)."""
        for session in self.state.sessions.values():
            if session.ttl > 0:
                self.timers.set_in(session.id, session.ttl * TTL_MULTIPLIER)

    async def run(self) -> None:
        """Invalidate sessions whose TTL ran out."""
        await self.timers.run(self._expire)

    def _expire(self, session_id: str) -> None:
        if session_id in self.state.sessions:
            with self.state.write() as txn:
                txn.delete_session(session_id)

    def create(self, body: Json) -> str:
        """PUT /v1/session/create; returns the new session's ID."""
        st = self.state
        node = defs.as_str(body, "Node") or self.default_node
        behavior = defs.as_str(body, "Behavior") or "release"
        if behavior not in ("release", "delete"):
            raise RequestError(f"Invalid Behavior setting '{behavior}'")
        ttl_text = body.get("TTL") or ""
        ttl = 0.0
        if ttl_text:
            ttl = defs.duration_field(body, "TTL")
            if ttl != 0 and not TTL_MIN <= ttl <= TTL_MAX:
                raise RequestError(
                    f"Invalid Session TTL '{format_duration(ttl)}', must be between "
                    f"[{format_duration(TTL_MIN)}={format_duration(TTL_MAX)}]"
                )
        lock_delay = _lock_delay(body)
        if lock_delay > MAX_LOCK_DELAY:
            raise RequestError(f"Lock delay must be less than {format_duration(MAX_LOCK_DELAY)}")
        if "Checks" in body or "NodeChecks" in body:
            node_checks = defs.as_tags(body, "NodeChecks") + defs.as_tags(body, "Checks")
        elif "ServiceChecks" in body:
            node_checks = ()
        else:
            node_checks = (SERF_CHECK,)
        raw_service_checks = body.get("ServiceChecks") or []
        if not isinstance(raw_service_checks, list):
            raise BadRequest("Request decode failed: ServiceChecks must be a list")
        service_checks = tuple(
            str(c.get("ID", "")) if isinstance(c, dict) else str(c) for c in raw_service_checks
        )
        if node not in st.nodes:
            raise RequestError("Missing node registration")
        node_check_map = st.checks.get(node, {})
        for check_id in (*node_checks, *service_checks):
            check = node_check_map.get(check_id)
            if check is None:
                raise RequestError(f"Missing check '{check_id}' registration")
            if check.status == CRITICAL:
                raise RequestError(f"Check '{check_id}' is in {check.status} state")
        session = Session(
            id=str(uuid.uuid4()),
            name=defs.as_str(body, "Name"),
            node=node,
            node_checks=tuple(dict.fromkeys(node_checks)),
            service_checks=service_checks,
            lock_delay=lock_delay,
            behavior=behavior,
            ttl=ttl,
        )
        with st.write() as txn:
            txn.put_session(session)
        if ttl > 0:
            self.timers.set_in(session.id, ttl * TTL_MULTIPLIER)
        return session.id

    def destroy(self, session_id: str) -> None:
        """PUT /v1/session/destroy/:id (unknown IDs are fine, as in Consul)."""
        if session_id in self.state.sessions:
            with self.state.write() as txn:
                txn.delete_session(session_id)
        self.timers.discard(session_id)

    def renew(self, session_id: str) -> Session:
        """PUT /v1/session/renew/:id: restart the TTL."""
        session = self.state.sessions.get(session_id)
        if session is None:
            raise NotFound(f"Session id '{session_id}' not found")
        if session.ttl > 0:
            self.timers.set_in(session_id, session.ttl * TTL_MULTIPLIER)
        return session
