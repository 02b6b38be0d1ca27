"""``ResourceStore``: policy resources in the registry's KV, with a revision per change.

Writes (:meth:`ResourceStore.apply`, :meth:`ResourceStore.delete`) read the counter and the
resources in one recursive list, plan what changes, then

1. check-and-set increment the revision counter (a lost race re-reads and re-plans; bounded),
2. write each changed resource with ``cas`` = the ModifyIndex read (0: must not exist), so a
   concurrent writer of the same resource is detected (:class:`StoreConflict`), and
3. write the history record of the revision last: it is the revision's commit marker.

Every value is sealed with controld's record key (:mod:`controld.store.records`): a value a
registry writer who isn't controld put there is refused when read (logged, counted, skipped).
A missing or refused counter is recovered by the next write, from the newest valid resource
and history record.

The registry may be a real Consul cluster, which has no multi-key atomic write this could rely
on (the embedded registry's ``/v1/txn`` isn't atomic), hence the commit marker: the watch
(:mod:`controld.store.watch`) publishes a new revision once its record exists, so readers never
see half an apply under a revision number they'd consider final.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import structlog
import trio
from prometheus_client import CollectorRegistry

from controld.sealed import RecordKey
from controld.store.errors import StoreConflict, StoreError, StoreUnavailable
from controld.store.invalid import InvalidRecords
from controld.store.metrics import StoreCollector
from controld.store.records import (
    ApplyResult,
    Change,
    InvalidValue,
    KeyLayout,
    RecordCodec,
    RevisionRecord,
    StoredResource,
    rfc3339,
)
from controld.store.state import (
    PlannedWrite,
    StoredState,
    plan_apply,
    plan_delete,
    prospective,
    read_state,
    unique,
)
from controld.store.watch import StoreStatus, StoreWatch
from meshcore.model.resources import Resource, ResourceSet
from meshcore.registry import Backoff, RegistryError, RegistryUnavailable
from meshcore.registry.client import RegistryClient, RegistrySettings

__all__ = ["ResourceStore"]

log = structlog.get_logger("controld.store")

#: Attempts at winning the revision counter before giving up with StoreConflict.
_MAX_ATTEMPTS = 16


@contextmanager
def _registry_errors(what: str) -> Iterator[None]:
    try:
        yield
    except RegistryUnavailable as exc:
        raise StoreUnavailable(f"{what}: {exc}") from exc
    except RegistryError as exc:
        raise StoreError(f"{what}: {exc}") from exc


class ResourceStore:
    """The policy resources of the mesh, kept in the registry KV under ``prefix``.

    Reads and writes work without :meth:`run`; :meth:`run` follows the prefix with blocking
    queries and keeps :attr:`current` (what the compiler uses). Use as a context manager (or
    call :meth:`close`) to close the registry client's connections. ``record_key`` seals
    every value written and checks every value read; :attr:`invalid` logs and counts the
    refused ones (``controld_kv_records_invalid_total`` on ``metrics``).
    """

    def __init__(
        self,
        settings: RegistrySettings,
        prefix: str = "meshd/",
        *,
        record_key: RecordKey,
        metrics: CollectorRegistry | None = None,
        wait_s: float = 60.0,
        backoff: Backoff | None = None,
        commit_wait_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.layout = KeyLayout(prefix)
        self.codec = RecordCodec(self.layout, record_key)
        #: Refused values (shared with other readers of the prefix, e.g. the audit log).
        self.invalid = InvalidRecords()
        self._client = RegistryClient(settings)
        self._clock = clock
        self._watch = StoreWatch(
            self._client,
            self.codec,
            self.invalid,
            wait_s=wait_s,
            backoff=backoff or Backoff(0.5, 30.0),
            commit_wait_s=commit_wait_s,
            clock=clock,
        )
        if metrics is not None:
            metrics.register(StoreCollector(self))
            metrics.register(self.invalid)

    def __enter__(self) -> ResourceStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the registry client (idle connections now, busy ones when their call ends)."""
        self._client.close()

    # -- the followed set --------------------------------------------------------------------

    @property
    def current(self) -> ResourceSet:
        """The set in force: the last one the watch published (empty, revision 0, before the
        first load), also while the registry is unreachable."""
        return self._watch.current

    @property
    def status(self) -> StoreStatus:
        """How current :attr:`current` is (for ``/v1/status``)."""
        return self._watch.status

    @property
    def invalid_values_total(self) -> int:
        """Stored values seen that don't decode (each key and ModifyIndex counted once)."""
        return self.invalid.total

    @property
    def kind_counts(self) -> dict[str, int]:
        """Resources in force per kind."""
        return dict(self._watch.kind_counts)

    async def wait_changed(self, after_revision: int) -> ResourceSet:
        """Return :attr:`current` once its revision is greater than ``after_revision``."""
        return await self._watch.wait_changed(after_revision)

    async def run(
        self, *, task_status: trio.TaskStatus[ResourceStore] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow the store until cancelled.

        Reports started once the first load succeeded, or failed (then :attr:`current` is
        the empty set and :attr:`status` says why): the control plane must come up while the
        registry is still starting. Retries with jittered backoff, keeping the last set.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self._watch.run)
            task_status.started(self)

    # -- reads -------------------------------------------------------------------------------

    async def load(self) -> ResourceSet:
        """Read every resource now (one consistent read; undecodable values are skipped,
        logged and counted). May show an apply that is still being written."""
        state = await self._read()
        return state.resource_set()

    async def get(self, kind: str, name: str) -> StoredResource | None:
        """The stored ``kind/name`` with its revision, author and time; ``None`` if absent
        (or if its value doesn't decode)."""
        with _registry_errors("reading a resource"):
            entry = await self._client.kv_get(self.layout.resource(kind, name))
        if entry is None:
            return None
        try:
            return self.codec.decode_resource(entry.value, (kind, name))
        except InvalidValue as exc:
            self.invalid.note("resource", entry.key, entry.modify_index, str(exc))
            return None

    async def history(self, limit: int = 50) -> list[RevisionRecord]:
        """The newest ``limit`` revision records, newest first (broken records skipped)."""
        with _registry_errors("reading the history"):
            _index, entries = await self._client.kv_list(self.layout.history)
        records: list[RevisionRecord] = []
        for entry in sorted(entries, key=lambda e: e.key, reverse=True):
            if len(records) >= limit:
                break
            try:
                records.append(self.codec.decode_history(entry.key, entry.value))
            except InvalidValue as exc:
                self.invalid.note("history", entry.key, entry.modify_index, str(exc))
        return records

    # -- writes ------------------------------------------------------------------------------

    async def apply(
        self,
        resources: Sequence[Resource],
        *,
        author: str,
        dry_run: bool = False,
        check: Callable[[ResourceSet], None] | None = None,
    ) -> ApplyResult:
        """Store ``resources`` (create or replace by kind/name) as one new revision.

        Unchanged resources aren't rewritten; when nothing changes no revision is made and
        the result carries the current revision and ``unchanged`` entries. ``check`` gets the
        set the apply would produce (from a fresh read) and may raise to refuse it (nothing is
        stored; the exception propagates). ``dry_run`` reports the changes without storing.
        Raises ValueError when a kind/name is given twice, :class:`StoreConflict`,
        :class:`StoreUnavailable` or :class:`StoreError`.
        """
        wanted = unique(resources)
        for _attempt in range(_MAX_ATTEMPTS):
            state = await self._read()
            changes, writes = plan_apply(self.layout, state, wanted)
            if check is not None:
                check(prospective(state, wanted))
            if dry_run or not writes:
                return ApplyResult(state.revision, changes)
            revision = await self._bump(state)
            if revision is not None:
                # Every write made it (a lost one raises StoreConflict).
                await self._commit(revision, writes, author=author, action="apply")
                return ApplyResult(revision, changes)
        raise StoreConflict(f"revision counter kept changing ({_MAX_ATTEMPTS} attempts)")

    async def delete(self, kind: str, name: str, *, author: str) -> ApplyResult:
        """Delete ``kind/name`` as one new revision (:class:`ResourceNotFound` if absent)."""
        for _attempt in range(_MAX_ATTEMPTS):
            state = await self._read()
            write = plan_delete(self.layout, state, kind, name)
            revision = await self._bump(state)
            if revision is not None:
                done = await self._commit(revision, (write,), author=author, action="delete")
                return ApplyResult(revision, done)
        raise StoreConflict(f"revision counter kept changing ({_MAX_ATTEMPTS} attempts)")

    # -- plumbing ----------------------------------------------------------------------------

    async def _read(self) -> StoredState:
        with _registry_errors("reading the store"):
            index, entries = await self._client.kv_list(self.layout.state)
        state = read_state(self.codec, index, entries)
        self._watch.note_bad(state)
        return state

    async def _bump(self, state: StoredState) -> int | None:
        """CAS-increment the counter from what ``state`` read; ``None`` if another writer won.

        A missing or refused counter (a first write, or a value someone else put there) is
        replaced, still by CAS, with one past the newest valid resource or history record.
        """
        base = state.revision
        if not state.counter_ok:
            base = max(base, await self._newest_history())
            if state.revision_cas:
                log.warning(
                    "revision counter refused; recovering it", key=self.layout.revision, base=base
                )
        revision = base + 1
        with _registry_errors("incrementing the revision"):
            won = await self._client.kv_put(
                self.layout.revision, self.codec.encode_counter(revision), cas=state.revision_cas
            )
        return revision if won else None

    async def _newest_history(self) -> int:
        """Revision of the newest valid history record (0: none)."""
        with _registry_errors("reading the history"):
            _index, entries = await self._client.kv_list(self.layout.history)
        for entry in sorted(entries, key=lambda e: e.key, reverse=True):
            try:
                return self.codec.decode_history(entry.key, entry.value).revision
            except InvalidValue as exc:
                self.invalid.note("history", entry.key, entry.modify_index, str(exc))
        return 0

    async def _commit(
        self,
        revision: int,
        writes: Sequence[PlannedWrite],
        *,
        author: str,
        action: Literal["apply", "delete"],
    ) -> tuple[Change, ...]:
        now = rfc3339(self._clock())
        done: list[Change] = []
        try:
            with _registry_errors(f"writing revision {revision}"):
                for write in writes:
                    if write.resource is None:
                        ok = await self._client.kv_delete(write.key, cas=write.cas)
                    else:
                        value = self.codec.encode_resource(
                            write.resource, revision=revision, author=author, time=now
                        )
                        ok = await self._client.kv_put(write.key, value, cas=write.cas)
                    if not ok:
                        c = write.change
                        raise StoreConflict(
                            f"{c.kind}/{c.name} was changed by another writer meanwhile "
                            f"(revision {revision} has only the changes before it); retry"
                        )
                    done.append(write.change)
        except StoreConflict:
            # Still close the revision, so followers needn't wait out the commit timeout.
            await self._record(RevisionRecord(revision, author, now, action, tuple(done)))
            raise
        record = RevisionRecord(revision, author, now, action, tuple(done))
        await self._record(record)
        log.info(
            "store revision",
            revision=revision,
            author=author,
            action=action,
            changes=[f"{c.action} {c.kind}/{c.name}" for c in done],
        )
        return record.changes

    async def _record(self, record: RevisionRecord) -> None:
        with _registry_errors(f"writing the record of revision {record.revision}"):
            await self._client.kv_put(
                self.layout.history_record(record.revision), self.codec.encode_history(record)
            )
