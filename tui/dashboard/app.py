"""``meshctl dashboard``: the Textual app (attributes down to the views, messages up).

One worker polls controld (:func:`~tui.dashboard.state.fetch_state`) and hands each new
:class:`~tui.dashboard.state.MeshState` down to the views; when controld can't be reached
the last state stays, marked STALE, and the worker retries with backoff. A second worker
streams controld's control-plane events (the ``GET /v1/events`` long-poll) into the Events
view. Control actions run in their own worker (:mod:`tui.dashboard.control`), the tap in
another.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterable
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static, TabbedContent, TabPane

from meshcore.api.events import MAX_EVENTS_LIMIT, Severity
from meshcore.api.telemetry import TapFilter, TapRequest
from tui.dashboard import control, fmt
from tui.dashboard.screens import ConfirmScreen, HelpScreen, PromptScreen
from tui.dashboard.source import DashboardSource, SourceError, SourceRefused, SourceUnreachable
from tui.dashboard.state import MeshState, PlaneEvent, fetch_state, plane_event
from tui.dashboard.views.events import EventsView
from tui.dashboard.views.instances import InstancesView
from tui.dashboard.views.policy import PolicyView
from tui.dashboard.views.tap import TapView
from tui.dashboard.views.topology import TopologyView
from tui.dashboard.views.traffic import TrafficView

__all__ = ["TABS", "DashboardApp"]

#: Tab ids in key order (1..6).
TABS = ("traffic", "topology", "policy", "instances", "tap", "events")
#: Longest wait between reconnection attempts.
MAX_BACKOFF_S = 10.0
#: Events kept in the Events view.
MAX_EVENTS = 200
#: Longest wait of one events long-poll.
EVENTS_WAIT_S = 10.0


def _tearing_down() -> contextlib.suppress:
    """A worker may hand data to a view the app is removing while it quits: drop it."""
    return contextlib.suppress(NoMatches, IndexError)


class DashboardApp(App[None]):
    """The operator's live view of the mesh, with control actions."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "meshd dashboard"
    BINDINGS: ClassVar = [
        *(
            Binding(str(i + 1), f"show_tab('{tab}')", tab.capitalize(), show=False)
            for i, tab in enumerate(TABS)
        ),
        Binding("question_mark", "help", "Help"),
        Binding("r", "refresh", "Refresh"),
        Binding("R", "rotate", "Rotate CA", show=False),
        Binding("q", "quit", "Quit"),
    ]

    state: reactive[MeshState | None] = reactive(None, always_update=True)
    stale: reactive[bool] = reactive(False)

    def __init__(
        self,
        source: DashboardSource,
        *,
        server: str = "controld",
        refresh_s: float = 1.0,
        window_s: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.source = source
        self.server = server
        self.refresh_s = refresh_s
        self.window_s = window_s
        self.clock = clock
        self.drill: str | None = None
        self.events: list[PlaneEvent] = []
        self.last_error: str | None = None
        self.last_action: str = ""
        self.retry_in: float = 0.0
        #: The last refresh failed with an error answer (not an outage): why.
        self.refresh_error: str | None = None
        self.tap_id: str | None = None
        self._wake = asyncio.Event()
        # The views, kept: a modal screen on top hides them from app-level queries.
        self.traffic = TrafficView(id="traffic-view")
        self.topology = TopologyView()
        self.policy = PolicyView()
        self.instances = InstancesView()
        self.tap = TapView(id="tap-view")
        self.events_view = EventsView()

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("", id="status")
        with TabbedContent(initial="traffic"):
            with TabPane("1 Traffic", id="traffic"):
                yield self.traffic
            with TabPane("2 Topology", id="topology"):
                yield self.topology
            with TabPane("3 Policy", id="policy"):
                yield self.policy
            with TabPane("4 Instances", id="instances"):
                yield self.instances
            with TabPane("5 Tap", id="tap"):
                yield self.tap
            with TabPane("6 Events", id="events"):
                yield self.events_view
        yield Footer()

    def on_mount(self) -> None:
        self.show_status()
        self.poll()
        self.stream_events()
        # The terminal went away (window closed, SSH dropped): quit rather than linger.
        # Only the main thread may set signal handlers (tests run the app in others).
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.exit)

    async def on_unmount(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self.source.aclose()

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for i, tab in enumerate(TABS):
            yield SystemCommand(
                f"Show {tab}",
                f"switch to the {tab} view ({i + 1})",
                lambda t=tab: self.action_show_tab(t),
            )
        yield SystemCommand("Refresh", "read controld now (r)", self.action_refresh)
        yield SystemCommand("Rotate CA", "the next CA root rotation step (R)", self.action_rotate)
        yield SystemCommand("Help", "the keys (?)", self.action_help)

    # -- status line -----------------------------------------------------------------------------

    def show_status(self) -> None:
        """The first line: where the data comes from, how fresh, the last action's result."""
        state = self.state
        if state is None:
            text = f"controld {self.server}: connecting…"
        else:
            text = f"controld {self.server}  data at {fmt.clock(state.fetched_at)}"
        if self.stale:
            text = (
                f"STALE  {text}  unreachable, retrying in {self.retry_in:.0f}s: {self.last_error}"
            )
        elif self.refresh_error:
            text = f"ERROR  {text}  controld answered {self.refresh_error}"
        if self.last_action:
            text += f"  │ {self.last_action}"
        with _tearing_down():
            status = self.screen_stack[0].query_one("#status", Static)
            status.update(text)
            status.set_class(self.stale or bool(self.refresh_error), "stale")

    def watch_stale(self) -> None:
        self.show_status()

    def watch_state(self, state: MeshState | None) -> None:
        with _tearing_down():
            for view in (
                self.traffic,
                self.topology,
                self.policy,
                self.instances,
                self.events_view,
            ):
                view.state = state
        self.show_status()

    # -- polling ---------------------------------------------------------------------------------

    @work(exclusive=True, group="poll")
    async def poll(self) -> None:
        """Refresh every ``refresh_s`` (or when woken); back off while controld is away."""
        backoff = 0.5
        while True:
            try:
                new = await fetch_state(
                    self.source, now=self.clock(), drill=self.drill, window_s=self.window_s
                )
            except SourceUnreachable as exc:
                self.last_error = str(exc)
                self.retry_in = backoff
                self.stale = True
                self.show_status()
                delay, backoff = backoff, min(MAX_BACKOFF_S, backoff * 2)
            except SourceError as exc:
                # controld answered, with an error (a bad token, ...): say it, try again later.
                self.last_error = str(exc)
                self.refresh_error = str(exc)
                self.show_status()
                delay = self.refresh_s * 5
            else:
                backoff = 0.5
                self.refresh_error = None
                self.stale = False
                self.state = new
                delay = self.refresh_s
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    @work(exclusive=True, group="events")
    async def stream_events(self) -> None:
        """Follow controld's control-plane events: the held ones first (pages without
        waiting), then one long-poll after another; retry while controld is away."""
        after = 0
        backoff = 0.5
        caught_up = False
        while True:
            try:
                wait_s = EVENTS_WAIT_S if caught_up else 0.0
                answer = await self.source.events(after, wait_s, MAX_EVENTS_LIMIT)
            except SourceUnreachable:
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            except SourceRefused as exc:
                # An older controld (404) or a refused token: say so, look again later.
                with _tearing_down():
                    self.events_view.events_note = f"controld's events unavailable: {exc}"
                await asyncio.sleep(MAX_BACKOFF_S)
                continue
            backoff = 0.5
            note = ""
            if answer.reset:
                note = "controld restarted: its events start again"
            elif answer.missed and after:
                note = f"{answer.missed} events dropped by controld before they were read"
            with _tearing_down():
                self.events_view.events_note = note
            self.add_events(plane_event(e) for e in answer.events)
            after = answer.next
            caught_up = len(answer.events) < MAX_EVENTS_LIMIT

    def add_events(self, events: Iterable[PlaneEvent]) -> None:
        """Append events for the Events view (attribute down)."""
        added = list(events)
        if not added:
            return
        self.events = (self.events + added)[-MAX_EVENTS:]
        with _tearing_down():
            self.events_view.events = tuple(self.events)

    def action_refresh(self) -> None:
        self._wake.set()

    # -- navigation ------------------------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self._focus_pane(self.query_one(f"#{tab}", TabPane))

    @on(TabbedContent.TabActivated)
    def _focus_tab(self, event: TabbedContent.TabActivated) -> None:
        self._focus_pane(event.pane)

    def _focus_pane(self, pane: TabPane) -> None:
        """The keys go to the shown view: its first table (the Tap view: its filter)."""
        if pane.id == "tap":
            self.tap.query_one(Input).focus()
            return
        tables = pane.query(DataTable)
        if tables:
            tables.first().focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    @on(TrafficView.Drill)
    def _drill(self, message: TrafficView.Drill) -> None:
        self.drill = message.service
        self._wake.set()

    # -- control ---------------------------------------------------------------------------------

    async def confirm(self, title: str, question: str) -> bool:
        """The :class:`~tui.dashboard.control.Ui` of the flows: a confirmation dialog."""
        answer: bool = await self.push_screen_wait(ConfirmScreen(title, question))
        return answer

    async def prompt(self, title: str, explanation: str, value: str) -> str | None:
        """A one-line prompt."""
        answer: str | None = await self.push_screen_wait(PromptScreen(title, explanation, value))
        return answer

    def finish(self, outcome: control.Outcome) -> None:
        """Show an action's outcome: status line, notification, Events view; refresh."""
        if outcome.ok is None:
            self.notify("cancelled", timeout=2)
            return
        self.last_action = ("✔ " if outcome.ok else "✘ ") + outcome.message
        self.notify(
            outcome.message,
            title="done" if outcome.ok else "failed",
            severity="information" if outcome.ok else "error",
        )
        kind = "action" if outcome.ok else "failed"
        severity: Severity = "info" if outcome.ok else "error"
        self.add_events([PlaneEvent(self.clock(), kind, "dashboard", outcome.message, severity)])
        self.show_status()
        self._wake.set()

    @work(exclusive=True, group="action")
    async def run_edit(self, action: str, key: str | None) -> None:
        """A Policy edit: ``weights``, ``fault``, ``allow`` or ``deny``."""
        resources = self.state.resources if self.state else ()
        if action == "weights":
            outcome = await control.shift_split(self, self.source, resources, key)
        elif action == "fault":
            outcome = await control.toggle_fault(self, self.source, key)
        else:
            outcome = await control.access(self, self.source, key, allow=action == "allow")
        self.finish(outcome)

    @on(PolicyView.Edit)
    def _edit(self, message: PolicyView.Edit) -> None:
        self.run_edit(message.action, message.key)

    @work(exclusive=True, group="action")
    async def run_drain(self, proxy_id: str) -> None:
        self.finish(await control.drain(self, self.source, proxy_id))

    @on(InstancesView.DrainRequested)
    def _drain(self, message: InstancesView.DrainRequested) -> None:
        self.run_drain(message.proxy_id)

    @work(exclusive=True, group="action")
    async def action_rotate(self) -> None:
        self.finish(await control.rotate_ca(self, self.source))

    # -- tap -------------------------------------------------------------------------------------

    @on(TapView.Toggle)
    def _tap(self, message: TapView.Toggle) -> None:
        if message.filter is None:
            self.stop_tap()
        else:
            self.run_tap(message.filter)

    @work(exclusive=True, group="tap")
    async def run_tap(self, tap_filter: TapFilter) -> None:
        """Start a tap and stream its events into the Tap view until it ends or is stopped."""
        view = self.tap
        try:
            created = await self.source.start_tap(TapRequest(filter=tap_filter))
        except SourceError as exc:
            self.notify(f"tap: {exc}", severity="error")
            return
        self.tap_id = created.id
        view.set_running(True, f"tap {created.id}")
        after = 0
        try:
            while True:
                try:
                    answer = await self.source.tap_events(created.id, after, 5.0)
                except SourceUnreachable:
                    await asyncio.sleep(1.0)
                    continue
                with _tearing_down():
                    view.add_events(answer.events)
                after = answer.next
                if answer.done:
                    break
                if not answer.events:
                    await asyncio.sleep(0.2)
        except SourceError as exc:
            self.notify(f"tap: {exc}", severity="error")
        finally:
            self.tap_id = None
            with _tearing_down():
                view.set_running(False, "ended")

    def stop_tap(self) -> None:
        """Stop the running tap (its worker, then the tap in controld)."""
        tap_id = self.tap_id
        self.workers.cancel_group(self, "tap")
        self.tap.set_running(False, "stopped")
        if tap_id is not None:
            self.delete_tap(tap_id)

    @work(group="tap-delete")
    async def delete_tap(self, tap_id: str) -> None:
        with contextlib.suppress(SourceError):  # else it expires on its own
            await self.source.stop_tap(tap_id)

    async def action_quit(self) -> None:
        tap_id = self.tap_id
        if tap_id is not None:
            with contextlib.suppress(SourceError, TimeoutError):  # else it expires by itself
                await asyncio.wait_for(self.source.stop_tap(tap_id), timeout=2.0)
        self.exit()
