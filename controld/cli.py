"""``controld``: the control plane daemon.

Only what exists is exposed: so far, the version. The registry, compiler, push and API
subcommands arrive with the issues that build them.
"""

from __future__ import annotations

import argparse
import sys

from meshcore import __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``controld`` command."""
    parser = argparse.ArgumentParser(
        prog="controld",
        description="meshd control plane. No subcommands are available in this version yet.",
    )
    parser.add_argument("--version", action="version", version=f"controld {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
