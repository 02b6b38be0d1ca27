"""Global options: server and token from flags, environment and token files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tui.cli.common import options_from


def _args(**fields: str | None) -> argparse.Namespace:
    values: dict[str, str | None] = {
        "server": None,
        "token": None,
        "token_file": None,
        "output": None,
    }
    values.update(fields)
    return argparse.Namespace(**values)


def test_defaults(tmp_path: Path) -> None:
    opts = options_from(_args(), env={}, token_files=[tmp_path / "missing"])
    assert opts.server == "http://127.0.0.1:8501"
    assert opts.token is None
    assert opts.output == "table"


def test_flags_beat_environment(tmp_path: Path) -> None:
    env = {"MESHCTL_SERVER": "http://127.0.0.1:9", "MESHCTL_TOKEN": "env-token"}
    opts = options_from(_args(server="127.0.0.1:7", token="flag"), env=env, token_files=[])
    assert opts.server == "http://127.0.0.1:7"
    assert opts.token == "flag"
    opts = options_from(_args(), env=env, token_files=[])
    assert opts.server == "http://127.0.0.1:9"
    assert opts.token == "env-token"


def test_token_files(tmp_path: Path) -> None:
    first = tmp_path / "first"
    second = tmp_path / "second"
    second.write_text("from-second\n")
    opts = options_from(_args(), env={}, token_files=[first, second])
    assert opts.token == "from-second"
    given = tmp_path / "given"
    given.write_text("  given  \n")
    assert options_from(_args(token_file=str(given)), env={}, token_files=[second]).token == (
        "given"
    )
    env = {"MESHCTL_TOKEN_FILE": str(given)}
    assert options_from(_args(), env=env, token_files=[second]).token == "given"


def test_unreadable_token_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read token file"):
        options_from(_args(token_file=str(tmp_path / "nope")), env={}, token_files=[])
