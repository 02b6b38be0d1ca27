"""The Tap view: sampled request events streaming from the sidecars while a tap runs."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label

from meshcore.api.telemetry import TapEvent, TapFilter
from tui.dashboard import fmt
from tui.dashboard.views.table import Cell, TitledTable

__all__ = ["MAX_TAP_ROWS", "TapView", "parse_filter", "tap_row"]

COLUMNS = ("TIME", "CALL", "REQUEST", "STATUS", "LATENCY", "ENDPOINT", "TRACE")
#: Rows kept on screen (the oldest go first).
MAX_TAP_ROWS = 500


def parse_filter(text: str) -> TapFilter:
    """``destination=api method=GET status=503 path=/api source=web`` (any subset, any
    order) -> a :class:`TapFilter`; ``ValueError`` on anything else."""
    fields: dict[str, object] = {}
    names = {
        "source": "source",
        "destination": "destination",
        "dst": "destination",
        "src": "source",
        "path": "path_prefix",
        "method": "method",
        "status": "status",
    }
    for word in text.split():
        name, sep, value = word.partition("=")
        if not sep or name not in names or not value:
            raise ValueError(f"expected NAME=VALUE with NAME one of {', '.join(sorted(names))}")
        key = names[name]
        if key == "status":
            if not value.isdigit():
                raise ValueError("status must be a number")
            fields[key] = int(value)
        else:
            fields[key] = value.upper() if key == "method" else value
    return TapFilter.model_validate(fields)


def tap_row(event: TapEvent) -> list[Cell]:
    """The cells of one event."""
    status: Cell = str(event.status or "none")
    if event.status == 0 or event.status >= 500:
        status = Text(str(status), style="bold red")
    return [
        fmt.clock(event.ts),
        f"{event.source}→{event.destination}" + (f" [{event.route}]" if event.route else ""),
        f"{event.method} {event.path}",
        status,
        fmt.ms(event.latency_ms),
        event.endpoint or "-",
        event.trace_id[:8] or "-",
    ]


class TapView(Vertical):
    """``enter`` in the filter (or ``t`` on the events) starts or stops a tap."""

    BINDINGS = [Binding("t", "toggle_tap", "Start/stop tap", show=True)]

    class Toggle(Message):
        """Start a tap with ``filter`` (None: stop the running one)."""

        def __init__(self, filter: TapFilter | None) -> None:
            super().__init__()
            self.filter = filter

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.running = False
        self._count = 0

    def compose(self) -> ComposeResult:
        with Horizontal(id="tap-bar"):
            yield Label("filter ", id="tap-label")
            yield Input(
                placeholder="destination=api method=GET status=503 (empty: all)", id="tap-filter"
            )
        yield TitledTable("Tap: stopped (enter: start)", COLUMNS, id="tap-table")

    def set_running(self, running: bool, note: str = "") -> None:
        """Show whether a tap runs (set by the app)."""
        self.running = running
        state = "running (enter or t: stop)" if running else "stopped (enter: start)"
        self.query_one(TitledTable).set_title(
            f"Tap: {state}  {self._count} events  {note}".rstrip()
        )

    def add_events(self, events: Sequence[TapEvent]) -> None:
        """Append events (newest at the bottom), keeping at most :data:`MAX_TAP_ROWS`."""
        table = self.query_one(TitledTable).table
        for event in events:
            self._count += 1
            table.add_row(*tap_row(event), key=str(self._count))
        while table.row_count > MAX_TAP_ROWS:
            table.remove_row(table.coordinate_to_cell_key((0, 0)).row_key)  # type: ignore[arg-type]
        if events:
            table.move_cursor(row=table.row_count - 1, animate=False)
        self.set_running(self.running)

    def action_toggle_tap(self) -> None:
        if self.running:
            self.post_message(self.Toggle(None))
            return
        try:
            tap_filter = parse_filter(self.query_one("#tap-filter", Input).value)
        except ValueError as exc:
            self.app.notify(str(exc), title="Tap filter", severity="error")
            return
        self.post_message(self.Toggle(tap_filter))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        # enter in the filter starts (or stops) the tap, as t does on the table.
        event.stop()
        self.action_toggle_tap()
