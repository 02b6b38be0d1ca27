"""The Instances view: each sidecar's health, ejections, certificate, snapshot, last contact."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive

from meshcore.api.proxies import ProxyState
from meshcore.api.telemetry import InstanceTelemetry
from tui.dashboard import fmt
from tui.dashboard.state import MeshState
from tui.dashboard.views.table import Cell, TitledTable, with_note

__all__ = ["InstancesView", "instance_rows"]

#: SNAP: the snapshot version in service; SEEN: time since the last contact.
COLUMNS = ("PROXY", "SERVICE", "HEALTH", "EJECTED", "CERT", "SNAP", "SEEN")
#: A certificate closer than this to expiry is shown in red.
CERT_WARN_S = 3600.0


def instance_rows(
    proxies: Sequence[ProxyState],
    instances: Sequence[InstanceTelemetry],
    now: float,
) -> list[tuple[str, list[Cell]]]:
    """One row per sidecar known to the push hub or to telemetry, by service and id."""
    telemetry = {i.proxy_id: i for i in instances}
    pushed = {p.proxy_id: p for p in proxies}
    rows: list[tuple[str, list[Cell]]] = []
    for pid in sorted(pushed.keys() | telemetry.keys()):
        proxy = pushed.get(pid)
        tele = telemetry.get(pid)
        service = proxy.service if proxy else (tele.service if tele else "?")
        health: Cell
        if proxy is None:
            health = "ok"
        elif proxy.drain_requested:
            health = Text("draining", style="yellow")
        elif not proxy.connected:
            health = Text("disconnected", style="bold red")
        elif proxy.nack is not None:
            health = Text("NACK", style="bold red")
        else:
            health = "ok"
        ejected = "-"
        cert: Cell = "-"
        contact = proxy.last_contact if proxy else None
        snapshot = proxy.acked_version if proxy else None
        if tele is not None:
            ejected = ", ".join(tele.ejected_endpoints) or "-"
            if tele.cert_not_after is not None:
                left = tele.cert_not_after - now
                cert = f"in {fmt.age(left)}" if left >= 0 else "EXPIRED"
                if left < CERT_WARN_S:
                    cert = Text(str(cert), style="bold red")
            if tele.snapshot_version is not None:
                snapshot = tele.snapshot_version
            if contact is None or tele.last_contact > contact:
                contact = tele.last_contact
        rows.append(
            (
                pid,
                [
                    pid,
                    service,
                    health,
                    ejected,
                    cert,
                    "-" if snapshot is None else str(snapshot),
                    fmt.age(now - contact) if isinstance(contact, int | float) else "-",
                ],
            )
        )
    rows.sort(key=lambda r: (str(r[1][1]), r[0]))
    return rows


class InstancesView(Vertical):
    """Sidecars; ``d`` drains the selected one."""

    BINDINGS = [Binding("d", "drain", "Drain", show=True)]

    class DrainRequested(Message):
        """The user asked to drain ``proxy_id``."""

        def __init__(self, proxy_id: str) -> None:
            super().__init__()
            self.proxy_id = proxy_id

    state: reactive[MeshState | None] = reactive(None, always_update=True)

    def compose(self) -> ComposeResult:
        yield TitledTable("Instances", COLUMNS, id="instances-table")

    def on_mount(self) -> None:
        self.watch_state()

    def watch_state(self) -> None:
        if not self.is_mounted:
            return
        titled = self.query_one(TitledTable)
        state = self.state
        titled.set_title(
            with_note(
                "Instances (d: drain the selected sidecar)",
                state.telemetry_error if state else None,
            )
        )
        if state is None:
            titled.set_rows([])
            return
        titled.set_rows(instance_rows(state.proxies, state.instances, state.fetched_at))

    def action_drain(self) -> None:
        selected = self.query_one(TitledTable).selected
        if selected is not None:
            self.post_message(self.DrainRequested(selected))
