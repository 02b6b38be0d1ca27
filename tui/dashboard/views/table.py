"""The table every view is made of: a title line over a row-cursor ``DataTable``."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static

__all__ = ["Cell", "TitledTable", "selected_key", "with_note"]

Cell = str | Text


def selected_key(table: DataTable[Cell]) -> str | None:
    """The key of the row under the cursor (None: empty table)."""
    if table.row_count == 0:
        return None
    row = min(max(table.cursor_row, 0), table.row_count - 1)
    key = table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
    return None if key is None else str(key)


class TitledTable(Vertical):
    """A title and a table whose rows are replaced as a whole, keeping the selected row."""

    DEFAULT_CLASSES = "titled"

    def __init__(self, title: str, columns: Sequence[str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._title = title
        self._columns = tuple(columns)

    def compose(self) -> ComposeResult:
        yield Static(self._title, classes="table-title")
        table: DataTable[Cell] = DataTable(cursor_type="row", zebra_stripes=True)
        yield table

    def on_mount(self) -> None:
        self.table.add_columns(*self._columns)

    @property
    def table(self) -> DataTable[Cell]:
        """The table."""
        found: DataTable[Cell] = self.query_one(DataTable)
        return found

    def set_title(self, title: str) -> None:
        """Replace the title line."""
        self.query_one(".table-title", Static).update(title)

    def set_rows(self, rows: Sequence[tuple[str, Sequence[Cell]]]) -> None:
        """Replace the rows (``(key, cells)``); the cursor stays on the same key if it is kept."""
        table = self.table
        keep = selected_key(table)
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if keep is not None:
            keys = [key for key, _ in rows]
            if keep in keys:
                table.move_cursor(row=keys.index(keep), animate=False)

    @property
    def selected(self) -> str | None:
        """The key of the selected row."""
        return selected_key(self.table)


def with_note(title: str, note: str | None) -> str:
    """``title``, followed by ``note`` (e.g. why telemetry is missing) in parentheses."""
    return f"{title}  ({note})" if note else title
