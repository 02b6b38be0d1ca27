"""Process memory after start-up: collect the start-up garbage, return free heap, freeze.

Start-up (imports, pydantic schemas, the first snapshot) leaves ~50,000 long-lived objects
tracked by the cyclic garbage collector; every full collection would traverse them all again,
a stall of tens of milliseconds on the Trio thread (measured: ~60 ms on a loaded 2-core
machine, 0.01 ms once frozen) for objects that live as long as the process. So once the
sidecar serves, :func:`settle_after_start` collects what start-up left behind, hands the freed
heap pages back to the OS (glibc's ``malloc_trim``; elsewhere a no-op) and moves the survivors
to the collector's permanent generation (``gc.freeze``). The collector's thresholds stay
Python's defaults: raising them showed no CPU difference within the noise of the bench.
"""

from __future__ import annotations

import ctypes
import gc

__all__ = ["return_free_heap", "settle_after_start"]


def return_free_heap() -> None:
    """Hand the free pages of every malloc arena back to the OS (glibc's ``malloc_trim``;
    elsewhere a no-op). Worker threads allocate from arenas of their own, which glibc trims
    only when their free top grows past a threshold."""
    # The symbols already loaded into the process (libc among them), not
    # ``ctypes.util.find_library``: that one runs ``ldconfig -p`` in a child process, a blocking
    # fork on the Trio thread and a stray child for anyone watching the process tree.
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return  # not glibc
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)


def settle_after_start() -> None:
    """Collect, trim and freeze (see the module docstring); call once, when serving."""
    gc.collect()
    return_free_heap()
    gc.freeze()
