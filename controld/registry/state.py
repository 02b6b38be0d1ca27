"""The registry state: in memory for reads, written through to SQLite one transaction per write.

Every write runs inside :meth:`State.write`: the :class:`Txn` mutates the in-memory maps,
records the SQL of the change and the index tables it touched; on exit the batch is committed
to SQLite (before any HTTP response is sent), the raft-like global index and the touched index
tables move to the new index, and the blocking queries parked on those tables wake up. A write
that changes nothing (Consul's ``IsSame`` checks) commits nothing and moves no index. If the
commit fails, memory is reloaded from the database, so the two never disagree.

Index tables follow Consul's state store: ``nodes``, ``services``, ``checks``, ``kvs``,
``sessions``, ``service.<name>`` (bumped by any change to an instance of that service or to a
check of a node hosting it) and ``extinction`` (the index at which a service name's last
instance went away), so a query on one service never wakes for an unrelated one.
"""

from __future__ import annotations

import bisect
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from controld.registry.acl_tables import AclTables
from controld.registry.errors import RequestError
from controld.registry.model import Check, KVEntry, Node, Service, Session
from controld.registry.persist import Batch, Loaded, Store
from controld.registry.txn import Txn
from controld.registry.watch import WatchHub

__all__ = ["State", "Txn"]

CommitHook = Callable[["Txn"], None]

TOMBSTONE_MAX = 10_000


