"""Tests for meshd.memory: settling after start-up never starts a child process."""

from __future__ import annotations

import gc
import subprocess
from typing import Any

import pytest

from meshd.memory import return_free_heap, settle_after_start

pytestmark = pytest.mark.timeout(30)


def test_settle_starts_no_process_and_freezes(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker supervisor's children are the workers: a helper process (``ldconfig -p`` from
    # ``ctypes.util.find_library``) would be a stray child and a blocking fork on the Trio thread.
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"settle_after_start started a process: {args}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    try:
        settle_after_start()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_return_free_heap_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"return_free_heap started a process: {args}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    return_free_heap()  # glibc here; a no-op elsewhere
