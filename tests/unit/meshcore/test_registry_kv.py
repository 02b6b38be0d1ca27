"""The registry client's KV calls, against an in-process embedded registry (real Consul semantics:
check-and-set, recursive lists, blocking queries), plus the pure entry parsing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from controld.registry import RegistryConfig, RegistryServer
from meshcore.registry import KvEntry, RegistryProtocolError, RegistryUnavailable, parse_kv_entries
from meshcore.registry.client import RegistryClient, RegistrySettings

TIMEOUT = 10.0


@pytest.fixture
async def client(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[RegistryClient]:
    server = RegistryServer(RegistryConfig(data_dir=tmp_path, port=0, node_name="node1"))
    port = await nursery.start(server.run)
    with RegistryClient(RegistrySettings(url=f"http://127.0.0.1:{port}")) as c:
        yield c
    server.shutdown_nowait()


def test_parse_kv_entries() -> None:
    body = [
        {"Key": "a", "Value": b"\x00\xff", "ModifyIndex": 7, "CreateIndex": 5, "Flags": 0},
        {"Key": "b", "Value": None, "ModifyIndex": 8, "CreateIndex": 8},
        {"Key": "c", "Value": "text", "ModifyIndex": 9, "CreateIndex": 9},
    ]
    assert parse_kv_entries(body) == (
        KvEntry("a", b"\x00\xff", 7, 5),
        KvEntry("b", b"", 8, 8),
        KvEntry("c", b"text", 9, 9),
    )
    assert parse_kv_entries(None) == ()
    assert parse_kv_entries(body[0]) == (KvEntry("a", b"\x00\xff", 7, 5),)


@pytest.mark.parametrize(
    "body",
    [[{"Key": "a"}], [{"Key": "a", "Value": 3, "ModifyIndex": 1, "CreateIndex": 1}], ["x"]],
)
def test_malformed_kv_entries(body: object) -> None:
    with pytest.raises(RegistryProtocolError, match="kv: malformed entry"):
        parse_kv_entries(body)


async def test_put_get_roundtrip(client: RegistryClient) -> None:
    assert await client.kv_get("meshd/missing") is None
    assert await client.kv_put("meshd/a", b"\x00binary\xff") is True
    entry = await client.kv_get("meshd/a")
    assert entry is not None
    assert (entry.key, entry.value) == ("meshd/a", b"\x00binary\xff")
    assert entry.create_index == entry.modify_index > 0
    assert await client.kv_put("meshd/a", b"") is True
    again = await client.kv_get("meshd/a")
    assert again is not None
    assert again.value == b""
    assert again.create_index == entry.create_index < again.modify_index


async def test_check_and_set(client: RegistryClient) -> None:
    assert await client.kv_put("k", b"1", cas=0) is True
    assert await client.kv_put("k", b"2", cas=0) is False  # 0: only if absent
    entry = await client.kv_get("k")
    assert entry is not None
    assert await client.kv_put("k", b"2", cas=entry.modify_index + 100) is False
    assert await client.kv_put("k", b"2", cas=entry.modify_index) is True
    assert await client.kv_put("k", b"3", cas=entry.modify_index) is False  # index moved on
    current = await client.kv_get("k")
    assert current is not None
    assert current.value == b"2"
    assert await client.kv_delete("k", cas=entry.modify_index) is False
    assert await client.kv_get("k") is not None
    assert await client.kv_delete("k", cas=current.modify_index) is True
    assert await client.kv_get("k") is None
    assert await client.kv_delete("never-there") is True


async def test_list_is_recursive_and_sorted(client: RegistryClient) -> None:
    index, entries = await client.kv_list("p/")
    assert (index > 0, entries) == (True, [])
    for key in ("p/b/2", "p/a", "p/b/1", "q/x"):
        await client.kv_put(key, key.encode())
    index, entries = await client.kv_list("p/")
    assert [e.key for e in entries] == ["p/a", "p/b/1", "p/b/2"]
    assert [e.value for e in entries] == [b"p/a", b"p/b/1", b"p/b/2"]
    assert index >= max(e.modify_index for e in entries)
    _index, everything = await client.kv_list("")
    assert len(everything) == 4


async def test_blocking_list_wakes_on_change(client: RegistryClient) -> None:
    await client.kv_put("w/a", b"1")
    index, _entries = await client.kv_list("w/")
    result: list[tuple[int, list[KvEntry]]] = []

    async def wait() -> None:
        result.append(await client.kv_list("w/", index=index, wait_s=30))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.sleep(0.1)
            await client.kv_put("elsewhere", b"x")  # outside the prefix
            await client.kv_put("w/b", b"2")
    new_index, entries = result[0]
    assert new_index > index
    assert [e.key for e in entries] == ["w/a", "w/b"]


async def test_blocking_list_times_out_with_the_same_index(client: RegistryClient) -> None:
    await client.kv_put("t/a", b"1")
    index, _entries = await client.kv_list("t/")
    with trio.fail_after(TIMEOUT):
        new_index, entries = await client.kv_list("t/", index=index, wait_s=0.2)
    assert new_index == index
    assert [e.key for e in entries] == ["t/a"]


@pytest.mark.parametrize("key", ["", "/abs"])
async def test_bad_keys_are_refused(client: RegistryClient, key: str) -> None:
    with pytest.raises(ValueError, match="KV key"):
        await client.kv_put(key, b"x")
    with pytest.raises(ValueError, match="KV key"):
        await client.kv_get(key)
    with pytest.raises(ValueError, match="KV key"):
        await client.kv_delete(key)


async def test_kv_on_a_dead_registry_is_unavailable() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with RegistryClient(RegistrySettings(url=f"http://127.0.0.1:{port}")) as c:
        with pytest.raises(RegistryUnavailable):
            await c.kv_list("meshd/")
        with pytest.raises(RegistryUnavailable):
            await c.kv_put("meshd/x", b"1", cas=0)
