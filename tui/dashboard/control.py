"""The control actions: read fresh, edit (pure, :mod:`tui.dashboard.edits`), confirm, apply.

Each flow talks to the user through :class:`Ui` (the app's modal screens; a script in tests)
and to controld through the :class:`~tui.dashboard.source.DashboardSource`, and returns an
:class:`Outcome` the app shows in its status line and in the Events view. controld records
the audit entry of every change it applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from meshcore.api.ca import NEXT_STEP
from meshcore.api.resources import ApplyAnswer
from tui.dashboard import edits
from tui.dashboard.source import DashboardSource, SourceError

__all__ = ["Outcome", "Ui", "access", "drain", "rotate_ca", "shift_split", "toggle_fault"]


class Ui(Protocol):
    """How a flow asks the user."""

    async def confirm(self, title: str, question: str) -> bool:
        """Yes or no."""
        ...

    async def prompt(self, title: str, explanation: str, value: str) -> str | None:
        """A line of text, or None when cancelled."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an action did: ``ok`` False for a refusal or failure; ``None`` ok: cancelled."""

    ok: bool | None
    message: str


CANCELLED = Outcome(None, "cancelled")


def _parse_route_key(key: str | None) -> tuple[str, int] | None:
    if key is None or not key.startswith("route:"):
        return None
    _, name, index = key.split(":", 2)
    return name, int(index)


def _applied(answer: ApplyAnswer, what: str) -> Outcome:
    if not answer.changes:
        return Outcome(True, f"{what}: no change (revision {answer.revision})")
    return Outcome(True, f"{what}: applied, revision {answer.revision}")


def _pick_split(resources: Sequence[Mapping[str, Any]], key: str | None) -> tuple[str, int] | None:
    """The selected rule if it splits; else the only split rule of the mesh, if one."""
    rules = edits.split_rules(resources)
    picked = _parse_route_key(key)
    if picked is not None:
        for rule in rules:
            if (rule.route, rule.index) == picked and rule.is_split:
                return picked
    splits = [r for r in rules if r.is_split]
    if len(splits) == 1:
        return splits[0].route, splits[0].index
    return None


async def shift_split(
    ui: Ui, source: DashboardSource, resources: Sequence[Mapping[str, Any]], key: str | None
) -> Outcome:
    """Ask for new weights of a split rule and apply them."""
    picked = _pick_split(resources, key)
    if picked is None:
        return Outcome(False, "select a split (a route rule with several backends)")
    name, index = picked
    try:
        current = await source.get_resource("HTTPRoute", name)
        rule = next(r for r in edits.split_rules([current]) if r.index == index)
        labels = " ".join(label for label, _ in rule.backends)
        old = edits.weights_text([w for _, w in rule.backends])
        text = await ui.prompt(
            f"Shift split {name}/{rule.label}",
            f"weights for {labels} (space separated), now {old}",
            old,
        )
        if text is None:
            return CANCELLED
        try:
            weights = [int(w) for w in text.replace(",", " ").split()]
            doc = edits.shift_split(current, index, weights)
        except ValueError as exc:
            return Outcome(False, f"weights {text!r}: {exc}")
        change = ", ".join(
            f"{label} {w0}→{w1}" for (label, w0), w1 in zip(rule.backends, weights, strict=True)
        )
        if not await ui.confirm("Apply?", f"HTTPRoute/{name} rule {rule.label}: {change}"):
            return CANCELLED
        return _applied(await source.apply(doc), f"split {name}/{rule.label} {change}")
    except (SourceError, edits.EditError, StopIteration) as exc:
        return Outcome(False, f"shift split: {exc}")


async def toggle_fault(ui: Ui, source: DashboardSource, key: str | None) -> Outcome:
    """Turn the selected rule's fault injection off, or on (abort 10 % with 503)."""
    picked = _parse_route_key(key)
    if picked is None:
        return Outcome(False, "select a route rule (Policy view)")
    name, index = picked
    try:
        current = await source.get_resource("HTTPRoute", name)
        doc, on = edits.toggle_fault(current, index)
        label = edits.rule_label(doc["spec"]["rules"][index], index)
        what = f"inject {edits.DEFAULT_FAULT}" if on else "remove the fault injection"
        if not await ui.confirm("Apply?", f"HTTPRoute/{name} rule {label}: {what}"):
            return CANCELLED
        state = "on" if on else "off"
        return _applied(await source.apply(doc), f"fault {state} on {name}/{label}")
    except (SourceError, edits.EditError) as exc:
        return Outcome(False, f"fault: {exc}")


async def access(ui: Ui, source: DashboardSource, key: str | None, *, allow: bool) -> Outcome:
    """Allow or deny a source (asked for) on the selected access policy."""
    if key is None or not key.startswith("access:"):
        return Outcome(False, "select an access policy (Policy view)")
    name = key.split(":", 1)[1]
    verb = "allow" if allow else "deny"
    try:
        current = await source.get_resource("AccessPolicy", name)
        denied = edits.denied_sources(current)
        guess = denied[0] if allow and denied else ""
        if not guess:
            rules = (current.get("spec") or {}).get("rules") or ()
            guess = next((s for r in rules for s in r.get("sources") or () if s != "*"), "")
        source_name = await ui.prompt(
            f"{verb.capitalize()} a source on AccessPolicy/{name}",
            "service name or spiffe:// ID",
            guess,
        )
        if not source_name:
            return CANCELLED
        source_name = source_name.strip()
        doc = (
            edits.allow_source(current, source_name)
            if allow
            else edits.deny_source(current, source_name)
        )
        destination = (current.get("spec") or {}).get("destination")
        if not await ui.confirm(
            "Apply?", f"AccessPolicy/{name}: {verb} {source_name} → {destination}"
        ):
            return CANCELLED
        return _applied(await source.apply(doc), f"{verb} {source_name} on {name}")
    except (SourceError, edits.EditError) as exc:
        return Outcome(False, f"{verb}: {exc}")


async def drain(ui: Ui, source: DashboardSource, proxy_id: str) -> Outcome:
    """Ask a sidecar to drain: it leaves the registry, finishes in-flight requests, exits."""
    question = f"drain {proxy_id}? It stops taking traffic, finishes what it has and exits."
    if not await ui.confirm("Drain?", question):
        return CANCELLED
    try:
        await source.drain(proxy_id)
    except SourceError as exc:
        return Outcome(False, f"drain {proxy_id}: {exc}")
    return Outcome(True, f"drain of {proxy_id} requested (it acts on its next poll)")


async def rotate_ca(ui: Ui, source: DashboardSource) -> Outcome:
    """The next CA root rotation step (stage, activate or retire), after confirmation."""
    try:
        phase = (await source.ca_status()).phase
        step = NEXT_STEP.get(phase)
        if step is None:
            return Outcome(False, f"CA rotation: unknown phase {phase!r}")
        question = f"CA rotation is {phase}: run step {step!r}?"
        if not await ui.confirm("Rotate certificates?", question):
            return CANCELLED
        answer = await source.ca_rotate(step)
    except SourceError as exc:
        return Outcome(False, f"CA rotation: {exc}")
    return Outcome(True, f"CA rotation {step}: now {answer.phase}")
