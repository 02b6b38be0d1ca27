"""The event journal's core with values: numbering, paging, bounds, resets; and its waiting."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from controld.discovery import DiscoveryView, ServiceEndpoint
from controld.events import EndpointWatch, EventJournal, EventRing, record_changes
from controld.events.endpoints import endpoint_events
from controld.events.ring import MAX_DETAIL, rfc3339_ms
from controld.store import Change

pytestmark = pytest.mark.timeout(30)

T0 = 1767225600.0  # 2026-01-01T00:00:00Z


def ring_of(n: int, capacity: int = 10) -> EventRing:
    ring = EventRing(capacity)
    for i in range(n):
        ring.append(T0 + i, "sidecar.registered", f"p{i + 1}", "web")
    return ring


def test_events_are_numbered_from_one_with_rfc3339_times() -> None:
    ring = EventRing(4)
    assert ring.last_seq == 0
    ring.append(T0 + 0.25, "snapshot.nacked", "web-1", "bad route", "error")
    [event] = ring.after(0, 10).events
    assert (event.seq, event.time, event.kind, event.subject) == (
        1,
        "2026-01-01T00:00:00.250Z",
        "snapshot.nacked",
        "web-1",
    )
    assert (event.detail, event.severity) == ("bad route", "error")
    assert ring.last_seq == 1
    assert rfc3339_ms(T0) == "2026-01-01T00:00:00.000Z"
    assert rfc3339_ms(T0 + 59.9996) == "2026-01-01T00:00:59.999Z"


def test_after_pages_forward_oldest_first() -> None:
    ring = ring_of(5)
    page = ring.after(0, 2)
    assert [e.seq for e in page.events] == [1, 2]
    assert (page.next, page.missed, page.reset) == (2, 0, False)
    page = ring.after(page.next, 10)
    assert [e.seq for e in page.events] == [3, 4, 5]
    assert page.next == 5
    page = ring.after(5, 10)
    assert (page.events, page.next, page.missed) == ((), 5, 0)


def test_full_ring_drops_the_oldest_and_counts_what_a_reader_missed() -> None:
    ring = ring_of(7, capacity=4)  # holds 4..7
    assert len(ring) == 4
    page = ring.after(1, 10)
    assert [e.seq for e in page.events] == [4, 5, 6, 7]
    assert (page.next, page.missed) == (7, 2)  # 2 and 3 are gone
    assert ring.after(3, 10).missed == 0
    assert ring.after(0, 1).next == 4


def test_after_beyond_the_newest_is_a_reset() -> None:
    ring = ring_of(3)
    page = ring.after(40, 10)  # a reader from before a restart
    assert page.reset
    assert [e.seq for e in page.events] == [1, 2, 3]
    empty = EventRing(3).after(5, 10)
    assert (empty.reset, empty.events, empty.next) == (True, (), 0)


def test_long_details_are_cut() -> None:
    ring = EventRing(1)
    ring.append(T0, "snapshot.nacked", "p", "x" * 5000, "error")
    [event] = ring.after(0, 1).events
    assert len(event.detail) == MAX_DETAIL
    assert event.detail.endswith("…")


def test_resource_changes_become_events_with_their_author() -> None:
    ring = EventRing(10)

    class Sink:
        def record(self, kind: str, subject: str, detail: str = "", severity: str = "info") -> None:
            ring.append(T0, kind, subject, detail)

    changes = [
        Change("HTTPRoute", "api", "created"),
        Change("RateLimit", "api-limit", "unchanged"),
        Change("AccessPolicy", "old", "deleted"),
    ]
    record_changes(Sink(), changes, "admin")
    got = [(e.kind, e.subject, e.detail) for e in ring.after(0, 10).events]
    assert got == [
        ("resource.created", "HTTPRoute/api", "by admin"),
        ("resource.deleted", "AccessPolicy/old", "by admin"),
    ]


async def test_journal_long_poll_waits_for_a_new_event() -> None:
    journal = EventJournal(8, clock=lambda: T0)
    journal.record("sidecar.registered", "web-1", "web")
    # Newer events exist: at once.
    with trio.fail_after(1):
        page = await journal.wait_after(0, wait_s=30, limit=10)
    assert [e.subject for e in page.events] == ["web-1"]
    got = []

    async def reader() -> None:
        got.append(await journal.wait_after(1, wait_s=30, limit=10))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            journal.record("sidecar.connected", "web-1")
    assert [(e.seq, e.kind) for e in got[0].events] == [(2, "sidecar.connected")]


async def test_journal_wait_ends_empty_and_close_releases(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = EventJournal(8)
    page = await journal.wait_after(0, wait_s=5, limit=10)
    assert (page.events, page.next) == ((), 0)
    journal.close()
    with trio.fail_after(0.1):
        await journal.wait_after(0, wait_s=30, limit=10)


def _view(version: int, **services: tuple[ServiceEndpoint, ...]) -> DiscoveryView:
    return DiscoveryView(services=services, version=version)


def _ep(port: int) -> ServiceEndpoint:
    return ServiceEndpoint("127.0.0.1", port, f"api-{port}", "node-1", sidecar=True)


def test_endpoint_events_of_two_views() -> None:
    before = _view(1, api=(_ep(1), _ep(2)))
    after = _view(2, api=(_ep(2), _ep(3)), web=(_ep(4),))
    got = [(e.kind, e.subject, e.severity) for e in endpoint_events(before, after)]
    assert got == [
        ("endpoint.healthy", "api/127.0.0.1:3", "info"),
        ("endpoint.unhealthy", "api/127.0.0.1:1", "warning"),
        ("endpoint.healthy", "web/127.0.0.1:4", "info"),
    ]
    assert endpoint_events(after, after) == []


class Views:
    def __init__(self) -> None:
        self.view = _view(0)
        self.changed = trio.Event()

    def swap(self, view: DiscoveryView) -> None:
        self.view = view
        self.changed.set()
        self.changed = trio.Event()

    async def wait_view(self, after_version: int) -> DiscoveryView:
        while self.view.version <= after_version:
            await self.changed.wait()
        return self.view


async def test_endpoint_watch_skips_the_first_view_of_the_registry() -> None:
    views = Views()
    journal = EventJournal(16, clock=lambda: T0)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(EndpointWatch(views, journal).run)
            views.swap(_view(1, api=(_ep(1),)))  # the baseline: no event
            await trio.testing.wait_all_tasks_blocked()
            views.swap(_view(2, api=()))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    page = await journal.wait_after(0, wait_s=0, limit=10)
    assert [(e.kind, e.subject) for e in page.events] == [("endpoint.unhealthy", "api/127.0.0.1:1")]
