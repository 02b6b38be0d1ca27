"""Taps in controld: which sidecars see a tap, the rate bound, the long-poll, the end."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from controld.telemetry.taps import GRACE_S, MAX_TAPS, TapHub, TooManyTaps, UnknownTap
from meshcore.api.report import SidecarTapEvent
from meshcore.api.telemetry import TapFilter, TapRequest

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def event(tap_id: str, n: int = 0) -> SidecarTapEvent:
    return SidecarTapEvent(
        tap_id=tap_id,
        ts=1.0,
        source="web",
        destination="api",
        method="GET",
        path=f"/{n}",
        status=200,
        latency_ms=1.0,
    )


def test_active_for_matches_source_or_destination() -> None:
    hub = TapHub(Clock())
    only_api = hub.create(TapRequest(filter=TapFilter(destination="api")))
    everything = hub.create(TapRequest())
    web_to_db = hub.create(TapRequest(filter=TapFilter(source="web", destination="db")))
    # A sidecar sees its outbound calls (source: its service) and its inbound ones
    # (destination: its service): only a tap naming two other services is none of its business.
    assert {t.id for t in hub.active_for("api")} == {only_api.id, everything.id}
    assert {t.id for t in hub.active_for("web")} == {only_api.id, everything.id, web_to_db.id}
    assert {t.id for t in hub.active_for("db")} == {only_api.id, everything.id, web_to_db.id}


def test_rate_bound_over_all_sidecars() -> None:
    clock = Clock()
    hub = TapHub(clock)
    tap = hub.create(TapRequest(max_events_per_s=5))
    hub.add_events(event(tap.id, i) for i in range(50))
    clock.t += 1.0
    hub.add_events(event(tap.id, i) for i in range(50))
    # One token at the start, then five per second.
    assert hub._taps[tap.id].seq == 6
    assert hub.dropped == 94


def test_expiry_delete_and_unknown() -> None:
    clock = Clock()
    hub = TapHub(clock)
    tap = hub.create(TapRequest(duration_s=5))
    assert tap.expires_at == clock.t + 5
    clock.t += 5
    assert hub.active_for("web") == ()
    # Late events of the last reports still count within the grace period.
    hub.add_events([event(tap.id)])
    assert hub._taps[tap.id].seq == 1
    clock.t += GRACE_S
    hub.add_events([event(tap.id)])
    assert hub._taps[tap.id].seq == 1
    with pytest.raises(UnknownTap):
        hub.delete("nope")


def test_too_many_taps() -> None:
    hub = TapHub(Clock())
    for _ in range(MAX_TAPS):
        hub.create(TapRequest())
    with pytest.raises(TooManyTaps):
        hub.create(TapRequest())


async def test_long_poll_wakes_on_events_and_ends_done() -> None:
    clock = Clock()
    hub = TapHub(clock)
    tap = hub.create(TapRequest(duration_s=60))
    got = []

    async def reader() -> None:
        got.append(await hub.events(tap.id, after=0, wait_s=10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        hub.add_events([event(tap.id, 1)])
    [answer] = got
    assert [e.path for e in answer.events] == ["/1"]
    assert answer.next == 1 and not answer.done
    # Nothing new: an immediate answer with wait 0.
    again = await hub.events(tap.id, after=1, wait_s=0)
    assert again.events == () and again.next == 1
    hub.delete(tap.id)
    final = await hub.events(tap.id, after=1, wait_s=5)
    assert final.done
