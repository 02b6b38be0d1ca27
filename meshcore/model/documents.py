"""Load policy resources from multi-document YAML, with errors that name each document.

Every problem in every document is reported at once, one line each::

    policy.yaml: document 2 (HTTPRoute/api-split): spec.rules.0.backends.0.weight: Input ...
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from meshcore.errors import ConfigError
from meshcore.model.loading import read_text, validation_errors
from meshcore.model.resources import KINDS, Resource, resource_key
from meshcore.model.yamlload import YamlError, load_yaml_all

_EXPECTED = ", ".join(KINDS)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one document of a source (a file, or a request body)."""

    source: str
    #: 1-based position of the document in its source (API callers may use their own index).
    document: int
    kind: str | None
    name: str | None
    #: Dotted field path (``spec.rules.0.weight``), ``(top level)``, or empty for YAML syntax.
    path: str
    message: str

    def __str__(self) -> str:
        parts = [self.source] if self.source else []
        where = f"document {self.document}"
        if self.kind is not None:
            where += f" ({self.kind}/{self.name})" if self.name is not None else f" ({self.kind})"
        parts.append(where)
        if self.path:
            parts.append(self.path)
        parts.append(self.message)
        return ": ".join(parts)

    def as_json(self) -> dict[str, Any]:
        """The problem as JSON data (API error bodies)."""
        return {
            "source": self.source,
            "document": self.document,
            "kind": self.kind,
            "name": self.name,
            "path": self.path,
            "message": self.message,
        }


class DocumentError(ConfigError):
    """One or more documents are invalid; ``problems`` lists them, ``str()`` one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def dotted_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as ``spec.rules.0.backends.0.weight``."""
    return ".".join(str(p) for p in loc) or "(top level)"


def _identity(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    kind = data.get("kind")
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return (
        kind if isinstance(kind, str) else None,
        name if isinstance(name, str) else None,
    )


def resource_from_data(data: Any, *, source: str = "", document: int = 1) -> Resource:
    """Validate one parsed document as a resource; raise :class:`DocumentError` if invalid."""
    if not isinstance(data, Mapping):
        raise DocumentError(
            [
                Problem(
                    source,
                    document,
                    None,
                    None,
                    "(top level)",
                    f"expected a mapping, got {type(data).__name__}",
                )
            ]
        )
    kind, name = _identity(data)
    if kind not in KINDS:
        message = (
            f"unknown kind {kind!r}; expected one of {_EXPECTED}"
            if "kind" in data
            else f"missing; expected one of {_EXPECTED}"
        )
        raise DocumentError([Problem(source, document, kind, name, "kind", message)])
    try:
        # Validating the kind's class directly keeps the kind out of the error paths.
        return KINDS[kind].model_validate(dict(data))
    except ValidationError as exc:
        raise DocumentError(
            [
                Problem(source, document, kind, name, dotted_path(loc), msg)
                for loc, msg in validation_errors(exc)
            ]
        ) from exc


def _documents(text: str, source: str) -> Iterator[tuple[int, Any]]:
    """``(1-based number, data)`` of each non-empty document; YAML errors as DocumentError."""
    number = 0
    stream = load_yaml_all(text, source)
    while True:
        try:
            data = next(stream)
        except StopIteration:
            return
        except YamlError as exc:
            message = "invalid YAML"
            if exc.line is not None:
                message += f" at line {exc.line}, column {exc.column}"
            raise DocumentError(
                [Problem(source, number + 1, None, None, "", f"{message}: {exc.problem}")]
            ) from exc
        number += 1
        if data is not None:  # empty documents (a trailing ``---``, comments only)
            yield number, data


def _parse(text: str, source: str) -> tuple[list[tuple[int, Resource]], list[Problem]]:
    found: list[tuple[int, Resource]] = []
    problems: list[Problem] = []
    try:
        for number, data in _documents(text, source):
            try:
                found.append((number, resource_from_data(data, source=source, document=number)))
            except DocumentError as exc:
                problems.extend(exc.problems)
    except DocumentError as exc:
        problems.extend(exc.problems)
    return found, problems


def _duplicates(
    found: Sequence[tuple[str, int, Resource]],
) -> list[Problem]:
    problems = []
    first: dict[tuple[str, str], tuple[str, int]] = {}
    for source, number, resource in found:
        key = resource_key(resource)
        if key in first:
            where, at = first[key]
            also = f"document {at}" if where == source else f"{where} document {at}"
            problems.append(
                Problem(source, number, key[0], key[1], "metadata.name", f"duplicate (also {also})")
            )
        else:
            first[key] = (source, number)
    return problems


def load_documents(text: str, source: str) -> list[Resource]:
    """Every resource in a multi-document YAML (or JSON) text, in order.

    Raises :class:`DocumentError` listing every problem: syntax, validation, and the same
    ``kind/name`` given twice.
    """
    found, problems = _parse(text, source)
    problems += _duplicates([(source, n, r) for n, r in found])
    if problems:
        raise DocumentError(problems)
    return [r for _, r in found]


def yaml_files(path: Path) -> list[Path]:
    """``path`` itself; for a directory its ``*.yaml``/``*.yml`` files (recursive, sorted)."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_paths(paths: Sequence[Path]) -> list[tuple[Path, Resource]]:
    """Resources of files and directories (see :func:`yaml_files`), with the file each came from.

    Problems of all files are reported together in one :class:`DocumentError`, including a
    ``kind/name`` defined in two files. An unreadable file raises :class:`ConfigError`.
    """
    found: list[tuple[Path, int, Resource]] = []
    problems: list[Problem] = []
    for path in paths:
        for file in yaml_files(path):
            parsed, bad = _parse(read_text(file), str(file))
            found += [(file, n, r) for n, r in parsed]
            problems += bad
    problems += _duplicates([(str(f), n, r) for f, n, r in found])
    if problems:
        raise DocumentError(problems)
    return [(f, r) for f, _, r in found]
