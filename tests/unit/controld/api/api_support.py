"""Support of the API tests: the app driven in-process (httpx's ASGI transport under Trio).

The push hub is the real one (pure Trio bookkeeping); the store is an in-memory fake of
``ResourceStore``'s write protocol (apply with ``check``/``dry_run``, delete, history, get).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client import CollectorRegistry, Counter

from controld.api import build_api
from controld.auth import TokenAuth
from controld.discovery import DiscoveryView
from controld.push import PushHub
from controld.sealed import RecordKey
from controld.sidecar_tokens import SidecarTokens
from controld.store import (
    ApplyResult,
    Change,
    ResourceNotFound,
    RevisionRecord,
    StoredResource,
    StoreUnavailable,
)
from meshcore.model.resources import Resource, ResourceSet, resource_key

# The in-memory KV of the CA tests (one definition), importable when only these tests run.
sys.path.insert(0, str(Path(__file__).parent.parent / "ca"))
from ca_support import FakeKV

ADMIN_TOKEN = "admin-token-for-tests-0123456789abcdef"
TIME = "2026-11-22T05:30:40.000Z"


class FakeStore:
    """In-memory stand-in of :class:`controld.store.ResourceStore` (same methods)."""

    def __init__(self) -> None:
        self.current = ResourceSet()
        self.records: list[RevisionRecord] = []
        self.stored: dict[tuple[str, str], StoredResource] = {}
        self.unavailable = False
        #: While set: the set the store's watch follows (lagging ``current``); see ``catch_up``.
        self.frozen: ResourceSet | None = None
        self._caught_up = trio.Event()

    @property
    def followed(self) -> ResourceSet:
        """What ``ResourceStore.current`` would show: the watch's copy."""
        return self.current if self.frozen is None else self.frozen

    def catch_up(self) -> None:
        """The watch sees the latest writes."""
        self.frozen = None
        self._caught_up.set()
        self._caught_up = trio.Event()

    def _up(self) -> None:
        if self.unavailable:
            raise StoreUnavailable("registry unreachable")

    async def apply(
        self,
        resources: Sequence[Resource],
        *,
        author: str,
        dry_run: bool = False,
        check: Callable[[ResourceSet], None] | None = None,
    ) -> ApplyResult:
        self._up()
        changes = []
        for r in resources:
            old = self.current.resources.get(resource_key(r))
            action = "created" if old is None else ("unchanged" if old == r else "updated")
            changes.append(Change(r.kind, r.metadata.name, action))  # type: ignore[arg-type]
        if check is not None:
            check(self.current.with_changes(resources))
        written = [r for r, c in zip(resources, changes, strict=True) if c.action != "unchanged"]
        if dry_run or not written:
            return ApplyResult(self.current.revision, tuple(changes))
        revision = self.current.revision + 1
        self.current = self.current.with_changes(written, (), revision)
        for r in written:
            self.stored[resource_key(r)] = StoredResource(r, revision, author, TIME)
        self.records.append(RevisionRecord(revision, author, TIME, "apply", tuple(changes)))
        return ApplyResult(revision, tuple(changes))

    async def delete(self, kind: str, name: str, *, author: str) -> ApplyResult:
        self._up()
        if (kind, name) not in self.current.resources:
            raise ResourceNotFound(kind, name)
        revision = self.current.revision + 1
        self.current = self.current.with_changes((), ((kind, name),), revision)
        del self.stored[(kind, name)]
        changes = (Change(kind, name, "deleted"),)
        self.records.append(RevisionRecord(revision, author, TIME, "delete", changes))
        return ApplyResult(revision, changes)

    async def history(self, limit: int = 50) -> list[RevisionRecord]:
        self._up()
        return list(reversed(self.records))[:limit]

    async def get(self, kind: str, name: str) -> StoredResource | None:
        self._up()
        return self.stored.get((kind, name))

    async def wait_changed(self, after_revision: int) -> ResourceSet:
        while self.followed.revision <= after_revision:
            await self._caught_up.wait()
        return self.followed


@dataclass
class FakePlane:
    """What the daemon hands ``build_api``: a real hub, the fake store, a fixed view."""

    hub: PushHub
    store: FakeStore
    discovery: DiscoveryView = field(default_factory=DiscoveryView)

    def view(self) -> DiscoveryView:
        return self.discovery

    def resources(self) -> ResourceSet:
        return self.store.followed

    def status(self) -> dict[str, Any]:
        return {
            "registry": {"mode": "embedded"},
            "push": self.hub.status_json(),
            "store": {"revision": self.store.current.revision},
        }


@dataclass
class Api:
    """The app under test, its inputs and an admin client."""

    plane: FakePlane
    auth: TokenAuth
    metrics: CollectorRegistry
    client: httpx.AsyncClient
    app: Any
    ready: list[bool]

    async def sidecar_token(self, service: str, **kwargs: Any) -> str:
        """A new sidecar token of ``service`` (``kwargs``: as :meth:`TokenAuth.mint_sidecar`)."""
        token, _ = await self.auth.mint_sidecar(service, **kwargs)
        return token

    def as_token(self, token: str | None) -> httpx.AsyncClient:
        """Another client on the same app with ``token`` (None: no Authorization header)."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://controld", headers=headers
        )


@asynccontextmanager
async def serving_api() -> AsyncIterator[Api]:
    """A fresh app on a fresh plane, with an admin client."""
    metrics = CollectorRegistry(auto_describe=True)
    Counter("controld_test_events", "a metric to see on /metrics", registry=metrics).inc()
    plane = FakePlane(PushHub(metrics=metrics), FakeStore())
    auth = TokenAuth(ADMIN_TOKEN, SidecarTokens(FakeKV(), "meshd/", RecordKey(b"k" * 32)))
    ready = [True]
    app = build_api(plane, auth=auth, metrics=metrics, is_ready=lambda: ready[0])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://controld",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as client:
        yield Api(plane, auth, metrics, client, app, ready)
