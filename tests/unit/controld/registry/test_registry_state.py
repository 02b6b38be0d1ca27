"""Index semantics of the registry state: per-table indexes, no-op writes, cascades."""

from __future__ import annotations

from pathlib import Path

import pytest

from controld.registry.errors import RequestError
from controld.registry.kv_ops import kv_delete, kv_put
from controld.registry.model import CRITICAL, PASSING, Check, Node, Service, Session
from controld.registry.persist import open_store
from controld.registry.state import State


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _node(state: State, name: str = "n1") -> None:
    with state.write() as txn:
        txn.put_node(Node(name=name, address="10.0.0.1"))


def _service(state: State, name: str, sid: str | None = None, node: str = "n1") -> None:
    with state.write() as txn:
        txn.put_service(Service(node=node, id=sid or name, name=name))


def test_every_write_moves_the_global_index_and_its_tables() -> None:
    state = State()
    _node(state)
    assert state.index == 1
    assert state.tables["nodes"] == 1
    _service(state, "web")
    assert state.index == 2
    assert state.tables["services"] == 2
    assert state.tables["service.web"] == 2
    assert state.tables["nodes"] == 1


def test_an_identical_write_commits_nothing() -> None:
    state = State()
    _node(state)
    _service(state, "web")
    before = (state.index, dict(state.tables))
    _node(state)
    _service(state, "web")
    assert (state.index, state.tables) == before


def test_a_service_index_ignores_other_services() -> None:
    state = State()
    _node(state)
    _service(state, "web")
    web = state.service_index("web", checks=True)
    _service(state, "api")
    assert state.service_index("web", checks=True) == web
    assert state.service_index("api", checks=True) == state.index


def test_node_checks_bump_every_service_of_the_node() -> None:
    state = State()
    _node(state)
    _service(state, "web")
    _service(state, "api")
    with state.write() as txn:
        txn.put_check(Check(node="n1", check_id="disk", name="disk", status=PASSING))
    assert state.service_index("web", checks=True) == state.index
    assert state.service_index("api", checks=True) == state.index


def test_a_vanished_service_reports_the_extinction_index() -> None:
    state = State()
    _node(state)
    _service(state, "web")
    with state.write() as txn:
        txn.delete_service("n1", "web")
    gone = state.index
    assert "service.web" not in state.tables
    _service(state, "api")
    # Never below what a watcher of "web" saw, and stable across unrelated writes.
    assert state.service_index("web", checks=True) == gone


def test_deleting_a_node_removes_its_services_checks_and_sessions() -> None:
    state = State(clock=FakeClock())
    _node(state)
    _service(state, "web")
    with state.write() as txn:
        txn.put_check(Check(node="n1", check_id="c", name="c", service_id="web", status=PASSING))
        txn.put_session(Session(id="s1", node="n1"))
    with state.write() as txn:
        txn.delete_node("n1")
    assert state.nodes == {}
    assert state.services == {}
    assert state.checks == {}
    assert state.sessions == {}
    assert state.service_count == {}


def test_session_invalidation_releases_locks_and_arms_lock_delay() -> None:
    clock = FakeClock()
    state = State(clock=clock)
    _node(state)
    with state.write() as txn:
        txn.put_session(Session(id="s1", node="n1", lock_delay=15.0))
        txn.put_session(Session(id="s2", node="n1", lock_delay=15.0))
    assert kv_put(state, "lock", b"1", acquire="s1")
    assert state.kv["lock"].lock_index == 1
    with state.write() as txn:
        txn.delete_session("s1")
    entry = state.kv["lock"]
    assert entry.session == ""
    assert entry.lock_index == 1
    assert not kv_put(state, "lock", b"2", acquire="s2")  # within the lock-delay
    clock.now += 16
    assert kv_put(state, "lock", b"2", acquire="s2")
    assert state.kv["lock"].lock_index == 2


