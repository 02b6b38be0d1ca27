"""Resource files on the operator's side: parse them, remember where each resource came from.

controld reports problems by the index of a resource in the request; :class:`Origin` (file and
1-based document number per index) turns that back into ``file: document N (Kind/name)``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshcore.api.errors import Problem
from meshcore.errors import ConfigError
from meshcore.model.yamlload import YamlError, load_yaml_all

__all__ = [
    "LocalResource",
    "Origin",
    "document_numbers",
    "load_local",
    "normalized",
    "problem_lines",
]

#: ``-f -`` reads standard input.
STDIN = "-"


@dataclass(frozen=True)
class Origin:
    """Where one resource of a request was read: file, 1-based document number, kind, name."""

    source: str
    document: int
    kind: str
    name: str

    def where(self) -> str:
        """``policy.yaml: document 2 (HTTPRoute/api-split)``."""
        return f"{self.source}: document {self.document} ({self.kind}/{self.name})"


@dataclass(frozen=True)
class LocalResource:
    """One parsed resource: its origin, its JSON for the API and its normalized manifest."""

    origin: Origin
    body: dict[str, Any]
    manifest: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        """``(kind, name)``."""
        return (self.origin.kind, self.origin.name)


def document_numbers(text: str) -> list[int]:
    """1-based numbers of the non-empty YAML documents of ``text`` (empty ones are skipped)."""
    try:
        docs = list(load_yaml_all(text, "-"))
    except YamlError:
        return []
    return [i for i, doc in enumerate(docs, start=1) if doc is not None]


def normalized(resource: Any) -> dict[str, Any]:
    """A resource model as a compact manifest: ``kind``, ``metadata``, ``spec``, defaults left out.

    Used on both sides of ``meshctl diff`` so that only meaningful differences show.
    """
    data: dict[str, Any] = resource.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return {
        "kind": resource.kind,
        "metadata": data.get("metadata", {"name": resource.metadata.name}),
        "spec": data.get("spec", {}),
    }


def load_local(sources: Sequence[str]) -> list[LocalResource]:
    """Parse the files and directories named (``-`` is standard input), in order.

    Raises :class:`ConfigError` naming file, document and field path for every problem
    (including the same ``Kind/name`` defined twice).
    """
    from meshcore.model.documents import load_documents, load_paths

    loaded: list[tuple[str, int, Any]] = []
    for group in _groups(sources):
        if group == [STDIN]:
            text = sys.stdin.read()
            numbers = document_numbers(text)
            for i, res in enumerate(load_documents(text, "<stdin>")):
                loaded.append(("<stdin>", _number(numbers, i), res))
            continue
        counts: dict[Path, int] = {}
        numbers_of: dict[Path, list[int]] = {}
        for path, res in load_paths([Path(p) for p in group]):
            if path not in numbers_of:
                numbers_of[path] = _numbers_of_file(path)
            i = counts.get(path, 0)
            counts[path] = i + 1
            loaded.append((str(path), _number(numbers_of[path], i), res))
    out: list[LocalResource] = []
    seen: dict[tuple[str, str], Origin] = {}
    dupes: list[str] = []
    for source, number, res in loaded:
        origin = Origin(source, number, str(res.kind), str(res.metadata.name))
        first = seen.setdefault((origin.kind, origin.name), origin)
        if first is not origin:
            dupes.append(f"{origin.where()}: defined again (first in {first.where()})")
        body = res.model_dump(mode="json", by_alias=True)
        out.append(LocalResource(origin, body, normalized(res)))
    if dupes:
        raise ConfigError("\n".join(dupes))
    return out


def _groups(sources: Sequence[str]) -> list[list[str]]:
    """Runs of file paths, with each ``-`` on its own, keeping the order given."""
    groups: list[list[str]] = []
    for source in sources:
        if source == STDIN:
            groups.append([STDIN])
        elif groups and groups[-1] != [STDIN]:
            groups[-1].append(source)
        else:
            groups.append([source])
    return groups


def _numbers_of_file(path: Path) -> list[int]:
    try:
        return document_numbers(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return []


def _number(numbers: list[int], index: int) -> int:
    """The document number of the ``index``-th resource of a file (a guess if unknown)."""
    return numbers[index] if index < len(numbers) else index + 1


def problem_lines(problems: Sequence[Problem], origins: Sequence[Origin]) -> list[str]:
    """controld's 422 problems as ``file: document N (Kind/name): path: message`` lines.

    A problem names the request index in ``document`` (0-based); cross-resource problems may
    name only ``kind``/``name``, which are looked up among ``origins``.
    """
    by_key = {(o.kind, o.name): o for o in origins}
    lines = []
    for problem in problems:
        kind = problem.kind
        name = problem.name
        path = problem.path or "(top level)"
        message = problem.message or "invalid"
        index = problem.document
        origin: Origin | None = None
        if isinstance(index, int) and 0 <= index < len(origins):
            origin = origins[index]
        elif kind is not None and name is not None:
            origin = by_key.get((kind, name))
        if origin is not None:
            shown = Origin(
                origin.source,
                origin.document,
                kind or origin.kind,
                name or origin.name,
            )
            lines.append(f"{shown.where()}: {path}: {message}")
        elif kind is not None or name is not None:
            lines.append(f"controld: {kind or '?'}/{name or '?'}: {path}: {message}")
        else:
            lines.append(f"controld: {path}: {message}")
    return lines
