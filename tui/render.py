"""Output formats of ``meshctl``: plain text tables, YAML and JSON, and resource manifests."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel

__all__ = [
    "age",
    "json_value",
    "manifest",
    "manifest_yaml",
    "table",
    "to_json",
    "to_yaml",
    "unified_diff",
]

#: The keys of a resource that ``meshctl get -o yaml`` prints (re-appliable as is).
MANIFEST_KEYS = ("kind", "metadata", "spec")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns separated by three spaces (no trailing blanks), like kubectl."""
    cells = [[str(h) for h in headers]]
    cells += [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        line = "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        lines.append(line.rstrip())
    return "\n".join(lines)


class _Dumper(yaml.SafeDumper):
    """Block-style YAML; multi-line strings as ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def json_value(value: Any) -> Any:
    """``value`` with the API's wire models (:mod:`meshcore.api`) replaced by their JSON form,
    as controld sent them: the fields it sent, in the model's order (the order it sends)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, Mapping):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


def to_yaml(value: Any) -> str:
    """One YAML document, keys in their given order, ending with a newline (wire models as
    :func:`json_value`)."""
    text: str = yaml.dump(
        json_value(value),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )
    return text


def to_yaml_documents(values: Iterable[Any]) -> str:
    """Several YAML documents separated by ``---`` lines (empty string for none)."""
    return "---\n".join(to_yaml(v) for v in values)


def to_json(value: Any) -> str:
    """Indented JSON (2 spaces), keys in their given order (wire models as :func:`json_value`)."""
    return json.dumps(json_value(value), indent=2, ensure_ascii=False)


def manifest(resource: Mapping[str, Any]) -> dict[str, Any]:
    """``kind``, ``metadata`` and ``spec`` of a resource as controld returns it.

    Anything else (``apiVersion``, controld's ``meta`` with revision/author/time) is dropped,
    so the result can be applied again.
    """
    return {key: resource[key] for key in MANIFEST_KEYS if key in resource}


def manifest_yaml(resources: Iterable[Mapping[str, Any]]) -> str:
    """Re-appliable multi-document YAML of ``resources``."""
    return to_yaml_documents(manifest(r) for r in resources)


def unified_diff(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    before_label: str,
    after_label: str,
) -> str:
    """Unified diff of the YAML of two resources (``None``: absent); empty when equal."""
    old = to_yaml(dict(before)).splitlines(keepends=True) if before is not None else []
    new = to_yaml(dict(after)).splitlines(keepends=True) if after is not None else []
    return "".join(difflib.unified_diff(old, new, fromfile=before_label, tofile=after_label))


def age(seconds: float | None) -> str:
    """A short age like ``4s``, ``3m12s``, ``2h5m``, ``3d4h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"
