"""Write transactions on the registry state (see :mod:`controld.registry.state`).

A :class:`Txn` mutates the in-memory maps, records the SQL of each change in its batch and the
index tables (topics) it touched; :meth:`State.write` commits it. Cascades follow Consul's
state store: deleting a node removes its services, checks and sessions; deleting a service
removes its checks; a check turning critical (or going away) invalidates the sessions tied to
it; invalidating a session releases (or deletes) its locks and arms their lock-delay.
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from controld.registry.acl_tables import AclObject, id_of, kind_of
from controld.registry.model import CRITICAL, Check, KVEntry, Node, Service, Session
from controld.registry.persist import Batch

if TYPE_CHECKING:
    from controld.registry.state import State

__all__ = ["Txn"]

_A = TypeVar("_A", bound=AclObject)


class Txn:
    """One write transaction; every mutation goes through these methods."""

    __slots__ = ("batch", "changed_checks", "index", "state", "topics")

    def __init__(self, state: State) -> None:
        self.state = state
        self.index = state.index + 1
        self.batch = Batch()
        self.topics: set[str] = set()
        # (node, check_id) of checks added, changed or removed, for the check runners.
        self.changed_checks: set[tuple[str, str]] = set()

    # -- nodes ---------------------------------------------------------------------------
    def put_node(self, node: Node) -> bool:
        """Insert or update ``node``; False (and nothing written) when it is unchanged."""
        st = self.state
        old = st.nodes.get(node.name)
        if old is not None:
            node = replace(node, create_index=old.create_index, modify_index=old.modify_index)
            if node == old:
                return False
            node = replace(node, modify_index=self.index)
        else:
            node = replace(node, create_index=self.index, modify_index=self.index)
        st.nodes[node.name] = node
        self.batch.put_node(node)
        self.topics.add("nodes")
        self._touch_node_services(node.name)
        return True

    def delete_node(self, name: str) -> bool:
        """Remove a node with its services, checks and sessions."""
        st = self.state
        if name not in st.nodes:
            return False
        for sid in list(st.services.get(name, {})):
            self.delete_service(name, sid)
        for cid in list(st.checks.get(name, {})):
            self.delete_check(name, cid)
        for session in [s for s in st.sessions.values() if s.node == name]:
            self.delete_session(session.id)
        del st.nodes[name]
        st.services.pop(name, None)
        st.checks.pop(name, None)
        self.batch.delete_node(name)
        self.topics.add("nodes")
        return True

    def _touch_node_services(self, node: str) -> None:
        for svc in self.state.services.get(node, {}).values():
            self.topics.add("service." + svc.name)

    # -- services ------------------------------------------------------------------------
    def put_service(self, svc: Service) -> bool:
        """Insert or update a service instance (its node must exist)."""
        st = self.state
        by_id = st.services.setdefault(svc.node, {})
        old = by_id.get(svc.id)
        if old is not None:
            svc = replace(svc, create_index=old.create_index, modify_index=old.modify_index)
            if svc == old:
                return False
            svc = replace(svc, modify_index=self.index)
            if old.name != svc.name:
                self._count_service(old.name, -1)
                self._count_service(svc.name, 1)
        else:
            svc = replace(svc, create_index=self.index, modify_index=self.index)
            self._count_service(svc.name, 1)
        by_id[svc.id] = svc
        self.batch.put_service(svc)
        self.topics.add("services")
        self.topics.add("service." + svc.name)
        return True

    def delete_service(self, node: str, service_id: str) -> bool:
        """Remove a service instance and its checks."""
        st = self.state
        old = st.services.get(node, {}).pop(service_id, None)
        if old is None:
            return False
        for check in [c for c in st.checks.get(node, {}).values() if c.service_id == service_id]:
            self.delete_check(node, check.check_id)
        self._count_service(old.name, -1)
        self.batch.delete_service(node, service_id)
        self.topics.add("services")
        self.topics.add("service." + old.name)
        return True

    def _count_service(self, name: str, delta: int) -> None:
        counts = self.state.service_count
        n = counts.get(name, 0) + delta
        if n > 0:
            counts[name] = n
        else:
            counts.pop(name, None)

    # -- checks --------------------------------------------------------------------------
    def put_check(self, check: Check) -> bool:
        """Insert or update a check; a check turning critical invalidates its sessions."""
        st = self.state
        by_id = st.checks.setdefault(check.node, {})
        old = by_id.get(check.check_id)
        if old is not None:
            check = replace(check, create_index=old.create_index, modify_index=old.modify_index)
            if check == old:
                return False
            check = replace(check, modify_index=self.index)
        else:
            check = replace(check, create_index=self.index, modify_index=self.index)
        by_id[check.check_id] = check
        self.batch.put_check(check)
        self._touch_check(check)
        if old is not None and old.service_id != check.service_id:
            self._touch_check(old)
        if check.status == CRITICAL:
            self._invalidate_sessions_of_check(check)
        return True

    def delete_check(self, node: str, check_id: str) -> bool:
        """Remove a check; sessions depending on it are invalidated."""
        old = self.state.checks.get(node, {}).pop(check_id, None)
        if old is None:
            return False
        self.batch.delete_check(node, check_id)
        self._touch_check(old)
        self._invalidate_sessions_of_check(old)
        return True

    def _touch_check(self, check: Check) -> None:
        self.topics.add("checks")
        self.changed_checks.add((check.node, check.check_id))
        if check.service_id:
            svc = self.state.services.get(check.node, {}).get(check.service_id)
            self.topics.add("service." + (svc.name if svc else check.service_name))
        else:
            self._touch_node_services(check.node)

    def _invalidate_sessions_of_check(self, check: Check) -> None:
        for session in list(self.state.sessions.values()):
            if session.node != check.node:
                continue
            if check.check_id in session.node_checks or check.check_id in session.service_checks:
                self.delete_session(session.id)

    # -- kv ------------------------------------------------------------------------------
    def put_kv(self, entry: KVEntry) -> KVEntry:
        """Write a KV entry (always a change: every KV write moves its ModifyIndex)."""
        st = self.state
        old = st.kv.get(entry.key)
        create = old.create_index if old is not None else self.index
        entry = replace(entry, create_index=create, modify_index=self.index)
        if old is None:
            bisect.insort(st.kv_keys, entry.key)
            st.tombstones.pop(entry.key, None)
        elif old.session and old.session != entry.session:
            st.session_locks.get(old.session, set()).discard(entry.key)
        if entry.session:
            st.session_locks.setdefault(entry.session, set()).add(entry.key)
        st.kv[entry.key] = entry
        self.batch.put_kv(entry)
        self._touch_key(entry.key)
        return entry

    def delete_kv(self, key: str) -> bool:
        """Delete a key, leaving a tombstone so prefix indexes never go backwards."""
        st = self.state
        old = st.kv.pop(key, None)
        if old is None:
            return False
        pos = bisect.bisect_left(st.kv_keys, key)
        del st.kv_keys[pos]
        if old.session:
            st.session_locks.get(old.session, set()).discard(key)
        st.tombstones[key] = self.index
        self.batch.delete_kv(key, self.index)
        self._touch_key(key)
        return True

    def _touch_key(self, key: str) -> None:
        topics = self.topics
        topics.add("kvs")
        topics.add("k:" + key)
        for i in range(len(key) + 1):
            topics.add("p:" + key[:i])

    # -- sessions ------------------------------------------------------------------------
    def put_session(self, session: Session) -> Session:
        """Create or update a session."""
        st = self.state
        old = st.sessions.get(session.id)
        create = old.create_index if old is not None else self.index
        session = replace(session, create_index=create, modify_index=self.index)
        st.sessions[session.id] = session
        self.batch.put_session(session)
        self.topics.add("sessions")
        return session

    def delete_session(self, session_id: str) -> bool:
        """Invalidate a session: release (or delete) its locks, arm their lock-delay."""
        st = self.state
        session = st.sessions.pop(session_id, None)
        if session is None:
            return False
        self.batch.delete_session(session_id)
        self.topics.add("sessions")
        keys = st.session_locks.pop(session_id, set())
        if session.lock_delay > 0:
            until = st.clock() + session.lock_delay
            for key in keys:
                st.lock_delays[key] = until
        for key in sorted(keys):
            entry = st.kv.get(key)
            if entry is None or entry.session != session_id:
                continue
            if session.behavior == "delete":
                self.delete_kv(key)
            else:
                self.put_kv(replace(entry, session=""))
        return True

    # -- ACL objects ---------------------------------------------------------------------
    def put_acl(self, obj: _A) -> _A:
        """Create or replace a token, policy or role (its indexes set here)."""
        kind, object_id = kind_of(obj), id_of(obj)
        old = self.state.acl.get(kind, object_id)
        create = old.create_index if old is not None else self.index
        obj = replace(obj, create_index=create, modify_index=self.index)
        self.state.acl.put(obj)
        self.batch.put_acl(kind, object_id, obj)
        self.topics.add("acl")
        return obj

    def delete_acl(self, kind: str, object_id: str) -> bool:
        """Delete a token, policy or role."""
        if self.state.acl.remove(kind, object_id) is None:
            return False
        self.batch.delete_acl(kind, object_id)
        self.topics.add("acl")
        return True
