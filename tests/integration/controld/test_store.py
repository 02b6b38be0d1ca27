"""The policy resource store on a real (in-process, embedded) registry.

Two ``ResourceStore`` objects on one registry stand for two controld replicas. The registry is
stopped and started again on the same port and data dir to check the store rides out outages.
Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry

from controld.registry import RegistryConfig, RegistryServer
from controld.sealed import RecordKey
from controld.store import (
    ResourceNotFound,
    ResourceStore,
    StoreConflict,
    StoreUnavailable,
)
from meshcore.model.resources import Resource, ResourceSet, parse_resource
from meshcore.registry import Backoff
from meshcore.registry.client import RegistryClient, RegistrySettings

TIMEOUT = 15.0
#: The record key every "replica" in these tests shares (as replicas of one controld would).
KEY = RecordKey(b"r" * 32)
#: 2023-11-14T22:13:20.500Z
NOW = 1_700_000_000.5


class EmbeddedRegistry:
    """An in-process registry that can be stopped and started again (same port and data)."""

    def __init__(self, nursery: trio.Nursery, data_dir: Path) -> None:
        self._nursery = nursery
        self._data_dir = data_dir
        self.port = 0
        self._server: RegistryServer | None = None

    @property
    def settings(self) -> RegistrySettings:
        return RegistrySettings(url=f"http://127.0.0.1:{self.port}", timeout_s=5.0)

    async def start(self) -> None:
        config = RegistryConfig(
            data_dir=self._data_dir, port=self.port, node_name="node1", graceful_timeout_s=0.2
        )
        self._server = RegistryServer(config)
        self.port = await self._nursery.start(self._server.run)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown_nowait()
        with trio.fail_after(TIMEOUT):
            await self._server.wait_stopped()
        self._server = None


@pytest.fixture
async def registry(nursery: trio.Nursery, tmp_path: Path) -> EmbeddedRegistry:
    reg = EmbeddedRegistry(nursery, tmp_path / "registry")
    await reg.start()
    return reg


@pytest.fixture
def make_store(registry: EmbeddedRegistry) -> Iterator[Callable[..., ResourceStore]]:
    """``make_store(**kwargs)``: a store on ``registry`` (closed at the end), quick to retry."""
    stores: list[ResourceStore] = []

    def make(**kwargs: Any) -> ResourceStore:
        kwargs.setdefault("backoff", Backoff(0.05, 0.2))
        kwargs.setdefault("wait_s", 5.0)
        kwargs.setdefault("record_key", KEY)
        store = ResourceStore(registry.settings, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def kv(registry: EmbeddedRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(registry.settings) as client:
        yield client


def route(name: str, service: str = "api", weight: int = 1) -> Resource:
    return parse_resource(
        {
            "kind": "HTTPRoute",
            "metadata": {"name": name},
            "spec": {"service": service, "rules": [{"backends": [{"weight": weight}]}]},
        }
    )


def defaults(service: str, protocol: str = "http") -> Resource:
    return parse_resource(
        {"kind": "ServiceDefaults", "metadata": {"name": service}, "spec": {"protocol": protocol}}
    )


def actions(result: Any) -> list[tuple[str, str, str]]:
    return [(c.kind, c.name, c.action) for c in result.changes]


async def wait_revision(store: ResourceStore, after: int) -> ResourceSet:
    with trio.fail_after(TIMEOUT):
        return await store.wait_changed(after)


async def eventually(probe: Callable[[], object], what: str) -> None:
    with trio.move_on_after(TIMEOUT):
        while not probe():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------------------------
# Reads and writes
# ----------------------------------------------------------------------------------------------


async def test_apply_get_load_delete_history(
    make_store: Callable[..., ResourceStore], kv: RegistryClient
) -> None:
    store = make_store(clock=lambda: NOW)
    assert (await store.load()) == ResourceSet()
    assert await store.history() == []

    first = await store.apply([route("web-split"), defaults("api")], author="alice")
    assert first.revision == 1
    assert actions(first) == [
        ("HTTPRoute", "web-split", "created"),
        ("ServiceDefaults", "api", "created"),
    ]
    loaded = await store.load()
    assert loaded.revision == 1
    assert loaded.get("HTTPRoute", "web-split") == route("web-split")
    stored = await store.get("HTTPRoute", "web-split")
    assert stored is not None
    assert (stored.revision, stored.author, stored.time) == (1, "alice", "2023-11-14T22:13:20.500Z")
    assert stored.resource == route("web-split")
    assert await store.get("HTTPRoute", "nope") is None

    # One revision per apply, however many resources it touches; unchanged ones not rewritten.
    before = await kv.kv_get("meshd/resources/ServiceDefaults/api")
    second = await store.apply([route("web-split", weight=5), defaults("api")], author="bob")
    assert second.revision == 2
    assert actions(second) == [
        ("HTTPRoute", "web-split", "updated"),
        ("ServiceDefaults", "api", "unchanged"),
    ]
    assert await kv.kv_get("meshd/resources/ServiceDefaults/api") == before

    # Nothing changed: no new revision, the current one reported.
    same = await store.apply([defaults("api"), route("web-split", weight=5)], author="bob")
    assert same.revision == 2
    assert not same.changed
    assert [c.action for c in same.changes] == ["unchanged", "unchanged"]

    third = await store.delete("HTTPRoute", "web-split", author="carol")
    assert (third.revision, actions(third)) == (3, [("HTTPRoute", "web-split", "deleted")])
    with pytest.raises(ResourceNotFound, match="HTTPRoute/web-split not found"):
        await store.delete("HTTPRoute", "web-split", author="carol")
    loaded = await store.load()
    assert (loaded.revision, list(loaded.resources)) == (3, [("ServiceDefaults", "api")])

    history = await store.history()
    assert [(r.revision, r.author, r.action) for r in history] == [
        (3, "carol", "delete"),
        (2, "bob", "apply"),
        (1, "alice", "apply"),
    ]
    assert [c.action for c in history[1].changes] == ["updated"]  # unchanged isn't recorded
    assert history[0].time == "2023-11-14T22:13:20.500Z"
    assert [r.revision for r in await store.history(limit=1)] == [3]

    # The KV layout of the contract.
    counter = await kv.kv_get("meshd/revision")
    assert counter is not None
    assert KEY.open("store.revision", "meshd/revision", counter.value) == {"revision": 3}
    raw = await kv.kv_get("meshd/resources/ServiceDefaults/api")
    assert raw is not None
    value = KEY.open("store.resource", raw.key, raw.value)
    assert (value["revision"], value["author"], value["resource"]["kind"]) == (
        1,
        "alice",
        "ServiceDefaults",
    )
    record = await kv.kv_get("meshd/history/000000000003")
    assert record is not None
    assert KEY.open("store.history", record.key, record.value) == history[0].as_json()


async def test_dry_run_and_check_store_nothing(make_store: Callable[..., ResourceStore]) -> None:
    store = make_store()
    await store.apply([defaults("api")], author="alice")
    dry = await store.apply([defaults("api", "tcp"), route("r")], author="x", dry_run=True)
    assert dry.revision == 1
    assert actions(dry) == [
        ("ServiceDefaults", "api", "updated"),
        ("HTTPRoute", "r", "created"),
    ]
    seen: list[ResourceSet] = []

    def refuse(prospective: ResourceSet) -> None:
        seen.append(prospective)
        raise ValueError("no thanks")

    with pytest.raises(ValueError, match="no thanks"):
        await store.apply([route("r")], author="x", check=refuse)
    assert sorted(seen[0].resources) == [("HTTPRoute", "r"), ("ServiceDefaults", "api")]
    loaded = await store.load()
    assert (loaded.revision, list(loaded.resources)) == (1, [("ServiceDefaults", "api")])
    assert len(await store.history()) == 1


async def test_a_kind_and_name_twice_is_refused(make_store: Callable[..., ResourceStore]) -> None:
    store = make_store()
    with pytest.raises(ValueError, match="HTTPRoute/r given more than once"):
        await store.apply([route("r"), route("r", weight=2)], author="x")


async def test_concurrent_replicas_get_distinct_revisions(
    make_store: Callable[..., ResourceStore],
) -> None:
    one, two = make_store(), make_store()
    results: list[int] = []
    conflicts: list[StoreConflict] = []

    async def writer(store: ResourceStore, tag: str) -> None:
        for i in range(5):
            results.append((await store.apply([route(f"{tag}-{i}")], author=tag)).revision)
            # Both replicas also fight over one shared resource.
            try:
                shared = await store.apply([route("shared", weight=i + 1)], author=tag)
            except StoreConflict as exc:
                conflicts.append(exc)
            else:
                if shared.changed:  # the other replica may have stored the same weight already
                    results.append(shared.revision)

    with trio.fail_after(TIMEOUT * 2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, one, "a")
            nursery.start_soon(writer, two, "b")
    history = await one.history(limit=100)
    # Every revision made is distinct and recorded; conflicts made (at most) empty revisions.
    assert len(set(results)) == len(results)
    assert set(results) <= {r.revision for r in history}
    assert [r.revision for r in history] == list(range(len(history), 0, -1))
    loaded = await one.load()
    assert loaded.revision == len(history)
    assert sum(1 for kind, _ in loaded.resources if kind == "HTTPRoute") == 11


# ----------------------------------------------------------------------------------------------
# The watch
# ----------------------------------------------------------------------------------------------


async def test_watch_follows_another_replica(
    nursery: trio.Nursery, make_store: Callable[..., ResourceStore]
) -> None:
    writer, follower = make_store(), make_store()
    await nursery.start(follower.run)
    assert follower.current == ResourceSet()
    assert follower.status.connected and follower.status.loaded

    await writer.apply([route("r"), defaults("api")], author="alice")
    got = await wait_revision(follower, 0)
    assert got.revision == 1
    assert got.get("HTTPRoute", "r") == route("r")
    assert follower.current is got
    assert follower.kind_counts == {"HTTPRoute": 1, "ServiceDefaults": 1}

    await writer.delete("HTTPRoute", "r", author="bob")
    got = await wait_revision(follower, 1)
    assert (got.revision, list(got.resources)) == (2, [("ServiceDefaults", "api")])


async def test_watch_publishes_a_revision_whose_writer_died(
    nursery: trio.Nursery, make_store: Callable[..., ResourceStore], kv: RegistryClient
) -> None:
    follower = make_store(commit_wait_s=0.3)
    await nursery.start(follower.run)
    # A writer that bumped the counter and wrote one resource, then died: no history record.
    assert await kv.kv_put("meshd/revision", follower.codec.encode_counter(1), cas=0)
    value = follower.codec.encode_resource(route("r"), revision=1, author="x", time="t")
    assert await kv.kv_put("meshd/resources/HTTPRoute/r", value)
    got = await wait_revision(follower, 0)
    assert (got.revision, list(got.resources)) == (1, [("HTTPRoute", "r")])


async def test_garbage_is_skipped_and_counted(
    nursery: trio.Nursery, make_store: Callable[..., ResourceStore], kv: RegistryClient
) -> None:
    metrics = CollectorRegistry()
    writer, follower = make_store(), make_store(metrics=metrics)
    await writer.apply([route("good")], author="alice")
    await nursery.start(follower.run)
    assert follower.current.revision == 1

    assert await kv.kv_put("meshd/resources/HTTPRoute/x", b"{not json")
    assert await kv.kv_put("meshd/resources/HTTPRoute/wrong-name", b'{"resource": {}}')
    await writer.apply([defaults("api")], author="alice")
    got = await wait_revision(follower, 1)
    assert sorted(got.resources) == [("HTTPRoute", "good"), ("ServiceDefaults", "api")]
    assert follower.invalid_values_total == 2  # each bad value counted once, however often read
    assert metrics.get_sample_value("controld_store_invalid_values_total") == 2
    invalid = "controld_kv_records_invalid_total"
    assert metrics.get_sample_value(invalid, {"kind": "resource"}) == 2
    assert metrics.get_sample_value(invalid, {"kind": "revision"}) == 0
    assert metrics.get_sample_value("controld_resources", {"kind": "HTTPRoute"}) == 1
    assert metrics.get_sample_value("controld_resources", {"kind": "Mesh"}) == 0
    assert metrics.get_sample_value("controld_store_revision") == 2
    assert metrics.get_sample_value("controld_store_connected") == 1

    # A fresh replica loads around it too; the garbage can be deleted like any resource.
    fresh = make_store()
    assert sorted((await fresh.load()).resources) == sorted(got.resources)
    assert fresh.invalid_values_total == 2
    result = await writer.delete("HTTPRoute", "x", author="alice")
    assert actions(result) == [("HTTPRoute", "x", "deleted")]
    # Re-applying over a broken value replaces it.
    result = await writer.apply([route("wrong-name")], author="alice")
    assert actions(result) == [("HTTPRoute", "wrong-name", "updated")]
    got = await wait_revision(follower, result.revision - 1)
    assert ("HTTPRoute", "wrong-name") in got.resources


async def test_registry_outage_keeps_the_last_set(
    nursery: trio.Nursery,
    registry: EmbeddedRegistry,
    make_store: Callable[..., ResourceStore],
) -> None:
    writer, follower = make_store(), make_store()
    await writer.apply([route("r")], author="alice")
    await nursery.start(follower.run)
    assert follower.current.revision == 1

    await registry.stop()
    with pytest.raises(StoreUnavailable):
        await writer.apply([route("r2")], author="alice")
    with pytest.raises(StoreUnavailable):
        await writer.load()
    await eventually(lambda: not follower.status.connected, "the watch to notice")
    assert follower.status.last_error
    assert (follower.current.revision, list(follower.current.resources)) == (
        1,
        [("HTTPRoute", "r")],
    )

    await registry.start()
    await eventually(lambda: follower.status.connected, "the watch to reconnect")
    result = await writer.apply([route("r2")], author="alice")
    assert result.revision == 2
    got = await wait_revision(follower, 1)
    assert sorted(got.resources) == [("HTTPRoute", "r"), ("HTTPRoute", "r2")]


async def test_watch_starts_while_the_registry_is_down(
    nursery: trio.Nursery,
    registry: EmbeddedRegistry,
    make_store: Callable[..., ResourceStore],
) -> None:
    writer, follower = make_store(), make_store()
    await writer.apply([route("r")], author="alice")
    await registry.stop()
    with trio.fail_after(TIMEOUT):
        await nursery.start(follower.run)
    assert follower.current == ResourceSet()
    assert not follower.status.loaded and not follower.status.connected
    await registry.start()
    got = await wait_revision(follower, 0)
    assert (got.revision, list(got.resources)) == (1, [("HTTPRoute", "r")])
    assert follower.status.connected


async def test_a_refused_counter_is_recovered_by_the_next_write(
    nursery: trio.Nursery, make_store: Callable[..., ResourceStore], kv: RegistryClient
) -> None:
    writer, follower = make_store(), make_store()
    await writer.apply([route("a")], author="alice")
    await writer.apply([route("b")], author="alice")
    await writer.delete("HTTPRoute", "b", author="alice")
    await nursery.start(follower.run)
    assert follower.current.revision == 3
    # Someone who isn't controld overwrites the counter (unsealed, and far ahead).
    assert await kv.kv_put("meshd/revision", b"999999")
    assert [r.revision for r in await writer.history()] == [3, 2, 1]
    # The next write continues after the newest valid history record, not at 1 or 1000000.
    result = await writer.apply([route("c")], author="alice")
    assert result.revision == 4
    got = await wait_revision(follower, 3)
    assert (got.revision, sorted(got.resources)) == (4, [("HTTPRoute", "a"), ("HTTPRoute", "c")])
    assert follower.invalid.totals["revision"] >= 1


async def test_a_store_with_another_key_refuses_everything(
    make_store: Callable[..., ResourceStore],
) -> None:
    await make_store().apply([route("a")], author="alice")
    stranger = make_store(record_key=RecordKey(b"x" * 32))
    assert (await stranger.load()).resources == {}
    assert await stranger.get("HTTPRoute", "a") is None
    assert await stranger.history() == []
    assert stranger.invalid.totals == {"revision": 1, "resource": 1, "history": 1}
