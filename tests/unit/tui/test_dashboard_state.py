"""One refresh of the dashboard (fetch_state), control-plane events, text helpers, tap filter."""

from __future__ import annotations

import asyncio

import pytest

from meshcore.api.events import ControlEvent
from meshcore.api.telemetry import ServicesTelemetry
from tui.dashboard import fmt
from tui.dashboard.fake import FAKE_NOW, FakeSource
from tui.dashboard.source import SourceRefused, SourceUnreachable
from tui.dashboard.state import MeshState, PlaneEvent, fetch_state, plane_event
from tui.dashboard.views.tap import parse_filter

pytestmark = pytest.mark.timeout(30)


def _fetch(source: FakeSource, drill: str | None = None) -> MeshState:
    return asyncio.run(fetch_state(source, now=FAKE_NOW, drill=drill, window_s=60))


def test_fetch_reads_everything_and_the_drilled_service() -> None:
    source = FakeSource()
    state = _fetch(source)
    assert [s.service for s in state.services] == ["api", "web"]
    assert state.routes == () and state.endpoints == ()
    assert len(state.edges) == 3 and len(state.instances) == 4
    assert state.ca is not None and state.ca.phase == "stable"
    drilled = _fetch(source, "api")
    assert {r.route for r in drilled.routes} == {"canary", "slow"}
    assert {e.proxy_id for e in drilled.endpoints} == {"api-v1-sidecar", "api-v2-sidecar"}


class NoTelemetry(FakeSource):
    async def services(self, window_s: int) -> ServicesTelemetry:
        raise SourceRefused(404, "Not Found")


def test_a_controld_without_telemetry_still_shows_policy() -> None:
    state = _fetch(NoTelemetry())
    assert state.telemetry_error == "telemetry unavailable: Not Found (404)"
    assert state.services == ()
    assert len(state.resources) == 3 and len(state.proxies) == 4


def test_unreachable_passes_through() -> None:
    source = FakeSource()
    source.unreachable = True
    with pytest.raises(SourceUnreachable):
        _fetch(source)


def test_plane_event_of_a_control_event() -> None:
    event = ControlEvent(
        seq=3,
        time="2026-01-01T00:00:05.250Z",
        kind="snapshot.nacked",
        subject="api-v2-sidecar",
        detail="version 12: bad",
        severity="error",
    )
    assert plane_event(event) == PlaneEvent(
        FAKE_NOW + 5.25, "snapshot.nacked", "api-v2-sidecar", "version 12: bad", "error"
    )
    assert plane_event(event.model_copy(update={"time": "yesterday"})).time == 0.0


def test_fake_events_page_and_wait() -> None:
    source = FakeSource()
    held = len(source.events_)
    first = asyncio.run(source.events(0, 0.0, 2))
    assert [e.seq for e in first.events] == [1, 2] and first.next == 2
    rest = asyncio.run(source.events(2, 0.0, 100))
    assert rest.next == held
    assert asyncio.run(source.events(held, 0.1, 100)).events == ()


def test_text_helpers() -> None:
    assert fmt.sparkline([0, 1, 2, 4]) == "▁▂▄█"
    assert fmt.sparkline([0, 0]) == "▁▁"
    assert fmt.sparkline([]) == ""
    assert fmt.rate(1234) == "1.2k" and fmt.rate(3.14) == "3.1"
    assert fmt.pct(None) == "-" and fmt.pct(0.995) == "99.5%"
    assert fmt.ms(3.25) == "3.2ms" and fmt.ms(120) == "120ms" and fmt.ms(None) == "-"
    assert fmt.age(5) == "5s" and fmt.age(7200) == "2h" and fmt.age(-90) == "in 1m"
    assert fmt.clock(FAKE_NOW + 61) == "00:01:01"


def test_tap_filter_parsing() -> None:
    f = parse_filter("dst=api method=get status=503 path=/api source=web")
    assert (f.destination, f.method, f.status, f.path_prefix, f.source) == (
        "api",
        "GET",
        503,
        "/api",
        "web",
    )
    assert parse_filter("") == parse_filter("  ")
    for bad in ("api", "colour=red", "status=x"):
        with pytest.raises(ValueError, match=r"NAME=VALUE|status"):
            parse_filter(bad)
