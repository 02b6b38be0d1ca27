"""Process memory after start-up: collect, hand freed heap back, freeze, tune the collector.

Start-up (imports, pydantic schemas, the first snapshot) leaves a lot of freed memory inside
the process; a proxy then runs for months allocating mostly short-lived, acyclic objects
(buffers, header lists). :func:`settle_after_start` runs once the sidecar serves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

__all__ = ["settle_after_start"]


def _malloc_trim() -> bool:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False  # not glibc
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


def settle_after_start() -> None:
    """Collect the start-up garbage, return free heap pages to the OS, freeze what is left."""
    mode = os.environ.get("MESHD_SETTLE", "collect,trim,freeze")
    if "collect" in mode:
        gc.collect()
    if "trim" in mode:
        _malloc_trim()
    if "freeze" in mode:
        gc.freeze()
    if "threshold" in mode:
        gc.set_threshold(10_000, 50, 100)
