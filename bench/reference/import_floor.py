"""The resident memory a process has after importing the given modules, and nothing else.

Usage: ``python import_floor.py MODULE...``; prints VmRSS in kB. The dataplane suite uses it
to show how much of meshd's idle footprint the libraries the project requires take by
themselves (e.g. trio and structlog), next to ``RSS_MB meshd_idle``.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path


def main(modules: list[str]) -> int:
    """Import ``modules``, print this process's VmRSS (kB)."""
    for name in modules:
        importlib.import_module(name)
    found = re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text())
    if found is None:
        return 1
    print(found.group(1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
