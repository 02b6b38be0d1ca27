"""The Events view: controld's control-plane events (streamed from ``GET /v1/events``) with
the dashboard's own actions, and the audit log of changes (who, what, when)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive

from meshcore.api.audit import AuditEntry
from tui.dashboard import fmt
from tui.dashboard.state import MeshState, PlaneEvent
from tui.dashboard.views.table import Cell, TitledTable

__all__ = ["EventsView", "audit_rows", "event_rows"]

EVENT_COLUMNS = ("TIME", "EVENT", "SUBJECT", "DETAIL")
AUDIT_COLUMNS = ("TIME", "WHO", "WHAT", "RESOURCE", "OUTCOME")
EVENTS_TITLE = "Control-plane events and this dashboard's actions"


#: How each severity's kind is shown (info: plain).
_SEVERITY_STYLE = {"warning": "yellow", "error": "bold red"}


def event_rows(events: Sequence[PlaneEvent]) -> list[tuple[str, list[Cell]]]:
    """Newest first; warnings and errors in colour (their kinds say it without)."""
    rows: list[tuple[str, list[Cell]]] = []
    for i, e in enumerate(reversed(events)):
        kind: Cell = e.kind
        style = _SEVERITY_STYLE.get(e.severity)
        if style is not None:
            kind = Text(e.kind, style=style)
        rows.append((f"e{len(events) - i}", [fmt.clock(e.time), kind, e.subject, e.detail]))
    return rows


def audit_rows(entries: Sequence[AuditEntry]) -> list[tuple[str, list[Cell]]]:
    """Audit entries as controld answers them (newest first)."""
    rows: list[tuple[str, list[Cell]]] = []
    for i, e in enumerate(entries):
        when = e.time
        # RFC 3339: keep the time of day, the date is rarely news in a live view.
        short = when[11:19] if len(when) >= 19 and when[10] in "T " else when
        cell: Cell = e.outcome
        if e.status >= 400:
            cell = Text(f"{e.outcome} ({e.status})", style="bold red")
        rows.append(
            (
                f"a{i}",
                [
                    short,
                    e.actor,
                    f"{e.method} {e.route}",
                    e.resource or "-",
                    cell,
                ],
            )
        )
    return rows


class EventsView(Vertical):
    """Events above, the audit log below."""

    state: reactive[MeshState | None] = reactive(None, always_update=True)
    events: reactive[tuple[PlaneEvent, ...]] = reactive((), always_update=True)
    #: Why controld's events are missing (an older controld, a refused token), else "".
    events_note: reactive[str] = reactive("")

    def compose(self) -> ComposeResult:
        yield TitledTable(EVENTS_TITLE, EVENT_COLUMNS, id="events-table")
        yield TitledTable("Audit log", AUDIT_COLUMNS, id="audit-table")

    def on_mount(self) -> None:
        self.watch_state()
        self.watch_events()
        self.watch_events_note()

    def watch_events(self) -> None:
        if self.is_mounted:
            self.query_one("#events-table", TitledTable).set_rows(event_rows(self.events))

    def watch_events_note(self) -> None:
        if self.is_mounted:
            title = f"{EVENTS_TITLE}: {self.events_note}" if self.events_note else EVENTS_TITLE
            self.query_one("#events-table", TitledTable).set_title(title)

    def watch_state(self) -> None:
        if not self.is_mounted or self.state is None:
            return
        audit = self.query_one("#audit-table", TitledTable)
        notes = "; ".join(self.state.notes)
        audit.set_title(f"Audit log: {len(self.state.audit)} newest changes {notes}".rstrip())
        audit.set_rows(audit_rows(self.state.audit))
