"""What every controld command of ``meshctl`` shares: server, token, output format, exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tui.client import DEFAULT_SERVER, ControldClient

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "TOKEN_FILES",
    "Options",
    "add_global_options",
    "error",
    "options_from",
    "read_token",
]

EXIT_OK = 0
#: Validation failed, a diff was found, or controld answered with an error.
EXIT_FAILED = 1
EXIT_USAGE = 2
#: controld could not be reached at all.
EXIT_UNREACHABLE = 3

#: Where the admin token is looked for when none is given (first existing wins).
TOKEN_FILES = (
    Path(".demo/controld/admin-token"),
    # Where scripts/demo's controld keeps it (its --data-dir), run from the checkout.
    Path(".demo/state/controld/admin-token"),
    Path("/var/lib/controld/admin-token"),
)

OUTPUTS = ("table", "yaml", "json")


@dataclass(frozen=True)
class Options:
    """The global options, resolved (flags > environment > defaults)."""

    server: str
    token: str | None
    output: str

    def client(self) -> ControldClient:
        """A client of controld with these options (close it after use)."""
        return ControldClient(self.server, self.token)


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--server``, ``--token``, ``--token-file``, ``-o``.

    They are accepted before and after the subcommand; on subcommands the defaults are
    suppressed so they don't hide a value given before the subcommand.
    """
    default = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("controld connection and output")
    group.add_argument(
        "--server",
        metavar="URL",
        default=default,
        help=f"controld API (env MESHCTL_SERVER; default {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--token", default=default, help="admin or sidecar bearer token (env MESHCTL_TOKEN)"
    )
    group.add_argument(
        "--token-file",
        metavar="PATH",
        default=default,
        help=(
            "file holding the token (env MESHCTL_TOKEN_FILE; default: the first existing of "
            + ", ".join(str(p) for p in TOKEN_FILES)
            + ")"
        ),
    )
    group.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default=default,
        help="output format (default table)",
    )


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped); ``OSError`` if unreadable."""
    return path.read_text(encoding="utf-8").strip()


def options_from(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
    token_files: Sequence[Path] = TOKEN_FILES,
) -> Options:
    """Resolve the global options; raises ``ValueError`` for an unreadable token file."""
    env = os.environ if env is None else env
    server = args.server or env.get("MESHCTL_SERVER") or DEFAULT_SERVER
    if "://" not in server:
        server = f"http://{server}"
    token: str | None = args.token or env.get("MESHCTL_TOKEN") or None
    if token is None:
        given = args.token_file or env.get("MESHCTL_TOKEN_FILE")
        if given:
            try:
                token = read_token(Path(given))
            except OSError as exc:
                raise ValueError(f"cannot read token file {given}: {exc.strerror}") from exc
        else:
            for candidate in token_files:
                try:
                    token = read_token(candidate)
                except OSError:
                    continue
                break
    return Options(server=server, token=token or None, output=args.output or "table")


def error(message: str) -> None:
    """Print ``meshctl: message`` on standard error."""
    print(f"meshctl: {message}", file=sys.stderr)
