"""``meshctl token sidecar``, ``token list`` and ``token revoke``: sidecar API tokens."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from meshcore.api.tokens import SidecarTokenInfo
from tui import render
from tui.cli.common import EXIT_OK, Options

__all__ = ["TOKEN_HEADERS", "cmd_token_list", "cmd_token_revoke", "cmd_token_sidecar", "token_rows"]

TOKEN_HEADERS = ["ID", "SERVICE", "NAMESPACE", "IDENTITY", "EXPIRES"]


def token_rows(tokens: Sequence[SidecarTokenInfo]) -> list[list[str]]:
    """Rows of the ``token list`` table (identity ``-`` for tokens not bound to one)."""
    return [[t.id, t.service, t.namespace, t.identity or "-", t.expires] for t in tokens]


def _print(opts: Options, value: Any) -> None:
    if opts.output == "json":
        print(render.to_json(value))
    else:
        print(render.to_yaml(value), end="")


def cmd_token_sidecar(opts: Options, args: argparse.Namespace) -> int:
    """``token sidecar --service S [--ttl D]``: print the token (only it, on stdout; its id
    and expiry go to stderr), or the whole answer with ``-o json|yaml``."""
    with opts.client() as client:
        answer = client.sidecar_token(args.service, ttl_s=args.ttl)
    if opts.output != "table":
        _print(opts, answer)
        return EXIT_OK
    print(answer.token)
    print(f"token id {answer.id}, expires {answer.expires}", file=sys.stderr)
    return EXIT_OK


def cmd_token_list(opts: Options, _: argparse.Namespace) -> int:
    """``token list``: the sidecar tokens (never their secrets)."""
    with opts.client() as client:
        answer = client.sidecar_tokens()
    if opts.output != "table":
        _print(opts, answer)
        return EXIT_OK
    print(render.table(TOKEN_HEADERS, token_rows(answer.tokens)))
    return EXIT_OK


def cmd_token_revoke(opts: Options, args: argparse.Namespace) -> int:
    """``token revoke ID``: that sidecar token is refused from now on."""
    with opts.client() as client:
        client.revoke_sidecar_token(args.id)
    print(f"revoked sidecar token {args.id}")
    return EXIT_OK
