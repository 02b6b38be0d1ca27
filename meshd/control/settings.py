"""The controld source of a bootstrap, resolved: paths made absolute, the token read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr, ValidationError

from meshcore.errors import ConfigError
from meshcore.model.bootstrap import Bootstrap
from meshcore.model.bootstrap import ControlSource as ControlSourceConfig
from meshcore.model.loading import format_validation_error

__all__ = ["ControlSettings", "control_settings", "resolve_token"]

#: Longest token file read (a sidecar token is ~100 bytes).
_MAX_TOKEN_FILE = 64 * 1024


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """What :class:`meshd.control.source.ControlSource` needs from the bootstrap."""

    config: ControlSourceConfig
    token: str | None
    cache_file: Path | None


def _relative(bootstrap_path: Path, path: Path) -> Path:
    return path if path.is_absolute() else bootstrap_path.parent / path


def resolve_token(
    token: SecretStr | None, token_file: Path | None, *, bootstrap_path: Path, where: str
) -> str | None:
    """The token given inline or read from ``token_file`` (relative to the bootstrap file);
    raises :class:`ConfigError` naming ``where`` when the file can't be read or the token is
    not one line of printable text."""
    value = token.get_secret_value() if token is not None else None
    if token_file is not None:
        path = _relative(bootstrap_path, token_file)
        try:
            with path.open("rb") as handle:
                raw = handle.read(_MAX_TOKEN_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"{where}.token_file: {path}: {exc.strerror or exc}") from exc
        if len(raw) > _MAX_TOKEN_FILE:
            raise ConfigError(f"{where}.token_file: {path}: too large for a token")
        value = raw.decode("utf-8", "replace").strip()
        if not value:
            raise ConfigError(f"{where}.token_file: {path}: empty")
    if value is not None and ("\r" in value or "\n" in value or not value.isprintable()):
        raise ConfigError(f"{where}: the token must be one line of printable text")
    return value


def control_settings(bootstrap: Bootstrap, bootstrap_path: Path) -> ControlSettings:
    """Resolve ``bootstrap.snapshot.controld``; raises :class:`ConfigError`.

    Relative ``token_file`` and ``cache_file`` are relative to the bootstrap file.
    """
    config = bootstrap.snapshot.controld
    if config is None:
        raise ConfigError(f"{bootstrap_path}: snapshot.controld is not set")
    where = f"{bootstrap_path}: snapshot.controld"
    enrolls = bootstrap.identity is not None and bootstrap.identity.static is None
    if config.url.startswith("https:") and not enrolls:
        raise ConfigError(
            f"{where}.url: https needs an enrolled identity (identity: with controld_url) to "
            "verify controld with"
        )
    token = resolve_token(
        config.token, config.token_file, bootstrap_path=bootstrap_path, where=where
    )
    try:
        bootstrap.descriptor()
    except ValidationError as exc:
        # e.g. a node id controld would refuse, or two upstreams on one port.
        raise ConfigError(format_validation_error(f"{bootstrap_path}", exc)) from exc
    cache = _relative(bootstrap_path, config.cache_file) if config.cache_file else None
    return ControlSettings(config, token, cache)
