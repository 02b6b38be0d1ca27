"""``meshd``'s command line: its parser, used once at start (:func:`meshd.cli.main` then forgets
this module and argparse, :func:`meshcore.deferimports.call_and_forget`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from meshcore import __version__

__all__ = ["parse", "parser"]

_LEVELS = ("debug", "info", "warning", "error", "critical")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, asking the terminal's width only when it formats text.

    argparse makes a formatter for every argument it adds, and argparse's own asks
    :func:`shutil.get_terminal_size` every time, so merely parsing a command line imports
    :mod:`shutil` (with bz2 and lzma): ~0.6 MB resident in every sidecar (issue 15). This one
    asks when usage, help or an error is written, so the text is the same.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, _NO_WIDTH_YET if width is None else width
        )
        self._asked_width = width
        self._asked_max_help_position = max_help_position

    def format_help(self) -> str:
        if self._asked_width is None:
            import shutil

            # What argparse.HelpFormatter.__init__ does with width=None.
            width = shutil.get_terminal_size().columns - 2
            self._width = width
            self._max_help_position = min(
                self._asked_max_help_position, max(width - 20, self._indent_increment * 2)
            )
        return super().format_help()


#: A width for the formatters argparse makes only to check an argument (they format no text).
_NO_WIDTH_YET = 78


def parser() -> argparse.ArgumentParser:
    """The parser of ``meshd``'s command line."""
    top = argparse.ArgumentParser(
        prog="meshd", description="meshd sidecar proxy", formatter_class=_HelpFormatter
    )
    top.add_argument("--version", action="version", version=f"meshd {__version__}")
    # prog given: argparse would format the parser's usage to find it (and ask the width).
    sub = top.add_subparsers(dest="command", required=True, prog="meshd")
    run = sub.add_parser("run", help="run the sidecar", formatter_class=_HelpFormatter)
    run.add_argument("-c", "--config", type=Path, required=True, help="bootstrap YAML file")
    run.add_argument("--log-format", choices=("json", "console"), default="json")
    run.add_argument(
        "--log-level",
        choices=_LEVELS,
        type=str.lower,
        default=os.environ.get("MESHD_LOG_LEVEL", "info").lower(),
    )
    run.add_argument(
        "--takeover",
        action="store_true",
        help="take the listening sockets over from the meshd running with this bootstrap "
        "(restart without socket activation); start normally if none runs",
    )
    run.add_argument(
        "--handoff-socket",
        type=Path,
        default=None,
        help="Unix socket of the hand-off (default $RUNTIME_DIRECTORY/handoff.sock, "
        "else BOOTSTRAP.handoff.sock)",
    )
    run.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    # A worker's channel to its primary, and the listening sockets it inherits (NAME=FD).
    run.add_argument("--worker-channel", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--worker-listen-fd", action="append", default=[], help=argparse.SUPPRESS)
    check = sub.add_parser(
        "validate",
        help="check a bootstrap file and its snapshot, then exit",
        formatter_class=_HelpFormatter,
    )
    check.add_argument("-c", "--config", type=Path, required=True, help="bootstrap YAML file")
    return top


def parse(argv: list[str] | None) -> dict[str, Any]:
    """``argv`` (default ``sys.argv[1:]``) parsed, as plain values (nothing of argparse's)."""
    return dict(vars(parser().parse_args(argv)))
