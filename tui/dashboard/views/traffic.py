"""The Traffic view: per service rps, success rate and latency, drilled down to routes and
endpoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable

from meshcore.api.telemetry import TrafficStats
from tui.dashboard import fmt
from tui.dashboard.state import MeshState
from tui.dashboard.views.table import Cell, TitledTable, with_note

__all__ = ["SORT_KEYS", "TrafficView", "traffic_rows"]

#: What ``s`` cycles through: (column name, key of a row).
SORT_KEYS: tuple[str, ...] = ("rps", "success", "p99", "name")
COLUMNS = ("NAME", "RPS", "SUCCESS", "P50", "P95", "P99", "TREND")


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: its key, its name, its numbers."""

    key: str
    name: str
    stats: TrafficStats


def _sort_value(row: Row, key: str) -> tuple[float, str]:
    s = row.stats
    if key == "rps":
        return (-s.rps, row.name)
    if key == "success":
        return (s.success_rate if s.success_rate is not None else 2.0, row.name)
    if key == "p99":
        return (-(s.p99_ms or 0.0), row.name)
    return (0.0, row.name)


def _success(value: float | None) -> Cell:
    text = fmt.pct(value)
    if value is not None and value < 0.99:
        return Text(text, style="bold red")
    return text


def traffic_rows(rows: Sequence[Row], sort: str) -> list[tuple[str, list[Cell]]]:
    """The table's rows, sorted by ``sort`` (one of :data:`SORT_KEYS`)."""
    ordered = sorted(rows, key=lambda r: _sort_value(r, sort))
    return [
        (
            r.key,
            [
                r.name,
                fmt.rate(r.stats.rps),
                _success(r.stats.success_rate),
                fmt.ms(r.stats.p50_ms),
                fmt.ms(r.stats.p95_ms),
                fmt.ms(r.stats.p99_ms),
                fmt.sparkline(r.stats.rps_series),
            ],
        )
        for r in ordered
    ]


class TrafficView(Vertical):
    """Services -> routes of one service -> endpoints of that service (``enter``/``escape``)."""

    BINDINGS = [
        Binding("enter", "drill", "Drill down", show=True),
        Binding("escape,backspace", "up", "Up", show=True),
        Binding("s", "sort", "Sort", show=True),
    ]

    class Drill(Message):
        """The user drilled into ``service`` (None: back to all services)."""

        def __init__(self, service: str | None) -> None:
            super().__init__()
            self.service = service

    state: reactive[MeshState | None] = reactive(None, always_update=True)
    #: ``services``, ``routes`` or ``endpoints``.
    level: reactive[str] = reactive("services")
    sort: reactive[str] = reactive("rps")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.service: str | None = None
        self.route: str | None = None

    def compose(self) -> ComposeResult:
        yield TitledTable("Traffic", COLUMNS, id="traffic-table")

    def on_mount(self) -> None:
        self.render_rows()

    def watch_state(self) -> None:
        self.render_rows()

    def watch_level(self) -> None:
        self.render_rows()

    def watch_sort(self) -> None:
        self.render_rows()

    def _rows(self, state: MeshState) -> list[Row]:
        if self.level == "services":
            return [Row(s.service, s.service, s) for s in state.services]
        if self.level == "routes":
            return [Row(r.route, r.route, r) for r in state.routes if r.service == self.service]
        return [
            Row(e.endpoint, f"{e.endpoint} {e.proxy_id or ''}".rstrip(), e)
            for e in state.endpoints
            if e.service == self.service
        ]

    def _title(self, state: MeshState | None) -> str:
        where = "services"
        if self.level == "routes":
            where = f"{self.service} > routes"
        elif self.level == "endpoints":
            where = f"{self.service} > {self.route} > endpoints of {self.service}"
        title = f"Traffic: {where}   sort: {self.sort} (s)   enter: drill, esc: up"
        return with_note(title, state.telemetry_error if state else None)

    def render_rows(self) -> None:
        """Fill the table from ``state`` at the current level."""
        if not self.is_mounted:
            return
        titled = self.query_one(TitledTable)
        titled.set_title(self._title(self.state))
        rows = [] if self.state is None else self._rows(self.state)
        titled.set_rows(traffic_rows(rows, self.sort))

    def action_sort(self) -> None:
        self.sort = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]

    def action_drill(self) -> None:
        selected = self.query_one(TitledTable).selected
        if selected is None or self.level == "endpoints":
            return
        if self.level == "services":
            self.service = selected
            self.level = "routes"
            self.post_message(self.Drill(selected))
        else:
            self.route = selected
            self.level = "endpoints"

    def action_up(self) -> None:
        if self.level == "endpoints":
            self.level = "routes"
        elif self.level == "routes":
            self.service = None
            self.level = "services"
            self.post_message(self.Drill(None))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        # Enter on the table selects a row: the same as the drill key (mouse: a click).
        event.stop()
        self.action_drill()
