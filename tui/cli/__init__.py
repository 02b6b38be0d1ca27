"""``meshctl``: the operator's command line.

Offline: ``validate`` checks snapshot, bootstrap and resource files. Against controld's API
(``--server``, token from ``--token``/``--token-file``/the environment): ``apply``, ``get``,
``delete``, ``diff``, ``status``, ``explain``, ``token``, ``ca``, ``identities``, ``revoke``,
``audit``, ``events``, ``schema`` and ``dashboard`` (the live terminal dashboard).

Exit codes: 0 ok, 1 validation failed / differences found / controld answered with an error,
2 usage error, 3 controld unreachable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from meshcore import __version__
from tui.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Options,
    add_global_options,
    error,
    options_from,
)
from tui.cli.kinds import UnknownKind

__all__ = ["build_parser", "main"]

Command = Callable[[Options, argparse.Namespace], int]


def _sub(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_,
        description=description or help_,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(parser, top=False)
    return parser


def _files(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        required=required,
        default=[] if not required else None,
        metavar="FILE|DIR",
        help="resource YAML file or directory (*.yaml, *.yml, recursive); '-' reads stdin; "
        "repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``meshctl`` argument parser."""
    from tui.cli import audit, ca, dashboard, events, explain, identities, ops, resources, tokens
    from tui.cli.validate import VALIDATE_KINDS

    parser = argparse.ArgumentParser(
        prog="meshctl",
        description="meshd operator CLI: policy resources and sidecar status via controld.",
        epilog="exit codes: 0 ok, 1 failed/differences, 2 usage, 3 controld unreachable",
    )
    parser.add_argument("--version", action="version", version=f"meshctl {__version__}")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "apply", "create or update the resources of files in controld")
    _files(p, required=True)
    p.add_argument("--dry-run", action="store_true", help="validate in controld, store nothing")
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (store nothing) when a connected sidecar would get a snapshot feature it "
        "doesn't enforce, instead of warning",
    )
    p.set_defaults(run=resources.cmd_apply)

    p = _sub(sub, "get", "list resources, or show one")
    p.add_argument("kind", nargs="?", help="kind (any case, plural or alias: routes, policy, ...)")
    p.add_argument("name", nargs="?", help="resource name")
    p.set_defaults(run=resources.cmd_get)

    p = _sub(sub, "delete", "delete a resource (KIND NAME) or those of files (-f)")
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    _files(p, required=False)
    p.set_defaults(run=resources.cmd_delete)

    p = _sub(
        sub,
        "diff",
        "show what applying files would change (exit 1 if anything would)",
    )
    _files(p, required=True)
    p.set_defaults(run=resources.cmd_diff)

    p = _sub(sub, "status", "sidecars and whether they run the latest snapshot")
    p.set_defaults(run=ops.cmd_status)

    p = _sub(sub, "explain", "how a request from SOURCE to DESTINATION would be routed")
    p.add_argument("source", help="source service")
    p.add_argument("destination", help="destination service")
    p.add_argument("--path", default="/", help="request path (default /)")
    p.add_argument("--method", default="GET", type=str.upper, help="method (default GET)")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="request header (repeatable)",
    )
    p.set_defaults(run=explain.cmd_explain)

    p = _sub(sub, "token", "mint, list and revoke tokens")
    token_sub = p.add_subparsers(dest="token_kind", required=True, metavar="KIND")
    t = token_sub.add_parser("sidecar", help="a token for the sidecars of a service")
    add_global_options(t, top=False)
    t.add_argument("--service", required=True)
    t.add_argument("--ttl", type=ops.parse_duration, default=None, help="1h, 7d, ... (default 30d)")
    t.set_defaults(run=tokens.cmd_token_sidecar)
    t = token_sub.add_parser("list", help="the sidecar tokens: id, service, identity, expiry")
    add_global_options(t, top=False)
    t.set_defaults(run=tokens.cmd_token_list)
    t = token_sub.add_parser("revoke", help="revoke one sidecar token by its id")
    add_global_options(t, top=False)
    t.add_argument("id")
    t.set_defaults(run=tokens.cmd_token_revoke)
    t = token_sub.add_parser("create", help="a single-use join token to enroll a sidecar")
    add_global_options(t, top=False)
    t.add_argument("--service", required=True)
    t.add_argument("--namespace", default="default")
    t.add_argument(
        "--ttl", type=ops.parse_duration, default=3600, help="30m, 1h, 2d, ... (default 1h)"
    )
    t.set_defaults(run=ops.cmd_token_create)
    t = token_sub.add_parser(
        "registry",
        help="a registry ACL token with a service identity, for a sidecar's registry.token_file",
    )
    add_global_options(t, top=False)
    t.add_argument("--service", required=True)
    t.add_argument(
        "--ttl", type=ops.parse_duration, default=None, help="1h, 2d, ... (default: no expiry)"
    )
    t.set_defaults(run=ops.cmd_token_registry)

    ca.add_ca_parser(sub, add_global_options)
    identities.add_identity_parsers(sub, add_global_options)
    audit.add_audit_parser(sub, add_global_options)
    events.add_events_parser(sub, add_global_options)
    dashboard.add_dashboard_parser(sub, add_global_options)

    p = _sub(sub, "schema", "JSON Schema of the resource kinds (all, or one)")
    p.add_argument("kind", nargs="?")
    p.set_defaults(run=ops.cmd_schema)

    p = sub.add_parser("validate", help="check snapshot, bootstrap or resource files offline")
    p.add_argument("--kind", choices=VALIDATE_KINDS, default="snapshot")
    p.add_argument("files", nargs="+", type=Path)
    p.set_defaults(run=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meshctl`` command; returns the exit code."""
    from tui.client import ApiError, UnexpectedAnswer, Unreachable

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "validate":
        from tui.cli.validate import cmd_validate

        return cmd_validate(args)
    try:
        opts = options_from(args)
    except ValueError as exc:
        error(str(exc))
        return EXIT_USAGE
    command: Command = args.run
    try:
        return command(opts, args)
    except BrokenPipeError:
        # `meshctl ... | head`: the reader is gone; say nothing more (not even at exit).
        _silence_stdout()
        return EXIT_OK
    except UnknownKind as exc:
        error(str(exc))
        return EXIT_USAGE
    except Unreachable as exc:
        error(f"{exc} (is controld running? set --server or MESHCTL_SERVER)")
        return EXIT_UNREACHABLE
    except ApiError as exc:
        from tui.cli.local import problem_lines

        error(f"controld answered {exc.status}: {exc.message}")
        for line in problem_lines(exc.problems, ()):
            print(line, file=sys.stderr)
        return EXIT_FAILED
    except UnexpectedAnswer as exc:
        error(str(exc))
        return EXIT_FAILED


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (captured output)
        pass


if __name__ == "__main__":
    sys.exit(main())
