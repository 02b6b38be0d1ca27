"""The Policy view: routes and splits, access policies, rate limits, and each sidecar's
ACK/NACK state with the features it can't enforce."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive

from meshcore.api.proxies import ProxyState
from tui.dashboard import fmt
from tui.dashboard.edits import split_rules
from tui.dashboard.state import MeshState
from tui.dashboard.views.table import Cell, TitledTable

__all__ = ["PolicyView", "policy_rows", "sidecar_rows", "sidecar_state"]

POLICY_COLUMNS = ("KIND", "NAME", "FOR", "WHAT")
SIDECAR_COLUMNS = ("SIDECAR", "ACKED", "LATEST", "STATE", "CAN'T ENFORCE")
#: Longest state cell (a NACK's first line is cut): the next column stays on an 80-column screen.
MAX_STATE = 24


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _access_text(rule: Mapping[str, Any]) -> str:
    text = f"{rule.get('action', '?')} {','.join(rule.get('sources') or ())}"
    perms = rule.get("permissions") or ()
    if perms:
        text += " " + " ".join(_compact(p) for p in perms)
    return text


def policy_rows(resources: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Cell]]]:
    """Route rules (with their splits and faults), access policies, rate limits."""
    rows: list[tuple[str, list[Cell]]] = []
    for rule in split_rules(resources):
        what = " ".join(f"{label}={weight}" for label, weight in rule.backends) or "(service)"
        if rule.fault:
            what += f"  FAULT {_compact(rule.fault)}"
        kind = "split" if rule.is_split else "route"
        rows.append(
            (
                f"route:{rule.route}:{rule.index}",
                [kind, f"{rule.route}/{rule.label}", rule.service, what],
            )
        )
    for res in resources:
        name = str((res.get("metadata") or {}).get("name", "?"))
        spec = res.get("spec") or {}
        if res.get("kind") == "AccessPolicy":
            rules = spec.get("rules") or ()
            what = "; ".join(_access_text(r) for r in rules) or "(no rules)"
            rows.append((f"access:{name}", ["access", name, str(spec.get("destination")), what]))
        elif res.get("kind") == "RateLimit":
            what = f"{spec.get('requests_per_second')}/s burst {spec.get('burst')}"
            if spec.get("per_source"):
                what += " per source"
            if spec.get("match"):
                what += f" {_compact(spec['match'])}"
            rows.append(
                (f"ratelimit:{name}", ["ratelimit", name, str(spec.get("destination")), what])
            )
    return rows


def sidecar_state(proxy: ProxyState) -> Cell:
    """``synced``, ``pending`` or ``NACK vN: <error>`` (as ``meshctl status`` says)."""
    nack = proxy.nack
    latest = proxy.latest_version
    if nack is not None and (nack.version == latest or latest is None):
        lines = nack.error.strip().splitlines()
        text = f"NACK v{nack.version}: {lines[0] if lines else '?'}"
        if len(text) > MAX_STATE:
            text = text[: MAX_STATE - 1] + "…"
        return Text(text, style="bold red")
    if latest is None:
        return "pending"
    if proxy.acked_hash is not None and proxy.latest_hash is not None:
        synced = proxy.acked_hash == proxy.latest_hash
    else:
        synced = proxy.acked_version == latest
    return "synced" if synced else Text("pending", style="yellow")


def sidecar_rows(proxies: Sequence[ProxyState]) -> list[tuple[str, list[Cell]]]:
    """One row per sidecar: snapshot ACKed, latest, state, unsupported features in use."""
    rows: list[tuple[str, list[Cell]]] = []
    for p in sorted(proxies, key=lambda p: (p.service, p.proxy_id)):
        missing = ", ".join(f"{u.feature} ({u.path})" for u in p.unsupported)
        rows.append(
            (
                p.proxy_id,
                [
                    f"{p.proxy_id} ({p.service})",
                    "-" if p.acked_version is None else str(p.acked_version),
                    "-" if p.latest_version is None else str(p.latest_version),
                    sidecar_state(p),
                    Text(missing, style="bold red") if missing else "-",
                ],
            )
        )
    return rows


class PolicyView(Vertical):
    """``w`` shifts a split, ``f`` toggles a fault, ``a``/``x`` allow/deny a source."""

    BINDINGS = [
        Binding("w", "weights", "Shift split", show=True),
        Binding("f", "fault", "Toggle fault", show=True),
        Binding("a", "access(True)", "Allow source", show=True),
        Binding("x", "access(False)", "Deny source", show=True),
    ]

    class Edit(Message):
        """The user asked for ``action`` (``weights``, ``fault``, ``allow``, ``deny``) on the
        policy row ``key`` (``route:<name>:<index>`` or ``access:<name>``; None: none
        selected)."""

        def __init__(self, action: str, key: str | None) -> None:
            super().__init__()
            self.action = action
            self.key = key

    state: reactive[MeshState | None] = reactive(None, always_update=True)

    def compose(self) -> ComposeResult:
        yield TitledTable("Policy", POLICY_COLUMNS, id="policy-table")
        yield TitledTable("Sidecars", SIDECAR_COLUMNS, id="sidecar-table")

    def on_mount(self) -> None:
        self.watch_state()

    def watch_state(self) -> None:
        if not self.is_mounted:
            return
        state = self.state
        policy = self.query_one("#policy-table", TitledTable)
        sidecars = self.query_one("#sidecar-table", TitledTable)
        policy.set_title("Policy  w: shift split  f: fault on/off  a/x: allow/deny a source")
        if state is None:
            return
        policy.set_rows(policy_rows(state.resources))
        nacks = sum(1 for p in state.proxies if str(sidecar_state(p)).startswith("NACK"))
        title = f"Sidecars: {len(state.proxies)}, {nacks} NACKing"
        ca = None if state.ca is None else state.ca.phase
        if ca:
            title += f"   CA rotation: {ca}"
        title += f"   (at {fmt.clock(state.fetched_at)})"
        sidecars.set_title(title)
        sidecars.set_rows(sidecar_rows(state.proxies))

    def _selected(self) -> str | None:
        return self.query_one("#policy-table", TitledTable).selected

    def action_weights(self) -> None:
        self.post_message(self.Edit("weights", self._selected()))

    def action_fault(self) -> None:
        self.post_message(self.Edit("fault", self._selected()))

    def action_access(self, allow: bool) -> None:
        self.post_message(self.Edit("allow" if allow else "deny", self._selected()))
