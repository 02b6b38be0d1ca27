"""The single-use join token file a sidecar enrolls with (deleted once spent)."""

from __future__ import annotations

from pathlib import Path

import structlog

from meshd.identity.errors import IdentityError

__all__ = ["forget_join_token", "has_join_token", "read_join_token"]

log = structlog.get_logger("meshd.identity")

_MAX_TOKEN = 4096


def has_join_token(path: Path | None) -> bool:
    """Whether a join token file is configured and present."""
    return path is not None and path.exists()


def read_join_token(path: Path | None) -> str:
    """The token in ``path``; :class:`IdentityError` when missing, unreadable or empty."""
    if path is None:
        raise IdentityError("no saved identity and no identity.join_token_file to enroll with")
    try:
        with path.open("rb") as f:
            token = f.read(_MAX_TOKEN).decode("utf-8", "replace").strip()
    except OSError as exc:
        raise IdentityError(f"join token {path}: {exc.strerror or exc}") from exc
    if not token:
        raise IdentityError(f"join token {path}: empty")
    return token


def forget_join_token(path: Path) -> None:
    """Delete the spent token (a failure is logged: the token is used up either way)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot delete the used join token", path=str(path), error=str(exc))
