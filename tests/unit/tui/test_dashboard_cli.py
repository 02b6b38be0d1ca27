"""``meshctl dashboard``: options, and the app it builds (not run: App.run is replaced)."""

from __future__ import annotations

import pytest

from tui.cli import main
from tui.dashboard.app import DashboardApp
from tui.dashboard.http import HttpSource

pytestmark = pytest.mark.timeout(30)


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--window" in out and "--refresh" in out and "--server" in out


def test_builds_the_app_from_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[DashboardApp] = []
    monkeypatch.setattr(DashboardApp, "run", lambda self, **_: built.append(self))
    argv = ["dashboard", "--server", "10.0.0.5:8501", "--token", "t", "--window", "5000"]
    assert main([*argv, "--refresh", "0.01"]) == 0
    [app] = built
    assert isinstance(app.source, HttpSource)
    assert app.source.base_url == "http://10.0.0.5:8501"
    assert (app.window_s, app.refresh_s) == (900, 0.2)  # clamped
