"""``meshctl``: the operator's command line.

So far it checks configuration files offline; apply/get/delete/status/explain come with the
control plane.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshcore import __version__
from meshcore.errors import ConfigError
from meshcore.model import Bootstrap, Snapshot
from meshcore.model.loading import load_model

_KINDS: dict[str, type[Snapshot] | type[Bootstrap]] = {
    "snapshot": Snapshot,
    "bootstrap": Bootstrap,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meshctl`` command."""
    parser = argparse.ArgumentParser(prog="meshctl", description="meshd operator CLI")
    parser.add_argument("--version", action="version", version=f"meshctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check sidecar snapshot or bootstrap files offline")
    check.add_argument("--kind", choices=sorted(_KINDS), default="snapshot")
    check.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            kind = _KINDS[args.kind]
            if kind is Snapshot:
                load_model(Snapshot, path)
            else:
                load_model(Bootstrap, path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed += 1
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
