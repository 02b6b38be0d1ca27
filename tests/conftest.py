"""Shared by every test folder: pytest puts this folder on ``sys.path`` (it has no
``__init__.py``), so test modules and their support modules import :mod:`ports` and
:mod:`loopback` from here."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

#: The signals a sidecar or controld run in-process handles (``trio.open_signal_receiver``).
_HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture(autouse=True)
def _signal_handlers_as_found() -> Iterator[None]:
    """Each test leaves the process's signal handlers as it found them. Two signal receivers
    of one Trio run that close in the order they opened (two in-process sidecars) restore the
    first one's handler, by then bound to nothing: a later run's SIGINT would go there."""
    found = [(signum, signal.getsignal(signum)) for signum in _HANDLED]
    yield
    for signum, handler in found:
        if handler is not None:
            signal.signal(signum, handler)
