"""One consistent read of the store (counter + resources) and the writes an apply plans on it.

Pure: :func:`read_state` turns the entries of one recursive list into a :class:`StoredState`,
:func:`plan_apply` / :func:`plan_delete` compare it with what a caller wants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

from controld.store.errors import ResourceNotFound
from controld.store.records import (
    Change,
    InvalidValue,
    KeyLayout,
    RecordCodec,
    StoredResource,
)
from meshcore.model.resources import Resource, ResourceSet, resource_key
from meshcore.registry import KvEntry

__all__ = [
    "BadEntry",
    "PlannedWrite",
    "StoredState",
    "plan_apply",
    "plan_delete",
    "prospective",
    "read_state",
    "unique",
]


@dataclass(frozen=True)
class BadEntry:
    """A stored value that doesn't decode: skipped, logged and counted."""

    key: str
    modify_index: int
    reason: str
    #: Record kind (``resource`` or ``revision``), the label of the invalid-records counter.
    kind: str = "resource"


@dataclass(frozen=True)
class PlannedWrite:
    """One KV write of an apply or delete; ``cas`` is the ModifyIndex read (0: must not exist)."""

    change: Change
    key: str
    cas: int
    resource: Resource | None = None


@dataclass(frozen=True)
class StoredState:
    """Counter and resources as one recursive list returned them."""

    index: int
    #: The counter's value; when the counter is missing or refused, the newest revision of
    #: a valid resource (a lower bound, so the followed revision doesn't fall to 0).
    revision: int
    #: ModifyIndex of the counter key; 0 when it doesn't exist yet (no revision made).
    revision_cas: int
    #: Every resource key that holds something, also values that don't decode.
    entries: Mapping[tuple[str, str], KvEntry]
    stored: Mapping[tuple[str, str], StoredResource]
    bad: tuple[BadEntry, ...] = ()
    #: The counter exists and opened (else a write recovers it, see ``ResourceStore``).
    counter_ok: bool = True

    def resource_set(self) -> ResourceSet:
        """The decodable resources as a :class:`ResourceSet` at :attr:`revision`."""
        return self._resource_set

    @cached_property
    def _resource_set(self) -> ResourceSet:
        resources = {key: s.resource for key, s in sorted(self.stored.items())}
        return ResourceSet(revision=self.revision, resources=resources)


def read_state(codec: RecordCodec, index: int, entries: Sequence[KvEntry]) -> StoredState:
    """Entries of a recursive list of ``codec.layout.state`` -> :class:`StoredState`."""
    layout = codec.layout
    revision: int | None = None
    revision_cas = 0
    raw: dict[tuple[str, str], KvEntry] = {}
    stored: dict[tuple[str, str], StoredResource] = {}
    bad: list[BadEntry] = []
    for entry in entries:
        if entry.key == layout.revision:
            revision_cas = entry.modify_index
            try:
                revision = codec.decode_counter(entry.value)
            except InvalidValue as exc:
                bad.append(BadEntry(entry.key, entry.modify_index, str(exc), "revision"))
            continue
        key = layout.parse_resource(entry.key)
        if key is None:
            if entry.key.startswith(layout.resources):
                bad.append(BadEntry(entry.key, entry.modify_index, "not <Kind>/<name>"))
            continue  # a neighbour of "resources/" and "revision"; not ours
        raw[key] = entry
        try:
            stored[key] = codec.decode_resource(entry.value, key)
        except InvalidValue as exc:
            bad.append(BadEntry(entry.key, entry.modify_index, str(exc)))
    counter_ok = revision is not None
    if revision is None:
        revision = max((s.revision for s in stored.values()), default=0)
    return StoredState(
        index=index,
        revision=revision,
        revision_cas=revision_cas,
        entries=MappingProxyType(raw),
        stored=MappingProxyType(stored),
        bad=tuple(bad),
        counter_ok=counter_ok,
    )


def unique(resources: Sequence[Resource]) -> dict[tuple[str, str], Resource]:
    """``{(kind, name): resource}`` in input order; ValueError on a repeated kind/name."""
    out: dict[tuple[str, str], Resource] = {}
    for resource in resources:
        key = resource_key(resource)
        if key in out:
            raise ValueError(f"{key[0]}/{key[1]} given more than once")
        out[key] = resource
    return out


def plan_apply(
    layout: KeyLayout, state: StoredState, wanted: Mapping[tuple[str, str], Resource]
) -> tuple[tuple[Change, ...], tuple[PlannedWrite, ...]]:
    """Changes (input order, ``unchanged`` included) and the writes they need."""
    changes: list[Change] = []
    writes: list[PlannedWrite] = []
    for key, resource in wanted.items():
        kind, name = key
        old = state.stored.get(key)
        if old is not None and old.resource.to_json() == resource.to_json():
            changes.append(Change(kind, name, "unchanged"))
            continue
        entry = state.entries.get(key)
        # A value that doesn't decode is replaced ("updated"), still guarded by its index.
        change = Change(kind, name, "created" if entry is None else "updated")
        changes.append(change)
        cas = entry.modify_index if entry is not None else 0
        writes.append(PlannedWrite(change, layout.resource(kind, name), cas, resource))
    return tuple(changes), tuple(writes)


def plan_delete(layout: KeyLayout, state: StoredState, kind: str, name: str) -> PlannedWrite:
    """The write deleting ``kind/name`` (:class:`ResourceNotFound` if nothing is stored)."""
    entry = state.entries.get((kind, name))
    if entry is None:
        raise ResourceNotFound(kind, name)
    key = layout.resource(kind, name)
    return PlannedWrite(Change(kind, name, "deleted"), key, entry.modify_index)


def prospective(state: StoredState, wanted: Mapping[tuple[str, str], Resource]) -> ResourceSet:
    """The set an apply of ``wanted`` would produce (revision: the next one)."""
    resources = {key: s.resource for key, s in state.stored.items()}
    resources.update(wanted)
    return ResourceSet(revision=state.revision + 1, resources=dict(sorted(resources.items())))