def test_delete_behavior_removes_held_keys() -> None:
    state = State(clock=FakeClock())
    _node(state)
    with state.write() as txn:
        txn.put_session(Session(id="s1", node="n1", behavior="delete", lock_delay=0))
    assert kv_put(state, "eph", b"x", acquire="s1")
    with state.write() as txn:
        txn.delete_session("s1")
    assert "eph" not in state.kv


def test_a_critical_check_invalidates_its_sessions() -> None:
    state = State(clock=FakeClock())
    _node(state)
    with state.write() as txn:
        txn.put_check(Check(node="n1", check_id="serfHealth", name="s", status=PASSING))
        txn.put_session(Session(id="s1", node="n1", node_checks=("serfHealth",)))
    with state.write() as txn:
        txn.put_check(Check(node="n1", check_id="serfHealth", name="s", status=CRITICAL))
    assert "s1" not in state.sessions


def test_kv_cas_and_flags() -> None:
    state = State()
    assert not kv_put(state, "k", b"v", cas=5)
    assert kv_put(state, "k", b"v", cas=0)
    assert not kv_put(state, "k", b"v", cas=0)
    idx = state.kv["k"].modify_index
    assert not kv_put(state, "k", b"w", cas=idx - 1)
    assert kv_put(state, "k", b"w", cas=idx, flags=42)
    assert state.kv["k"].flags == 42
    assert state.kv["k"].create_index == idx
    assert not kv_delete(state, "k", cas=idx)
    assert kv_delete(state, "k", cas=state.kv["k"].modify_index)
    assert "k" not in state.kv


def test_kv_prefix_index_counts_deletes_and_ignores_other_prefixes() -> None:
    state = State()
    kv_put(state, "a/1", b"1")
    kv_put(state, "b/1", b"1")
    a_index = state.kv_prefix_index("a/")
    kv_put(state, "b/2", b"2")
    assert state.kv_prefix_index("a/") == a_index
    kv_delete(state, "a/1")
    assert state.kv_prefix_index("a/") == state.index
    assert state.keys_with_prefix("a/") == []


def test_the_state_survives_a_reload(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    state = State(store)
    _node(state)
    _service(state, "web")
    kv_put(state, "k", b"\x00\xff")
    kv_delete(state, "k")
    kv_put(state, "k2", b"v", flags=7)
    index, tables = state.index, dict(state.tables)
    store.close()
    store = open_store(tmp_path)
    try:
        again = State(store)
        assert again.index == index
        assert again.tables == tables
        assert again.services["n1"]["web"] == state.services["n1"]["web"]
        assert again.kv["k2"].value == b"v"
        assert again.kv["k2"].flags == 7
        assert again.tombstones == {"k": tables["kvs"] - 1}
    finally:
        store.close()


def test_a_failed_commit_leaves_memory_as_the_database(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        state = State(store)
        _node(state)
        before = dict(state.nodes)
        # Break the write: a statement that SQLite rejects inside the transaction.

        def broken_write() -> None:
            with state.write() as txn:
                txn.put_node(Node(name="n2", address="x"))
                txn.batch.ops.append(("INSERT INTO nope VALUES (1)", ()))

        with pytest.raises(RequestError, match="persist"):
            broken_write()
        assert state.nodes == before
        assert state.index == 1
    finally:
        store.close()


def test_tombstones_are_compacted_without_moving_indexes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("controld.registry.state.TOMBSTONE_MAX", 10)
    store = open_store(tmp_path)
    try:
        state = State(store)
        for i in range(12):
            kv_put(state, f"p/{i:02d}", b"x")
            kv_delete(state, f"p/{i:02d}")
        assert len(state.tombstones) <= 10
        floor = int(state.meta["tombstone_floor"])
        assert floor > 0
        assert state.kv_prefix_index("p/") == state.index
        assert state.kv_prefix_index("p/0") >= floor
    finally:
        store.close()
    store = open_store(tmp_path)
    try:
        again = State(store)
        assert again.meta["tombstone_floor"] == str(floor)
        assert again.tombstones == state.tombstones
    finally:
        store.close()
