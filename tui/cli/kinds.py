"""Resource kind names as operators type them: any case, plural, short aliases."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["KIND_ALIASES", "UnknownKind", "resolve_kind"]

#: Kind -> extra names accepted besides the kind itself and its plural (any case).
KIND_ALIASES: dict[str, tuple[str, ...]] = {
    "Mesh": ("meshes",),
    "ServiceDefaults": ("servicedefault", "defaults", "sd"),
    "HTTPRoute": ("route", "routes", "hr"),
    "ServiceResolver": ("resolver", "resolvers", "sr"),
    "AccessPolicy": ("accesspolicies", "policy", "policies", "ap"),
    "RateLimit": ("ratelimits", "limit", "limits", "rl"),
}


class UnknownKind(ValueError):
    """A kind name that matches no known kind; the message lists the known ones."""


def _plural(word: str) -> str:
    if word.endswith(("s", "sh", "ch", "x")):
        return word if word.endswith("s") and not word.endswith("ss") else word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _names(kind: str) -> set[str]:
    lower = kind.lower()
    return {lower, _plural(lower), *KIND_ALIASES.get(kind, ())}


def resolve_kind(text: str, kinds: Iterable[str] = KIND_ALIASES) -> str:
    """The kind ``text`` names, spelled as controld spells it (``routes`` -> ``HTTPRoute``).

    ``kinds`` are the kinds known (by default the ones meshctl was built with; controld's
    ``/v1/schema`` may know more). Raises :class:`UnknownKind`.
    """
    wanted = text.strip().lower()
    known = list(kinds)
    for kind in known:
        if wanted in _names(kind):
            return kind
    raise UnknownKind(f"unknown kind {text!r} (known: {', '.join(sorted(known))})")
