"""What the store keeps in the KV, and how it is spelled.

Layout under a prefix (``meshd/`` by default); every value is a record sealed with
controld's record key (:mod:`controld.sealed`), whose body is::

    <prefix>resources/<Kind>/<name>  {"resource": {...}, "revision": R, "author", "time"}
    <prefix>revision                 {"revision": R}, the revision counter
    <prefix>history/<R, 12 digits>   {"revision", "author", "time", "action", "changes": [...]}

A value is read within bounds (size, nesting), its seal checked, then its body validated
against the schema: whatever fails is an :class:`InvalidValue` (skipped, logged and counted by
the caller, never fatal). A value without a seal was written by an earlier controld (or by
someone who isn't controld): it is refused like a forged one; re-applying the resource seals it.

Everything here is pure: values in, values (or :class:`InvalidValue`) out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from controld.sealed import MAX_RECORD_BYTES, InvalidRecord, RecordKey
from meshcore.boundedjson import BoundedJsonError, loads_bounded
from meshcore.model.resources import Resource, parse_resource, resource_key

__all__ = [
    "ApplyResult",
    "Change",
    "ChangeAction",
    "InvalidValue",
    "KeyLayout",
    "RecordCodec",
    "RevisionRecord",
    "StoredResource",
    "rfc3339",
]

#: What an apply or delete did to one resource.
ChangeAction = Literal["created", "updated", "deleted", "unchanged"]
_ACTIONS = ("created", "updated", "deleted", "unchanged")


#: Why an unsealed value is refused, and what the operator can do about it.
UNSEALED_HINT = (
    "unsealed value (written by an earlier controld, or by someone who isn't controld): "
    "refused; re-apply the resource with `meshctl apply` (or delete the key) to replace it"
)


class InvalidValue(ValueError):
    """A stored value that doesn't decode (reported, skipped, counted; never fatal)."""


def rfc3339(unix: float) -> str:
    """``2026-11-22T05:30:40.123Z`` for a ``time.time()`` value."""
    stamp = datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class KeyLayout:
    """The store's keys under ``prefix`` (a trailing ``/`` is added when missing)."""

    def __init__(self, prefix: str = "meshd/") -> None:
        if not prefix or prefix.startswith("/"):
            raise ValueError(f"store prefix must be non-empty and not start with '/': {prefix!r}")
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.resources = self.prefix + "resources/"
        self.revision = self.prefix + "revision"
        self.history = self.prefix + "history/"
        # "resources/..." and "revision" share this prefix and "history/" doesn't: one
        # recursive list reads the counter and every resource consistently, without dragging
        # the ever-growing history along.
        self.state = self.prefix + "re"

    def resource(self, kind: str, name: str) -> str:
        """Key of one resource."""
        return f"{self.resources}{kind}/{name}"

    def parse_resource(self, key: str) -> tuple[str, str] | None:
        """``(kind, name)`` of a resource key; ``None`` if ``key`` isn't one."""
        if not key.startswith(self.resources):
            return None
        kind, sep, name = key[len(self.resources) :].partition("/")
        if not sep or not kind or not name or "/" in name:
            return None
        return kind, name

    def history_record(self, revision: int) -> str:
        """Key of the history record of ``revision`` (zero-padded so keys sort by revision)."""
        return f"{self.history}{revision:012d}"


@dataclass(frozen=True)
class Change:
    """One resource an apply or delete touched (or left alone)."""

    kind: str
    name: str
    action: ChangeAction

    def as_json(self) -> dict[str, str]:
        """``{"kind", "name", "action"}``."""
        return {"kind": self.kind, "name": self.name, "action": self.action}


@dataclass(frozen=True)
class ApplyResult:
    """Outcome of an apply or delete: the revision now in force and what changed.

    When nothing changed, ``revision`` is the current one (no new revision was made) and
    every change is ``unchanged``.
    """

    revision: int
    changes: tuple[Change, ...]

    @property
    def changed(self) -> bool:
        """True if anything was (or, for a dry run, would be) written."""
        return any(c.action != "unchanged" for c in self.changes)

    def as_json(self) -> dict[str, Any]:
        """``{"revision", "changes": [...]}`` (the API's answer)."""
        return {"revision": self.revision, "changes": [c.as_json() for c in self.changes]}


@dataclass(frozen=True)
class StoredResource:
    """A resource as stored, with the revision, author and time of its last change."""

    resource: Resource
    revision: int
    author: str
    time: str

    def meta_json(self) -> dict[str, Any]:
        """``{"revision", "author", "time"}``."""
        return {"revision": self.revision, "author": self.author, "time": self.time}


@dataclass(frozen=True)
class RevisionRecord:
    """The audit record of one revision."""

    revision: int
    author: str
    time: str
    action: Literal["apply", "delete"]
    changes: tuple[Change, ...]

    def as_json(self) -> dict[str, Any]:
        """The record as stored (and as the API returns it)."""
        return {
            "revision": self.revision,
            "author": self.author,
            "time": self.time,
            "action": self.action,
            "changes": [c.as_json() for c in self.changes],
        }


