"""KV writes: put (with cas, flags, acquire, release) and delete (recurse, cas)."""

from __future__ import annotations

from dataclasses import replace

from controld.registry.errors import RequestError
from controld.registry.model import KVEntry
from controld.registry.state import State

__all__ = ["kv_delete", "kv_put"]


def kv_put(
    state: State,
    key: str,
    value: bytes | None,
    *,
    flags: int = 0,
    cas: int | None = None,
    acquire: str | None = None,
    release: str | None = None,
) -> bool:
    """PUT /v1/kv/:key; False when the cas, lock or release condition does not hold."""
    existing = state.kv.get(key)
    value = value or None
    if acquire is not None:
        if acquire not in state.sessions:
            raise RequestError(f'invalid session "{acquire}"')
        until = state.lock_delays.get(key)
        if until is not None:
            if until > state.clock():
                return False
            del state.lock_delays[key]
        if existing is None:
            entry = KVEntry(key=key, value=value, flags=flags, session=acquire, lock_index=1)
        elif existing.session == acquire:
            entry = replace(existing, value=value, flags=flags)
        elif existing.session:
            return False
        else:
            entry = replace(
                existing,
                value=value,
                flags=flags,
                session=acquire,
                lock_index=existing.lock_index + 1,
            )
    elif release is not None:
        if existing is None or existing.session != release:
            return False
        entry = replace(existing, value=value, flags=flags, session="")
    else:
        if cas is not None:
            if cas == 0 and existing is not None:
                return False
            if cas != 0 and (existing is None or existing.modify_index != cas):
                return False
        if existing is None:
            entry = KVEntry(key=key, value=value, flags=flags)
        else:
            entry = replace(existing, value=value, flags=flags)
    with state.write() as txn:
        txn.put_kv(entry)
    return True


def kv_delete(state: State, key: str, *, recurse: bool = False, cas: int | None = None) -> bool:
    """DELETE /v1/kv/:key; with ``cas`` only if the ModifyIndex matches (a missing key is ok)."""
    if recurse:
        keys = state.keys_with_prefix(key)
        with state.write() as txn:
            for k in keys:
                txn.delete_kv(k)
        return True
    existing = state.kv.get(key)
    if cas is not None:
        if existing is None:
            return True
        if existing.modify_index != cas:
            return False
    if existing is None:
        return True
    with state.write() as txn:
        txn.delete_kv(key)
    return True
