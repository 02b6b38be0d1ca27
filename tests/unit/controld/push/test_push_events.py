"""The events the push hub and its presence watch record (a list as the sink)."""

from __future__ import annotations

import pytest

from controld.events.ring import NewEvent
from controld.push import PushHub
from controld.push.presence import Presence, PresenceRow, PresenceWatch
from meshcore.api.events import Severity
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.snapshot import Snapshot

pytestmark = pytest.mark.timeout(30)


class ListSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    def record(
        self, kind: str, subject: str, detail: str = "", severity: Severity = "info"
    ) -> None:
        self.events.append((kind, subject, detail, severity))

    def kinds(self) -> list[str]:
        taken = [e[0] for e in self.events]
        self.events.clear()
        return taken


async def test_hub_records_registration_push_ack_nack_drain() -> None:
    sink = ListSink()
    now = [1000.0]
    hub = PushHub(events=sink, clock=lambda: now[0])
    hub.register(ProxyDescriptor(proxy_id="web-1", service="web"))
    assert sink.events == [("sidecar.registered", "web-1", "web", "info")]
    sink.events.clear()
    hub.register(ProxyDescriptor(proxy_id="web-1", service="web"))  # a refresh: no event
    assert sink.kinds() == []
    hub.publish({"web-1": (Snapshot(version=0), "h1")}, revision=1, changed_at=now[0])
    envelope = await hub.poll("web-1", version=None, hash=None, wait=0)
    assert envelope is not None
    assert sink.events == [("snapshot.pushed", "web-1", f"version {envelope.version}", "info")]
    sink.events.clear()
    # The next poll reports running it: the ACK, once.
    await hub.poll("web-1", version=envelope.version, hash="h1", wait=0)
    await hub.poll("web-1", version=envelope.version, hash="h1", wait=0)
    assert sink.events == [("snapshot.acked", "web-1", f"version {envelope.version}", "info")]
    sink.events.clear()
    hub.publish({"web-1": (Snapshot(version=0), "h2")}, revision=2, changed_at=now[0])
    second = await hub.poll("web-1", version=envelope.version, hash="h1", wait=0)
    assert second is not None
    hub.nack("web-1", version=second.version, hash="h2", error="routes[0]: bad\nmore")
    assert sink.events[-1] == (
        "snapshot.nacked",
        "web-1",
        f"version {second.version}: routes[0]: bad",
        "error",
    )
    sink.events.clear()
    hub.request_drain("web-1")
    hub.unregister("web-1")
    assert sink.kinds() == ["sidecar.drain_requested", "sidecar.deregistered"]


def test_presence_reports_transitions_only() -> None:
    presence = Presence()
    rows = [PresenceRow("a", True, {}), PresenceRow("b", False, {})]
    assert presence.update(rows) == [NewEvent("sidecar.connected", "a")]
    assert presence.update(rows) == []
    gaps = {"fault.headers": "routes[1]"}
    events = presence.update([PresenceRow("a", False, gaps), PresenceRow("b", True, {})])
    assert [(e.kind, e.subject, e.severity) for e in events] == [
        ("sidecar.disconnected", "a", "warning"),
        ("sidecar.unsupported", "a", "warning"),
        ("sidecar.connected", "b", "info"),
    ]
    assert events[1].detail == "fault.headers at routes[1]"
    # Same gaps again: nothing; a sidecar that left is forgotten quietly.
    assert presence.update([PresenceRow("a", False, gaps)]) == []
    assert presence.update([PresenceRow("b", True, {})]) == [NewEvent("sidecar.connected", "b")]


async def test_presence_watch_reads_the_hub() -> None:
    sink = ListSink()
    now = [1000.0]
    hub = PushHub(clock=lambda: now[0])
    watch = PresenceWatch(hub.presence, sink)
    hub.register(ProxyDescriptor(proxy_id="web-1", service="web"))
    watch.check()
    assert sink.kinds() == []  # registered, never polled
    await hub.poll("web-1", version=None, hash=None, wait=0)
    watch.check()
    assert sink.kinds() == ["sidecar.connected"]
    now[0] += 5  # beyond twice max(wait, 1 s)
    watch.check()
    assert sink.kinds() == ["sidecar.disconnected"]
