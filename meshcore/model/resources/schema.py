"""JSON Schemas of the resource kinds (served by the API, used by editors)."""

from __future__ import annotations

from typing import Any

from meshcore.model.resources.kinds import KINDS


def json_schemas() -> dict[str, dict[str, Any]]:
    """Kind name -> JSON Schema of the whole resource (``apiVersion`` spelled as in YAML)."""
    return {
        kind: cls.model_json_schema(by_alias=True, mode="validation") for kind, cls in KINDS.items()
    }
