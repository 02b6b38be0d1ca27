"""Following the store: blocking queries on the counter and the resources, one set in force.

A *session* reads ``<prefix>re`` (the counter and every resource) and parks a blocking query on
it. When the counter shows a revision not yet settled, the watch waits (bounded by
``commit_wait_s``) for that revision's history record, the writer's commit marker, and reads
again, so a published :class:`ResourceSet` never carries half an apply under a final revision.
A writer that died mid-apply leaves no record: after the bound, what is stored is published.

Any registry error ends the session: the last set stays in force, the status says the
registry is unreachable, and a new session starts after a jittered exponential backoff.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from controld.store.invalid import InvalidRecords
from controld.store.records import InvalidValue, RecordCodec
from controld.store.state import StoredState, read_state
from meshcore.model.resources import ResourceSet
from meshcore.registry import Backoff, RegistryError
from meshcore.registry.client import RegistryClient

__all__ = ["StoreStatus", "StoreWatch"]

log = structlog.get_logger("controld.store")

#: Pause after a blocking query that came back without a new index (a timeout, or a spurious
#: wake-up of a misbehaving registry that mustn't make us spin).
_IDLE_PAUSE_S = 0.05
#: Revisions settled in a row before publishing anyway (writers that never pause).
_SETTLE_ROUNDS = 8


@dataclass(frozen=True)
class StoreStatus:
    """How current the followed set is."""

    #: The last exchange with the registry worked and the watch is parked.
    connected: bool
    #: A set has been read from the registry at least once.
    loaded: bool
    revision: int
    resources: int
    last_error: str | None
    #: Wall-clock time (``time.time()``) of the last answer from the registry.
    last_contact: float | None
    #: Sessions that ended in an error.
    errors: int
    #: Stored values that didn't decode (distinct key + ModifyIndex, ever).
    invalid_values: int

    def as_json(self) -> dict[str, object]:
        """The ``store`` section of ``/v1/status``."""
        return {
            "connected": self.connected,
            "loaded": self.loaded,
            "revision": self.revision,
            "resources": self.resources,
            "last_error": self.last_error,
            "last_contact": self.last_contact,
            "errors": self.errors,
            "invalid_values": self.invalid_values,
        }


class StoreWatch:
    """Keeps :attr:`current` in step with the KV (the engine of ``ResourceStore.run``)."""

    def __init__(
        self,
        client: RegistryClient,
        codec: RecordCodec,
        invalid: InvalidRecords,
        *,
        wait_s: float,
        backoff: Backoff,
        commit_wait_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._codec = codec
        self._layout = codec.layout
        self._invalid = invalid
        self.wait_s = wait_s
        self.commit_wait_s = commit_wait_s
        self._backoff = backoff
        self._clock = clock
        self._current = ResourceSet()
        self._changed = trio.Event()
        self._settled = 0
        self._loaded = False
        self._connected = False
        self._last_error: str | None = None
        self._last_contact: float | None = None
        self._errors = 0
        #: Resources in force per kind (for the ``controld_resources`` gauge).
        self.kind_counts: dict[str, int] = {}

    @property
    def current(self) -> ResourceSet:
        """The set in force."""
        return self._current

    @property
    def status(self) -> StoreStatus:
        """Connection state, revision, errors."""
        return StoreStatus(
            connected=self._connected,
            loaded=self._loaded,
            revision=self._current.revision,
            resources=len(self._current.resources),
            last_error=self._last_error,
            last_contact=self._last_contact,
            errors=self._errors,
            invalid_values=self._invalid.total,
        )

    async def wait_changed(self, after_revision: int) -> ResourceSet:
        """Return :attr:`current` once its revision is greater than ``after_revision``."""
        while self._current.revision <= after_revision:
            await self._changed.wait()
        return self._current

    # -- invalid values ------------------------------------------------------------------------

    def note_bad(self, state: StoredState) -> None:
        """Log and count every bad entry of a read (once per key and ModifyIndex)."""
        for bad in state.bad:
            self._invalid.note(bad.kind, bad.key, bad.modify_index, bad.reason)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow until cancelled; started once the first session loaded a set, or failed."""
        first_attempt = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sessions, first_attempt)
            await first_attempt.wait()
            task_status.started()

    async def _sessions(self, first_attempt: trio.Event) -> None:
        while True:
            try:
                await self._session(first_attempt)
            except RegistryError as exc:
                self._failed(exc)
            first_attempt.set()
            await trio.sleep(self._backoff.next_delay())

    async def _session(self, first_attempt: trio.Event) -> None:
        state = await self._list()
        state = await self._settle(state)
        self._publish(state)
        if not self._connected:
            log.info("store connected", registry=self._client.settings.url, revision=state.revision)
        self._connected = True
        self._last_error = None
        self._backoff.reset()
        first_attempt.set()
        index = state.index
        while True:
            new_index, entries = await self._client.kv_list(
                self._layout.state, index=max(1, index), wait_s=self.wait_s
            )
            self._last_contact = self._clock()
            if new_index == index:
                await trio.sleep(_IDLE_PAUSE_S)
                continue
            # An index going backwards (a restored or reset registry) is no problem here: the
            # answer is a complete read either way, and its index is where to block next.
            state = await self._settle(read_state(self._codec, new_index, entries))
            self._publish(state)
            index = state.index

    async def _list(self) -> StoredState:
        index, entries = await self._client.kv_list(self._layout.state)
        self._last_contact = self._clock()
        return read_state(self._codec, index, entries)

    async def _settle(self, state: StoredState) -> StoredState:
        """Wait for the commit of each newer revision ``state`` shows, re-reading after each."""
        for _round in range(_SETTLE_ROUNDS):
            if state.revision == self._settled:
                break
            if state.revision > self._settled and not await self._committed(state.revision):
                log.warning(
                    "revision not committed in time; publishing what is stored",
                    revision=state.revision,
                    waited_s=self.commit_wait_s,
                )
            elif state.revision < self._settled:
                log.warning(
                    "revision counter went backwards", revision=state.revision, was=self._settled
                )
            self._settled = state.revision
            state = await self._list()
        return state

    async def _committed(self, revision: int) -> bool:
        key = self._layout.history_record(revision)
        index = 0
        with trio.move_on_after(self.commit_wait_s):
            while True:
                new_index, entries = await self._client.kv_list(
                    key, index=index or None, wait_s=self.commit_wait_s if index else None
                )
                if any(self._is_record(entry.key, entry.value) for entry in entries):
                    return True
                if new_index == index:
                    await trio.sleep(_IDLE_PAUSE_S)
                index = new_index
        return False

    def _is_record(self, key: str, raw: bytes) -> bool:
        """True if ``raw`` is a valid history record (a forged one commits nothing)."""
        try:
            self._codec.decode_history(key, raw)
        except InvalidValue:
            return False
        return True

    def _publish(self, state: StoredState) -> None:
        self.note_bad(state)
        # Forget invalid values no longer stored, so the memory stays bounded.
        self._invalid.forget(self._layout.state, ((b.key, b.modify_index) for b in state.bad))
        self._loaded = True
        new = state.resource_set()
        if new == self._current:
            return
        old_revision = self._current.revision
        self._current = new
        self.kind_counts = dict(Counter(kind for kind, _name in new.resources))
        self._changed.set()
        self._changed = trio.Event()
        log.info(
            "resources loaded",
            revision=new.revision,
            previous=old_revision,
            resources=len(new.resources),
        )

    def _failed(self, exc: RegistryError) -> None:
        self._errors += 1
        self._last_error = str(exc)
        if self._connected or self._errors == 1:
            log.warning(
                "store unreachable; keeping the last resources",
                registry=self._client.settings.url,
                error=str(exc),
                revision=self._current.revision,
            )
        self._connected = False
