"""Fixtures of the integration tests (the building blocks live in ``helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from backends import Backends, running_backends
from helpers import Chain, TestApp, open_chain, serve_app


@pytest.fixture
async def app(nursery: trio.Nursery) -> TestApp:
    """The test app, served by hypercorn on 127.0.0.1 until the test ends."""
    test_app = TestApp()
    await nursery.start(serve_app, test_app)
    return test_app


@pytest.fixture
async def chain(nursery: trio.Nursery, tmp_path: Path, app: TestApp) -> Chain:
    """Outbound sidecar ``web`` -> inbound sidecar ``api`` -> :func:`app`."""
    return await open_chain(nursery, tmp_path, app.port)


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[Backends]:
    """Starts misbehaving backend processes (``backends.start(name, mode)``); every one still
    running is killed at the end, however the test ends."""
    with running_backends(tmp_path / "backends") as started:
        yield started
