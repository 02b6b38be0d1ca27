"""Pilot tests (App.run_test) of every dashboard view and control action, on the fake source.

The same flows against a real controld with live sidecars: tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import pytest
from dashboard_pilot import run_app, status_text, table_rows, wait_for
from textual.pilot import Pilot
from textual.widgets import TabbedContent

from meshcore.api.events import ControlEvents
from meshcore.api.proxies import ProxyState
from tui.dashboard.app import DashboardApp
from tui.dashboard.fake import FakeSource
from tui.dashboard.screens import ConfirmScreen, HelpScreen, PromptScreen
from tui.dashboard.source import SourceRefused
from tui.dashboard.views.table import TitledTable

pytestmark = pytest.mark.timeout(60)


async def type_text(pilot: Pilot[None], text: str) -> None:
    await pilot.press("ctrl+u")  # Input: delete what is before the cursor (the suggestion)
    for ch in text:
        await pilot.press("space" if ch == " " else ch)


async def answer_prompt(pilot: Pilot[None], app: DashboardApp, text: str) -> None:
    await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the prompt")
    await pilot.press("end")
    await type_text(pilot, text)
    await pilot.press("enter")


async def confirm(pilot: Pilot[None], app: DashboardApp, key: str = "y") -> None:
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
    await pilot.press(key)


def test_traffic_view_sorts_and_drills_to_routes_then_endpoints() -> None:
    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        rows = table_rows(app, "traffic-table")
        assert [r[0] for r in rows] == ["api", "web"]  # by rps, then name
        assert rows[0][1:6] == ["5.0", "98.0%", "4.0ms", "12ms", "24ms"]
        assert rows[0][6] == "▄▆▇▇█▇"  # the sparkline of rps_series
        await pilot.press("s")  # by success rate: the worst first
        assert [r[0] for r in table_rows(app, "traffic-table")] == ["api", "web"]
        await pilot.press("s", "s")  # p99, then name
        assert [r[0] for r in table_rows(app, "traffic-table")] == ["api", "web"]
        await pilot.press("enter")  # into api's routes
        await wait_for(pilot, lambda: app.state is not None and app.state.routes, "routes")
        await wait_for(pilot, lambda: len(table_rows(app, "traffic-table")) == 2, "route rows")
        assert {r[0] for r in table_rows(app, "traffic-table")} == {"canary", "slow"}
        await pilot.press("enter")  # into the endpoints
        rows = table_rows(app, "traffic-table")
        # sorted by name now; v1 has 90 % of the traffic
        assert [r[0] for r in rows] == [
            "127.0.0.1:15106 api-v1-sidecar",
            "127.0.0.1:15206 api-v2-sidecar",
        ]
        assert [r[1] for r in rows] == ["4.5", "0.5"]
        await pilot.press("escape", "escape")
        assert [r[0] for r in table_rows(app, "traffic-table")] == ["api", "web"]
        assert app.drill is None

    run_app(scenario)


def test_topology_view_lists_edges_with_rate_errors_and_mtls() -> None:
    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("2")
        assert table_rows(app, "topology-table") == [
            ["loadgen", "└─▶ web", "http", "5.0 rps", "0.0%", "mTLS"],
            ["web", "├─▶ api", "http", "5.0 rps", "2.0%", "mTLS"],
            ["", "└─▶ db", "tcp", "0.5 conn/s 2.0KiB/s", "-", "plain"],
        ]

    run_app(scenario, size=(80, 24))


def test_policy_view_shows_rules_and_sidecar_acks_nacks_and_unsupported_features() -> None:
    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("3")
        rows = table_rows(app, "policy-table")
        assert [r[:2] for r in rows] == [
            ["route", "api/slow"],
            ["split", "api/canary"],
            ["access", "api-callers"],
            ["ratelimit", "api-limit"],
        ]
        assert rows[1][3] == "v1=90 v2=10"
        assert rows[3][3] == "50/s burst 100"
        sidecars = {r[0]: r for r in table_rows(app, "sidecar-table")}
        assert sidecars["api-v1-sidecar (api)"][3] == "synced"
        nacked = sidecars["api-v2-sidecar (api)"]
        assert nacked[3] == "NACK v12: route canary:…"  # cut: 80 columns
        assert nacked[4] == "fault.headers (routes[1])"

    run_app(scenario)


def test_instances_view() -> None:
    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("4")
        rows = {r[0]: r for r in table_rows(app, "instances-table")}
        assert rows["web-sidecar"] == [
            "web-sidecar",
            "web",
            "ok",
            "api/127.0.0.1:15206",
            "in 20h",
            "12",
            "1s",
        ]
        assert rows["api-v2-sidecar"][2] == "NACK"

    run_app(scenario)


def test_events_view_streams_controld_events_and_the_audit_log() -> None:
    source = FakeSource()
    held = len(source.events_)

    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("6")
        assert table_rows(app, "audit-table") == []
        await wait_for(pilot, lambda: len(table_rows(app, "events-table")) == held, "events")
        rows = table_rows(app, "events-table")
        assert rows[0] == ["23:59:02", "snapshot.acked", "web-sidecar", "version 12"]
        assert rows[-1][1:3] == ["sidecar.registered", "api-v2-sidecar"]
        # A new event wakes the long-poll; an apply adds one (and an audit entry).
        source.add_event("sidecar.disconnected", "loadgen-sidecar", "gone quiet", "warning")
        await source.apply(await source.get_resource("RateLimit", "api-limit"))
        await wait_for(pilot, lambda: len(table_rows(app, "events-table")) == held + 2, "news")
        assert [r[1:3] for r in table_rows(app, "events-table")[:2]] == [
            ["resource.updated", "RateLimit/api-limit"],
            ["sidecar.disconnected", "loadgen-sidecar"],
        ]
        await wait_for(pilot, lambda: table_rows(app, "audit-table"), "the audit entry")
        assert table_rows(app, "audit-table")[0] == [
            "00:00:00",
            "admin",
            "PUT /v1/resources",
            "RateLimit/api-limit",
            "applied",
        ]

    run_app(scenario, source)


class NoEvents(FakeSource):
    async def events(self, after: int, wait_s: float, limit: int) -> ControlEvents:
        raise SourceRefused(404, "not found")


def test_events_view_says_why_controld_events_are_missing() -> None:
    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("6")
        title = app.events_view.query_one("#events-table", TitledTable).query_one(".table-title")
        await wait_for(pilot, lambda: "unavailable" in str(title.render()), "the note")
        assert "404: not found" in str(title.render())

    run_app(scenario, NoEvents())


def test_tap_view_streams_events() -> None:
    source = FakeSource()

    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("5")
        await pilot.click("#tap-filter")
        await type_text(pilot, "destination=api")
        await pilot.press("enter")  # starts the tap
        await wait_for(pilot, lambda: len(table_rows(app, "tap-table")) == 3, "tap events")
        first = table_rows(app, "tap-table")[0]
        assert first[1:5] == ["web→api [canary]", "GET /api/items/0", "503", "3.5ms"]
        assert app.tap_id == "tap-1"
        app.query_one("#tap-table").query_one("DataTable").focus()
        await pilot.press("t")  # stops it
        await wait_for(pilot, lambda: "tap-1" not in source.taps, "the tap's deletion")
        assert app.tap_id is None

    run_app(scenario, source)


def test_unreachable_controld_marks_data_stale_and_reconnects() -> None:
    source = FakeSource()

    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        assert not app.stale
        source.unreachable = True
        await wait_for(pilot, lambda: app.stale, "stale")
        assert status_text(app).startswith("STALE  controld http://fake  data at 00:00:00")
        assert "connection refused" in status_text(app)
        assert table_rows(app, "traffic-table")  # the last data stays on screen
        source.unreachable = False
        await pilot.press("r")
        await wait_for(pilot, lambda: not app.stale, "reconnected")
        assert not status_text(app).startswith("STALE")

    run_app(scenario, source)


def test_help_screen_and_command_palette() -> None:
    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), "help closed")
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CommandPalette", "palette")
        await type_text(pilot, "Show topology")
        await pilot.pause(0.3)
        await pilot.press("enter")
        tabs = app.query_one(TabbedContent)
        await wait_for(pilot, lambda: tabs.active == "topology", "topology")

    run_app(scenario)


def test_shift_split_from_the_keyboard() -> None:
    source = FakeSource()

    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("3", "w")  # the selected row (api/slow) is no split: the only one is used
        await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the prompt")
        await type_text(pilot, "50 50")
        await pilot.press("enter")
        await confirm(pilot, app)
        await wait_for(pilot, lambda: app.last_action, "the outcome")
        assert app.last_action == "✔ split api/canary v1 90→50, v2 10→50: applied, revision 8"
        rule = source.resources_[("HTTPRoute", "api")]["spec"]["rules"][1]
        assert [b["weight"] for b in rule["backends"]] == [50, 50]
        assert source.audit_[-1]["resource"] == "HTTPRoute/api"
        await wait_for(
            pilot, lambda: table_rows(app, "policy-table")[1][3] == "v1=50 v2=50", "the new weights"
        )
        assert "split api/canary" in status_text(app)

    run_app(scenario, source)


def test_cancelled_and_invalid_split_changes_nothing() -> None:
    source = FakeSource()

    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("3", "w")
        await answer_prompt(pilot, app, "10 20 30")
        await wait_for(pilot, lambda: app.last_action.startswith("✘"), "the refusal")
        assert "2 backends, got 3 weights" in app.last_action
        await pilot.press("w")
        await answer_prompt(pilot, app, "0 100")
        await confirm(pilot, app, "n")
        await pilot.pause(0.2)
        assert source.revision == 7 and source.audit_ == []

    run_app(scenario, source)


def test_toggle_fault_on_the_selected_rule() -> None:
    source = FakeSource()

    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("3", "down", "f")
        await confirm(pilot, app)
        await wait_for(pilot, lambda: app.last_action, "the outcome")
        assert app.last_action == "✔ fault on on api/canary: applied, revision 8"
        rule = source.resources_[("HTTPRoute", "api")]["spec"]["rules"][1]
        assert rule["fault"] == {"abort": {"percent": 10, "status": 503}}
        await wait_for(pilot, lambda: "FAULT" in table_rows(app, "policy-table")[1][3], "the fault")
        await pilot.press("f")
        await confirm(pilot, app)
        await wait_for(pilot, lambda: "fault off" in app.last_action, "off again")
        assert "fault" not in source.resources_[("HTTPRoute", "api")]["spec"]["rules"][1]

    run_app(scenario, source)


def test_deny_then_allow_a_source() -> None:
    source = FakeSource()

    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("3", "down", "down", "x")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the prompt")
        await pilot.press("enter")  # the suggestion: web, the policy's source
        await confirm(pilot, app)
        await wait_for(pilot, lambda: app.last_action, "the outcome")
        assert app.last_action == "✔ deny web on api-callers: applied, revision 8"
        rules = source.resources_[("AccessPolicy", "api-callers")]["spec"]["rules"]
        assert rules[0] == {"sources": ["web"], "action": "deny"}
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), "the prompt")
        await pilot.press("enter")  # the suggestion: the denied source
        await confirm(pilot, app)
        await wait_for(pilot, lambda: "allow web" in app.last_action, "allowed again")
        rules = source.resources_[("AccessPolicy", "api-callers")]["spec"]["rules"]
        assert rules[0]["action"] == "allow" and len(rules) == 1

    run_app(scenario, source)


def test_drain_an_instance() -> None:
    source = FakeSource()

    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("4", "down", "d")
        await confirm(pilot, app)
        await wait_for(pilot, lambda: app.last_action, "the outcome")
        assert source.drained == ["api-v2-sidecar"]
        assert app.last_action.startswith("✔ drain of api-v2-sidecar requested")
        await pilot.press("6")

        def kinds() -> list[str]:
            return [r[1] for r in table_rows(app, "events-table")]

        await wait_for(pilot, lambda: "sidecar.drain_requested" in kinds(), "controld's event")
        assert "action" in kinds()

    run_app(scenario, source)


def test_rotate_the_ca() -> None:
    source = FakeSource()

    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("R")
        await confirm(pilot, app)
        await wait_for(pilot, lambda: app.last_action, "the outcome")
        assert app.last_action == "✔ CA rotation stage: now staged"
        await pilot.press("R")
        await confirm(pilot, app)
        await wait_for(pilot, lambda: "activate" in app.last_action, "the second step")
        assert source.rotations == ["stage", "activate"]

    run_app(scenario, source)


def test_a_failed_action_is_shown_as_failed() -> None:
    source = FakeSource()

    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("4", "d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        source.unreachable = True
        await pilot.press("y")
        await wait_for(pilot, lambda: app.last_action, "the outcome")
        assert app.last_action.startswith("✘ drain api-v1-sidecar: cannot reach controld")

    run_app(scenario, source)


def test_quit() -> None:
    source = FakeSource()

    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await pilot.press("q")
        await pilot.pause(0.1)

    run_app(scenario, source)
    assert source.calls[-1] == "aclose"


class Forbidden(FakeSource):
    async def proxies(self) -> list[ProxyState]:
        raise SourceRefused(401, "unauthenticated (the dashboard needs an admin token)")


def test_an_error_answer_is_shown() -> None:
    async def scenario(pilot: Pilot[None], app: DashboardApp) -> None:
        await wait_for(pilot, lambda: status_text(app).startswith("ERROR"), "the error")
        assert "401: unauthenticated" in status_text(app)

    run_app(scenario, Forbidden(), first_refresh=False)