def _field(obj: dict[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    # bool is an int; a revision of true is as broken as one of "1".
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidValue(f"{name!r} must be a {kind.__name__}")
    return value


def _unsealed(raw: bytes) -> bool:
    """True if ``raw`` is readable JSON that isn't a sealed record at all (not a forged seal)."""
    try:
        value = loads_bounded(raw, max_bytes=MAX_RECORD_BYTES)
    except BoundedJsonError:
        return False
    return not (isinstance(value, dict) and "mac" in value)


class RecordCodec:
    """Seals what the store writes and opens what it reads, with one :class:`RecordKey`.

    Record kinds (bound into each seal, so a record can't pass for another kind):
    ``store.resource``, ``store.revision`` and ``store.history``.
    """

    def __init__(self, layout: KeyLayout, key: RecordKey) -> None:
        self.layout = layout
        self._key = key

    def _open(self, kind: str, kv_key: str, raw: bytes) -> dict[str, Any]:
        try:
            return self._key.open(kind, kv_key, raw)
        except InvalidRecord as exc:
            if _unsealed(raw):
                raise InvalidValue(UNSEALED_HINT) from exc
            raise InvalidValue(str(exc)) from exc

    # -- resources -----------------------------------------------------------------------------

    def encode_resource(
        self, resource: Resource, *, revision: int, author: str, time: str
    ) -> bytes:
        """The KV value of a resource (under ``layout.resource(kind, name)``)."""
        kv_key = self.layout.resource(*resource_key(resource))
        body = {
            "resource": resource.to_json(),
            "revision": revision,
            "author": author,
            "time": time,
        }
        return self._key.seal("store.resource", kv_key, body)

    def decode_resource(self, raw: bytes, key: tuple[str, str]) -> StoredResource:
        """The value stored under resource ``key`` -> :class:`StoredResource`
        (:class:`InvalidValue` if unsealed, forged or broken, including a resource whose kind
        and name don't match the key it is stored under)."""
        obj = self._open("store.resource", self.layout.resource(*key), raw)
        body = _field(obj, "resource", dict)
        try:
            resource = parse_resource(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in first["loc"])
            raise InvalidValue(f"resource {path}: {first['msg']}") from exc
        if resource_key(resource) != key:
            got = "/".join(resource_key(resource))
            raise InvalidValue(f"holds {got}, not {'/'.join(key)}")
        revision = _field(obj, "revision", int)
        if revision < 1:
            raise InvalidValue("'revision' must be positive")
        return StoredResource(
            resource=resource,
            revision=revision,
            author=_field(obj, "author", str),
            time=_field(obj, "time", str),
        )

    # -- the revision counter --------------------------------------------------------------------

    def encode_counter(self, revision: int) -> bytes:
        """The KV value of the revision counter."""
        return self._key.seal("store.revision", self.layout.revision, {"revision": revision})

    def decode_counter(self, raw: bytes) -> int:
        """The revision counter's value (:class:`InvalidValue` unless a sealed, non-negative
        integer)."""
        obj = self._open("store.revision", self.layout.revision, raw)
        revision: int = _field(obj, "revision", int)
        if revision < 0:
            raise InvalidValue("revision counter is negative")
        return revision

    # -- history -------------------------------------------------------------------------------

    def encode_history(self, record: RevisionRecord) -> bytes:
        """The KV value of a history record (under ``layout.history_record(revision)``)."""
        kv_key = self.layout.history_record(record.revision)
        return self._key.seal("store.history", kv_key, record.as_json())

    def decode_history(self, kv_key: str, raw: bytes) -> RevisionRecord:
        """The history record stored under ``kv_key`` -> :class:`RevisionRecord`
        (:class:`InvalidValue` if unsealed, forged, broken or filed under another revision)."""
        obj = self._open("store.history", kv_key, raw)
        action = _field(obj, "action", str)
        if action not in ("apply", "delete"):
            raise InvalidValue(f"unknown action {action!r}")
        changes: list[Change] = []
        for item in _field(obj, "changes", list):
            if not isinstance(item, dict):
                raise InvalidValue("changes must be objects")
            change_action = _field(item, "action", str)
            if change_action not in _ACTIONS:
                raise InvalidValue(f"unknown change action {change_action!r}")
            changes.append(
                Change(_field(item, "kind", str), _field(item, "name", str), change_action)
            )
        revision = _field(obj, "revision", int)
        if kv_key != self.layout.history_record(revision):
            raise InvalidValue(f"record of revision {revision} filed under {kv_key}")
        return RevisionRecord(
            revision=revision,
            author=_field(obj, "author", str),
            time=_field(obj, "time", str),
            action=action,
            changes=tuple(changes),
        )
