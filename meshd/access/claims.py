"""Matching JWT claim conditions (:class:`~meshcore.model.policy.ClaimMatch`) of access rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshcore.model.policy import ClaimMatch

__all__ = ["claim_matches"]


def claim_matches(claims: Mapping[str, Any], match: ClaimMatch) -> bool:
    """Whether the claim ``match.name`` (dotted path) holds one of ``match.values``."""
    value: Any = claims
    for part in match.name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    wanted = match.values
    if isinstance(value, str):
        if match.name.rpartition(".")[2] == "scope":
            return any(word in wanted for word in value.split())
        return value in wanted
    if isinstance(value, list):
        return any(isinstance(one, str) and one in wanted for one in value)
    return False
