"""``meshctl token create``: duration parsing and the command line."""

from __future__ import annotations

import argparse

import pytest

from meshcore.api.tokens import SidecarTokenInfo
from tui.cli import build_parser
from tui.cli.ops import cmd_token_create, parse_duration
from tui.cli.tokens import cmd_token_list, cmd_token_revoke, cmd_token_sidecar, token_rows


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


def test_sidecar_token_command_lines() -> None:
    args = build_parser().parse_args(["token", "sidecar", "--service", "web", "--ttl", "7d"])
    assert (args.service, args.ttl, args.run) == ("web", 7 * 86400, cmd_token_sidecar)
    args = build_parser().parse_args(["token", "sidecar", "--service", "web"])
    assert args.ttl is None
    assert build_parser().parse_args(["token", "list"]).run is cmd_token_list
    args = build_parser().parse_args(["token", "revoke", "ab12"])
    assert (args.id, args.run) == ("ab12", cmd_token_revoke)


def test_token_rows_show_no_secret_and_a_dash_for_unbound_tokens() -> None:
    rows = token_rows(
        [
            SidecarTokenInfo(
                id="a1",
                service="web",
                namespace="default",
                created="2026-12-01T00:00:00Z",
                expires="2027-01-01T00:00:00Z",
            ),
            SidecarTokenInfo(
                id="b2",
                service="web",
                namespace="default",
                identity="spiffe://mesh.local/ns/default/svc/web",
                created="2026-12-06T00:00:00Z",
                expires="2026-12-07T00:00:00Z",
            ),
        ]
    )
    assert rows[0] == ["a1", "web", "default", "-", "2027-01-01T00:00:00Z"]
    assert rows[1][3] == "spiffe://mesh.local/ns/default/svc/web"
