"""Load YAML or JSON files into models, with errors that name the file, field path and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from meshcore.errors import ConfigError
from meshcore.model.yamlload import load_yaml

M = TypeVar("M", bound=BaseModel)


def field_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as ``listeners[0].address.port``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def validation_errors(exc: ValidationError) -> list[tuple[tuple[int | str, ...], str]]:
    """``(location, reason)`` per problem, with pydantic's ``Value error, `` prefix dropped."""
    out = []
    for err in exc.errors(include_url=False):
        # Model-level validators report no field; their message carries the detail.
        loc = tuple(p for p in err["loc"] if p not in ("__root__",))
        out.append((loc, str(err["msg"]).removeprefix("Value error, ")))
    return out


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line per problem: ``source: field.path: reason``."""
    return "\n".join(f"{source}: {field_path(loc)}: {msg}" for loc, msg in validation_errors(exc))


def parse_document(source: str, text: str) -> Any:
    """Parse one YAML (or JSON) document within the strict loader's bounds.

    Syntax errors, duplicate keys, nesting too deep, alias bombs and oversized text raise
    :class:`~meshcore.model.yamlload.YamlError` (a :class:`ConfigError`) naming line and column.
    """
    return load_yaml(text, source)


def read_text(path: Path) -> str:
    """Read a UTF-8 file; errors become :class:`ConfigError` naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from exc


def model_from_data(model: type[M], data: Any, *, source: str) -> M:
    """Validate already-parsed data, translating errors to :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from exc


def load_model(model: type[M], path: Path) -> M:
    """Read ``path`` and validate it as ``model``."""
    text = read_text(path)
    return model_from_data(model, parse_document(str(path), text), source=str(path))