class State:
    """All registry data; read directly by the query functions, written through :meth:`write`."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.clock = clock
        self.hub = WatchHub()
        self.commit_hooks: list[CommitHook] = []
        self._reset()
        if store is not None:
            self._load(store.load())

    def _reset(self) -> None:
        self.index = 0
        self.meta: dict[str, str] = {}
        self.tables: dict[str, int] = {}
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, dict[str, Service]] = {}
        self.checks: dict[str, dict[str, Check]] = {}
        self.service_count: dict[str, int] = {}
        self.kv: dict[str, KVEntry] = {}
        self.kv_keys: list[str] = []
        self.tombstones: dict[str, int] = {}
        self.sessions: dict[str, Session] = {}
        self.session_locks: dict[str, set[str]] = {}
        self.lock_delays: dict[str, float] = {}
        self.acl = AclTables()

    def _load(self, data: Loaded) -> None:
        self._reset()
        self.meta = dict(data.meta)
        for node in data.nodes:
            self.nodes[node.name] = node
        for svc in data.services:
            self.services.setdefault(svc.node, {})[svc.id] = svc
            self.service_count[svc.name] = self.service_count.get(svc.name, 0) + 1
        for check in data.checks:
            self.checks.setdefault(check.node, {})[check.check_id] = check
        for entry in data.kv:
            self.kv[entry.key] = entry
            if entry.session:
                self.session_locks.setdefault(entry.session, set()).add(entry.key)
        self.kv_keys = sorted(self.kv)
        self.tombstones = dict(data.tombstones)
        for session in data.sessions:
            self.sessions[session.id] = session
        self.acl.load(data.acl)
        tables = json.loads(data.meta.get("tables", "{}"))
        self.tables = {str(k): int(v) for k, v in tables.items()}
        self.index = max([data.index, *self.tables.values(), *self._entity_indexes()])

    def _entity_indexes(self) -> Iterator[int]:
        yield from (n.modify_index for n in self.nodes.values())
        for by_id in self.services.values():
            yield from (s.modify_index for s in by_id.values())
        for checks in self.checks.values():
            yield from (c.modify_index for c in checks.values())
        yield from (e.modify_index for e in self.kv.values())
        yield from self.tombstones.values()
        yield from (s.modify_index for s in self.sessions.values())
        for table in (self.acl.tokens, self.acl.policies, self.acl.roles):
            yield from (o.modify_index for o in table.values())

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """A write transaction, committed (or rolled back) when the block exits."""
        txn = Txn(self)
        try:
            yield txn
        except BaseException:
            if txn.batch:
                self._reload()
            raise
        if not txn.batch:
            return
        self._commit(txn)

    def _commit(self, txn: Txn) -> None:
        idx = txn.index
        touched = txn.topics
        tables = self.tables
        for topic in touched:
            if not topic.startswith(("k:", "p:")):
                tables[topic] = idx
        for topic in [t for t in touched if t.startswith("service.")]:
            if topic[8:] not in self.service_count:
                # Like Consul: the per-service index goes with the last instance; queries on
                # a missing service report the extinction index, which never goes backwards.
                tables.pop(topic, None)
                tables["extinction"] = idx
        txn.batch.put_meta("tables", json.dumps(tables, separators=(",", ":")))
        if self.store is not None:
            try:
                self.store.commit(txn.batch, idx)
            except sqlite3.Error as exc:
                self._reload()
                raise RequestError(f"failed to persist the write: {exc}") from exc
        self.index = idx
        if len(self.tombstones) > TOMBSTONE_MAX:
            self._compact_tombstones()
        hub_topics = set(touched)
        if touched & {"nodes", "services", "checks"}:
            hub_topics.add("catalog")
        self.hub.fire(hub_topics)
        for hook in self.commit_hooks:
            hook(txn)

    def _compact_tombstones(self) -> None:
        """Forget the older half of the KV tombstones, keeping their highest index as a floor.

        Prefix indexes then never drop below the floor, so they still never go backwards
        (Consul reaps its tombstones after a while for the same reason: bounded memory).
        """
        ordered = sorted(self.tombstones.items(), key=lambda item: item[1])
        dropped = ordered[: len(ordered) // 2]
        floor = max(int(self.meta.get("tombstone_floor", "0")), dropped[-1][1])
        batch = Batch()
        for key, _ in dropped:
            batch.delete_tombstone(key)
        batch.put_meta("tombstone_floor", str(floor))
        if self.store is not None:
            try:
                self.store.commit(batch, self.index)
            except sqlite3.Error:
                return  # kept as they were; tried again after the next write
        for key, _ in dropped:
            del self.tombstones[key]
        self.meta["tombstone_floor"] = str(floor)

    def _reload(self) -> None:
        if self.store is not None:
            self._load(self.store.load())

    # -- index lookups used by queries ---------------------------------------------------
    def table_index(self, *names: str) -> int:
        """The highest index of the named tables (at least 1, as Consul reports)."""
        tables = self.tables
        return max(1, *(tables.get(n, 0) for n in names))

    def service_index(self, name: str, *, checks: bool) -> int:
        """Consul's ``maxIndexForService``: the service's own index, else the extinction one."""
        idx = self.tables.get("service." + name)
        if idx is not None and name in self.service_count:
            return idx
        ext = self.tables.get("extinction")
        if ext is not None:
            return ext
        if checks:
            return self.table_index("nodes", "services", "checks")
        return self.table_index("nodes", "services")

    def kv_prefix_index(self, prefix: str) -> int:
        """Highest ModifyIndex or tombstone under ``prefix``; the whole KV index if none."""
        if not prefix:
            return self.table_index("kvs")
        best = 0
        keys = self.kv_keys
        pos = bisect.bisect_left(keys, prefix)
        kv = self.kv
        while pos < len(keys) and keys[pos].startswith(prefix):
            best = max(best, kv[keys[pos]].modify_index)
            pos += 1
        for key, idx in self.tombstones.items():
            if idx > best and key.startswith(prefix):
                best = idx
        floor = int(self.meta.get("tombstone_floor", "0"))
        best = max(best, floor)
        return best if best else self.table_index("kvs")

    def keys_with_prefix(self, prefix: str) -> list[str]:
        """KV keys under ``prefix``, sorted."""
        keys = self.kv_keys
        lo = bisect.bisect_left(keys, prefix)
        hi = lo
        while hi < len(keys) and keys[hi].startswith(prefix):
            hi += 1
        return keys[lo:hi]

    def service_instances(self, name: str) -> list[Service]:
        """Instances of service ``name``, in Consul's order (node, then service ID)."""
        if name not in self.service_count:
            return []
        out = [s for by_id in self.services.values() for s in by_id.values() if s.name == name]
        out.sort(key=lambda s: (s.node.lower(), s.id.lower()))
        return out

    def connect_instances(self, name: str) -> list[Service]:
        """Connect-capable instances of service ``name``: its proxies and Connect-native ones."""
        out = [
            s
            for by_id in self.services.values()
            for s in by_id.values()
            if (s.kind == "connect-proxy" and (s.proxy or {}).get("DestinationServiceName") == name)
            or (s.name == name and (s.connect or {}).get("Native"))
        ]
        out.sort(key=lambda s: (s.node.lower(), s.id.lower()))
        return out
