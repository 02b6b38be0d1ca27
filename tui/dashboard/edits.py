"""The dashboard's control actions as pure edits of policy resources (values in, values out).

Each function takes a resource as ``GET /v1/resources`` returns it and gives the document to
``PUT /v1/resources`` (``kind``, ``metadata``, ``spec``; the server's ``meta`` dropped), or
raises :class:`EditError` when the edit makes no sense. Nothing here talks to controld: the
app confirms, applies and shows the answer.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_FAULT",
    "EditError",
    "SplitRule",
    "access_policies_for",
    "allow_source",
    "denied_sources",
    "deny_source",
    "manifest",
    "rule_label",
    "shift_split",
    "split_rules",
    "toggle_fault",
    "weights_text",
]

#: The fault the toggle turns on: abort 10 % of the rule's requests with a 503.
DEFAULT_FAULT: Mapping[str, Any] = {"abort": {"percent": 10, "status": 503}}


class EditError(ValueError):
    """An edit that does not apply to the resource as it is."""


@dataclass(frozen=True, slots=True)
class SplitRule:
    """One rule of an ``HTTPRoute``: where it is and where it sends requests."""

    route: str
    service: str
    index: int
    #: The rule's name (``rule-<index>`` when it has none, as the compiler names it).
    label: str
    #: ``(backend label, weight)``; a backend label is its subset, else its service.
    backends: tuple[tuple[str, int], ...]
    fault: Mapping[str, Any] | None

    @property
    def is_split(self) -> bool:
        """More than one backend: there are weights to shift."""
        return len(self.backends) > 1


def manifest(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy holding only what ``PUT /v1/resources`` takes."""
    keys = ("apiVersion", "kind", "metadata", "spec")
    return {k: copy.deepcopy(resource[k]) for k in keys if k in resource}


def rule_label(rule: Mapping[str, Any], index: int) -> str:
    """The compiler's name of a rule: its ``name``, else ``rule-<index>``."""
    name = rule.get("name")
    return str(name) if name else f"rule-{index}"


def _backend_label(backend: Mapping[str, Any], service: str) -> str:
    subset = backend.get("subset")
    target = backend.get("service") or service
    if subset:
        return str(subset) if target == service else f"{target}/{subset}"
    return str(target)


def split_rules(resources: Sequence[Mapping[str, Any]]) -> list[SplitRule]:
    """Every rule of every ``HTTPRoute``, in route name then rule order."""
    found: list[SplitRule] = []
    for res in resources:
        if res.get("kind") != "HTTPRoute":
            continue
        spec = res.get("spec") or {}
        service = str(spec.get("service", "?"))
        name = str((res.get("metadata") or {}).get("name", "?"))
        for index, rule in enumerate(spec.get("rules") or ()):
            backends = tuple(
                (_backend_label(b, service), int(b.get("weight", 1)))
                for b in rule.get("backends") or ()
            )
            found.append(
                SplitRule(
                    name, service, index, rule_label(rule, index), backends, rule.get("fault")
                )
            )
    found.sort(key=lambda r: (r.route, r.index))
    return found


def weights_text(weights: Sequence[int]) -> str:
    """``90 10``: what the weights dialog shows and parses back."""
    return " ".join(str(w) for w in weights)


def _rule(resource: Mapping[str, Any], index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    if resource.get("kind") != "HTTPRoute":
        raise EditError(f"{resource.get('kind')} is not an HTTPRoute")
    doc = manifest(resource)
    rules = (doc.get("spec") or {}).get("rules") or []
    if not 0 <= index < len(rules):
        raise EditError(f"HTTPRoute has no rule {index}")
    return doc, rules[index]


def shift_split(resource: Mapping[str, Any], index: int, weights: Sequence[int]) -> dict[str, Any]:
    """Set the backend weights of rule ``index`` (one weight per backend, in order)."""
    doc, rule = _rule(resource, index)
    backends = rule.get("backends") or []
    if len(weights) != len(backends):
        raise EditError(f"rule has {len(backends)} backends, got {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise EditError("weights must be >= 0 and not all 0")
    for backend, weight in zip(backends, weights, strict=True):
        backend["weight"] = int(weight)
    return doc


def toggle_fault(
    resource: Mapping[str, Any], index: int, fault: Mapping[str, Any] = DEFAULT_FAULT
) -> tuple[dict[str, Any], bool]:
    """Remove rule ``index``'s fault, or set ``fault`` when it has none; (doc, now on)."""
    doc, rule = _rule(resource, index)
    if rule.get("fault"):
        del rule["fault"]
        return doc, False
    rule["fault"] = copy.deepcopy(dict(fault))
    return doc, True


def access_policies_for(
    resources: Sequence[Mapping[str, Any]], destination: str
) -> list[Mapping[str, Any]]:
    """The ``AccessPolicy`` resources of ``destination``, in name order (the order they apply)."""
    found = [
        r
        for r in resources
        if r.get("kind") == "AccessPolicy"
        and (r.get("spec") or {}).get("destination") == destination
    ]
    return sorted(found, key=lambda r: str((r.get("metadata") or {}).get("name", "")))


def _is_bare(rule: Mapping[str, Any], source: str, action: str) -> bool:
    """A rule that names only ``source``, with ``action`` and no further conditions: the kind
    of rule :func:`deny_source` and :func:`allow_source` add (and may remove)."""
    return (
        list(rule.get("sources") or ()) == [source]
        and rule.get("action") == action
        and not rule.get("permissions")
        and not rule.get("jwt")
    )


def denied_sources(policy: Mapping[str, Any]) -> list[str]:
    """Sources a bare deny rule of ``policy`` names (what "allow" can lift)."""
    rules = (policy.get("spec") or {}).get("rules") or ()
    return [r["sources"][0] for r in rules if r.get("action") == "deny" and len(r["sources"]) == 1]


def deny_source(policy: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Put a deny rule for ``source`` first: the first matching rule decides, so it wins."""
    if policy.get("kind") != "AccessPolicy":
        raise EditError(f"{policy.get('kind')} is not an AccessPolicy")
    doc = manifest(policy)
    rules: list[dict[str, Any]] = list(doc["spec"].get("rules") or [])
    if rules and _is_bare(rules[0], source, "deny"):
        raise EditError(f"{source} is already denied")
    doc["spec"]["rules"] = [{"sources": [source], "action": "deny"}, *rules]
    return doc


def allow_source(policy: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Lift the bare deny rules of ``source``; if no rule then allows it, add one that does.

    Undoes :func:`deny_source` exactly when the source was allowed before.
    """
    if policy.get("kind") != "AccessPolicy":
        raise EditError(f"{policy.get('kind')} is not an AccessPolicy")
    doc = manifest(policy)
    rules: list[dict[str, Any]] = list(doc["spec"].get("rules") or [])
    kept = [r for r in rules if not _is_bare(r, source, "deny")]
    allowed = any(
        r.get("action") in ("allow", "audit") and source in (r.get("sources") or ()) for r in kept
    )
    if not allowed:
        kept.append({"sources": [source], "action": "allow"})
    if kept == rules:
        raise EditError(f"{source} is already allowed")
    doc["spec"]["rules"] = kept
    return doc
