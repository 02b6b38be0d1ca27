"""``meshctl token create``: duration parsing and the command line."""

from __future__ import annotations

import argparse

import pytest

from tui.cli import build_parser
from tui.cli.ops import cmd_token_create, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("1h", 3600), ("2D", 172800)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "0", "0m", "-1h", "1.5h", "1w", "one", "\u00b2h"])
def test_parse_duration_refusals(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_token_create_command_line() -> None:
    args = build_parser().parse_args(["token", "create", "--service", "web", "--ttl", "10m"])
    assert (args.service, args.namespace, args.ttl) == ("web", "default", 600)
    assert args.run is cmd_token_create
    args = build_parser().parse_args(["token", "create", "--service", "web", "--namespace", "x"])
    assert (args.namespace, args.ttl) == ("x", 3600)
