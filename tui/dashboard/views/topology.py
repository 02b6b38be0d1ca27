"""The Topology view: the service graph as an adjacency list, one line per edge.

A drawn graph does not survive 80x24 with a dozen services; an indented list does: each
caller once, then one line per service it calls with the hop's rate, error rate, protocol and
whether it is mTLS.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive

from meshcore.api.telemetry import Edge
from tui.dashboard import fmt
from tui.dashboard.state import MeshState
from tui.dashboard.views.table import Cell, TitledTable, with_note

__all__ = ["TopologyView", "edge_rows"]

COLUMNS = ("FROM", "TO", "PROTO", "RATE", "ERRORS", "mTLS")


def edge_rows(edges: Sequence[Edge]) -> list[tuple[str, list[Cell]]]:
    """Edges grouped by caller (the caller's name on its first line only), callers sorted."""
    ordered = sorted(edges, key=lambda e: (e.source, e.destination, e.protocol))
    rows: list[tuple[str, list[Cell]]] = []
    previous = None
    for i, edge in enumerate(ordered):
        last_of_source = i + 1 == len(ordered) or ordered[i + 1].source != edge.source
        branch = "└─▶ " if last_of_source else "├─▶ "
        unit = "rps" if edge.protocol == "http" else "conn/s"
        rate = f"{fmt.rate(edge.rps)} {unit}"
        if edge.protocol == "tcp" and edge.bytes_per_s:
            rate += f" {edge.bytes_per_s / 1024:.1f}KiB/s"
        errors: Cell = fmt.pct(edge.error_rate)
        if edge.error_rate is not None and edge.error_rate >= 0.01:
            errors = Text(str(errors), style="bold red")
        mtls: Cell = "mTLS" if edge.mtls else Text("plain", style="yellow")
        rows.append(
            (
                f"{edge.source}>{edge.destination}>{edge.protocol}",
                [
                    edge.source if edge.source != previous else "",
                    branch + edge.destination,
                    edge.protocol,
                    rate,
                    errors,
                    mtls,
                ],
            )
        )
        previous = edge.source
    return rows


class TopologyView(Vertical):
    """Who calls whom over the telemetry window."""

    state: reactive[MeshState | None] = reactive(None, always_update=True)

    def compose(self) -> ComposeResult:
        yield TitledTable("Topology", COLUMNS, id="topology-table")

    def on_mount(self) -> None:
        self.watch_state()

    def watch_state(self) -> None:
        if not self.is_mounted:
            return
        titled = self.query_one(TitledTable)
        state = self.state
        titled.set_title(
            with_note(
                "Topology: caller ─▶ callee (http: requests/s, tcp: connections/s)",
                state.telemetry_error if state else None,
            )
        )
        titled.set_rows(edge_rows(state.edges if state is not None else ()))
