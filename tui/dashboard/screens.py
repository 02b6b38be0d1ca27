"""Modal screens: confirmation, a one-line prompt, and the help screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

__all__ = ["HELP_TEXT", "ConfirmScreen", "HelpScreen", "PromptScreen"]

HELP_TEXT = """\
meshctl dashboard: keys

  1..6       views: Traffic Topology Policy Instances Tap Events
  tab        next widget         ctrl+p  command palette
  r          refresh now         ?       this help
  q          quit

Traffic      enter: drill (service > routes > endpoints)
             esc: up   s: sort (rps, success, p99, name)
Policy       w: shift the weights of the selected split
             f: fault injection on/off on the selected rule
             a / x: allow / deny a source (access policy row)
Instances    d: drain the selected sidecar
Anywhere     R: rotate the CA (stage, activate, retire)
Tap          filter like destination=api status=503, enter: start/stop

Every change asks first, goes through controld's API with
your token, shows its result in the status line and in
Events, and is in controld's audit log. When controld is
unreachable the last data stays, marked STALE, while the
dashboard reconnects (backoff up to 10 s).
"""


class ConfirmScreen(ModalScreen[bool]):
    """Yes (``y``/enter) or no (``n``/escape) to ``question``."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, question: str) -> None:
        super().__init__()
        self._title = title
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._title, classes="dialog-title")
            yield Static(self._question, id="question")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes (y)", id="yes", variant="warning")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PromptScreen(ModalScreen[str | None]):
    """One line of text (enter), or None (escape)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, explanation: str, value: str = "") -> None:
        super().__init__()
        self._title = title
        self._explanation = explanation
        self._value = value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._title, classes="dialog-title")
            yield Static(self._explanation)
            yield Input(value=self._value, id="prompt")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """The keys (``?``, escape or ``q`` closes it)."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Static(HELP_TEXT, id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
