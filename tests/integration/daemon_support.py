"""An in-process controld daemon for integration tests."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import trio

from controld.daemon import ControlDaemon, DaemonConfig
from controld.registry import RegistryConfig

#: Bound on every step (starting the daemon, a long-poll that must answer).
TIMEOUT = 20.0


@asynccontextmanager
async def running_daemon(
    data_dir: Path, *, push: bool = True, leaf_ttl_s: float | None = None, **overrides: Any
) -> AsyncIterator[tuple[ControlDaemon, httpx.AsyncClient]]:
    """The daemon on ports 0 with ``data_dir``, and an admin-token client of its API.

    ``push``: a separate push listener too (else sidecars use the API's address);
    ``leaf_ttl_s``: shorten the leaves its CA issues, so renewals happen during a test;
    ``overrides``: other :class:`DaemonConfig` fields.
    """
    config = DaemonConfig(
        registry=RegistryConfig(data_dir=data_dir, port=0, node_name="test"),
        admin_port=0,
        push_port=0 if push else None,
        tls_port=0,
        watch_wait_s=5.0,
    )
    config = dataclasses.replace(config, **overrides)
    daemon = ControlDaemon(config)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(TIMEOUT):
            ports = await nursery.start(daemon.run)
        if leaf_ttl_s is not None:
            assert daemon.identity is not None
            daemon.identity.leaf_ttl = timedelta(seconds=leaf_ttl_s)
        token = config.token_path.read_text().strip()
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{ports.admin_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
        ) as http:
            try:
                yield daemon, http
            finally:
                daemon.shutdown_nowait()


def api_url(http: httpx.AsyncClient) -> str:
    """The daemon's API address (``http://127.0.0.1:PORT``) of a :func:`running_daemon` client."""
    return str(http.base_url).rstrip("/")


def tls_url(daemon: ControlDaemon) -> str:
    """The daemon's TLS listener (``https://127.0.0.1:PORT``) of a :func:`running_daemon`."""
    assert daemon.ports is not None and daemon.ports.tls_port is not None
    return f"https://127.0.0.1:{daemon.ports.tls_port}"
