"""``meshctl validate``: check snapshot, bootstrap or resource files offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshcore.errors import ConfigError
from meshcore.model import Bootstrap, Snapshot
from meshcore.model.loading import load_model
from tui.cli.common import EXIT_FAILED, EXIT_OK

__all__ = ["VALIDATE_KINDS", "cmd_validate"]

#: ``--kind`` values: sidecar files, or policy resources (files or directories).
VALIDATE_KINDS = ("bootstrap", "resources", "snapshot")


def _validate_resources(paths: list[Path]) -> int:
    from meshcore.model.documents import load_paths

    try:
        loaded = load_paths(paths)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    counts: dict[Path, int] = {}
    for path, _ in loaded:
        counts[path] = counts.get(path, 0) + 1
    for path, count in counts.items():
        print(f"{path}: ok ({count} resource{'s' if count != 1 else ''})")
    if not loaded:
        print("no resources found", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Check each file; problems name file, field path and reason. Exit 1 if any fails."""
    if args.kind == "resources":
        return _validate_resources(args.files)
    failed = 0
    for path in args.files:
        try:
            if args.kind == "snapshot":
                load_model(Snapshot, path)
            else:
                load_model(Bootstrap, path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed += 1
        else:
            print(f"{path}: ok")
    return EXIT_FAILED if failed else EXIT_OK
