"""SVG snapshots of each dashboard view at 80x24 (pytest-textual-snapshot), time frozen.

The fake source's clock and every timestamp it serves are fixed (FAKE_NOW), and the app
reads time only through its ``clock``, so a snapshot changes only when the rendering does.
Update after an intended change: ``pytest tests/unit/tui/test_dashboard_snapshots.py
--snapshot-update`` and review the SVGs.
"""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot

from tui.dashboard.app import DashboardApp
from tui.dashboard.fake import FAKE_NOW, FakeSource

pytestmark = pytest.mark.timeout(120)


def _app() -> DashboardApp:
    # A long refresh period: the screen is taken after the first refresh, nothing moves.
    return DashboardApp(FakeSource(), server="http://fake", refresh_s=3600, clock=lambda: FAKE_NOW)


def _keys(*keys: str) -> Any:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, DashboardApp)
        for _ in range(100):
            if app.state is not None:
                break
            await pilot.pause(0.05)
        await pilot.press(*keys)
        await pilot.pause(0.2)

    return run_before


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("traffic", ("1",)),
        ("topology", ("2",)),
        ("policy", ("3",)),
        ("instances", ("4",)),
        ("events", ("6",)),
        ("help", ("question_mark",)),
    ],
)
def test_view_snapshot(
    snap_compare: Any, monkeypatch: pytest.MonkeyPatch, name: str, keys: tuple[str, ...]
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert snap_compare(_app(), terminal_size=(80, 24), run_before=_keys(*keys))


def test_no_color_snapshot(snap_compare: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_COLOR: monochrome, and NACKs and STALE still say so in words."""
    monkeypatch.setenv("NO_COLOR", "1")
    app = _app()
    assert app.no_color
    assert snap_compare(app, terminal_size=(80, 24), run_before=_keys("3"))
