"""Helpers of the dashboard's pilot tests: run the app on a source, read its tables."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from tui.dashboard.app import DashboardApp
from tui.dashboard.fake import FAKE_NOW, FakeSource
from tui.dashboard.source import DashboardSource
from tui.dashboard.views.table import TitledTable

Scenario = Callable[[Pilot[None], DashboardApp], Awaitable[None]]
#: Bound of every wait inside a scenario.
WAIT_S = 10.0


def run_app(
    scenario: Scenario,
    source: DashboardSource | None = None,
    *,
    size: tuple[int, int] = (100, 30),
    clock: Callable[[], float] = lambda: FAKE_NOW,
    refresh_s: float = 0.5,
    first_refresh: bool = True,
) -> None:
    """Run ``scenario`` against a headless dashboard (fake source and clock by default)."""

    async def main() -> None:
        app = DashboardApp(
            source or FakeSource(), server="http://fake", refresh_s=refresh_s, clock=clock
        )
        async with app.run_test(size=size) as pilot:
            if first_refresh:
                await wait_for(pilot, lambda: app.state is not None, "the first refresh")
            await scenario(pilot, app)

    asyncio.run(asyncio.wait_for(main(), timeout=60))


async def wait_for(pilot: Pilot[None], check: Callable[[], object], what: str) -> None:
    """Pause until ``check()`` is truthy (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def table_rows(app: DashboardApp, table_id: str) -> list[list[str]]:
    """The cells of a view's table as plain text."""
    table: DataTable[object] = app.query_one(f"#{table_id}", TitledTable).query_one(DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def status_text(app: DashboardApp) -> str:
    """The status line."""
    return str(app.query_one("#status", Static).render())
