"""Snapshot hashes: :func:`snapshot_hash`, and a memoizing hasher giving the same result.

The hash is sha256 of the canonical JSON of the snapshot without its version (see
:mod:`meshcore.model.hashing`, shared with meshd). :class:`FragmentHasher` produces the same
bytes without dumping every snapshot whole: with ``sort_keys`` and compact separators, the
JSON of an object is the concatenation of its members' JSON, so the JSON of each model
object (a cluster shared by a thousand snapshots) is rendered once and reused.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel

from meshcore.model.hashing import canonical_json, snapshot_hash
from meshcore.model.snapshot import Snapshot

__all__ = ["FragmentHasher", "snapshot_hash"]


def _same(a: object, b: object) -> bool:
    if a is b:
        return True
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return all(x is y for x, y in zip(a, b, strict=True))
    return False


class FragmentHasher:
    """Hashes snapshots, remembering the JSON of model objects by identity.

    Call :meth:`sweep` after each compilation pass: fragments of objects that pass did not
    use are forgotten (bounding memory to the live objects).
    """

    __slots__ = ("_cache", "_fields", "_heads", "_heads_used", "_used")

    def __init__(self) -> None:
        # id -> (object, JSON); holding the object keeps its id from being reused.
        self._cache: dict[int, tuple[object, str]] = {}
        self._used: dict[int, tuple[object, str]] = {}
        self._fields = tuple(sorted(name for name in Snapshot.model_fields if name != "version"))
        # (first member's value, sha256 state after it), by the identity of that value.
        self._heads: dict[object, tuple[object, Any]] = {}
        self._heads_used: dict[object, tuple[object, Any]] = {}

    def fragment(self, value: Any) -> str:
        """The canonical JSON of ``value`` (a model, a tuple of them, or plain JSON data)."""
        if isinstance(value, BaseModel):
            key = id(value)
            hit = self._used.get(key) or self._cache.get(key)
            if hit is not None and hit[0] is value:
                self._used[key] = hit
                return hit[1]
            text = canonical_json(value.model_dump(mode="json")).decode("ascii")
            self._used[key] = (value, text)
            return text
        if isinstance(value, tuple):
            return "[" + ",".join([self.fragment(v) for v in value]) + "]"
        if value is None:
            return "null"
        return canonical_json(value).decode("ascii")

    def hash(self, snapshot: Snapshot) -> str:
        """Equal to :func:`snapshot_hash` of ``snapshot``."""
        # The first member (clusters, the bulk of the bytes) is usually shared by many
        # snapshots: its hash state is computed once and copied.
        first = self._fields[0]
        head_value = getattr(snapshot, first)
        key = tuple(map(id, head_value)) if isinstance(head_value, tuple) else id(head_value)
        hit = self._heads_used.get(key) or self._heads.get(key)
        if hit is not None and _same(hit[0], head_value):
            state = hit[1]
        else:
            state = hashlib.sha256(f'{{"{first}":{self.fragment(head_value)}'.encode("ascii"))
            hit = (head_value, state)
        self._heads_used[key] = hit
        digest = state.copy()
        rest = "".join(
            [f',"{name}":{self.fragment(getattr(snapshot, name))}' for name in self._fields[1:]]
        )
        digest.update((rest + "}").encode("ascii"))
        return str(digest.hexdigest())

    def sweep(self) -> None:
        """Forget fragments not used since the last sweep."""
        self._cache = self._used
        self._used = {}
        self._heads = self._heads_used
        self._heads_used = {}
