"""Expired, unused join tokens are swept from the KV; live ones and strangers stay."""

from __future__ import annotations

import time

from ca_support import FakeKV, records

from controld.ca.jointokens import JoinTokens
from controld.ca.sweeper import JoinTokenSweeper
from meshcore.registry.errors import RegistryUnavailable
from meshcore.registry.model import KvEntry

PREFIX = "meshd/"


async def test_sweep_removes_only_expired_tokens() -> None:
    kv = FakeKV()
    tokens = JoinTokens(records(kv), PREFIX)
    now = time.time()
    await tokens.create("web", "default", 60, now=now - 120)  # expired a minute ago
    live, _ = await tokens.create("api", "default", 600, now=now)
    await kv.kv_put(f"{PREFIX}join-tokens/garbage", b"not json")
    await kv.kv_put(f"{PREFIX}resources/Mesh/default", b"{}")  # not a token: never touched
    assert await tokens.sweep(now=now) == 1
    assert sorted(kv.entries) == [
        f"{PREFIX}join-tokens/{live.split('.')[1]}",
        f"{PREFIX}join-tokens/garbage",
        f"{PREFIX}resources/Mesh/default",
    ]
    assert (await tokens.consume(live, now=now)).service == "api"
    assert await tokens.sweep(now=now + 10_000) == 0


class _DownKV(FakeKV):
    async def kv_list(self, prefix: str) -> tuple[int, list[KvEntry]]:
        raise RegistryUnavailable("registry down")


async def test_sweeper_counts_and_survives_a_registry_outage() -> None:
    kv = FakeKV()
    tokens = JoinTokens(records(kv), PREFIX)
    await tokens.create("web", "default", 1, now=time.time() - 10)
    sweeper = JoinTokenSweeper(tokens)
    assert await sweeper.sweep_once() == 1
    assert sweeper.swept == 1
    down = JoinTokenSweeper(JoinTokens(records(_DownKV()), PREFIX))
    assert await down.sweep_once() == 0
    assert down.last_error is not None
    assert "registry down" in down.last_error
