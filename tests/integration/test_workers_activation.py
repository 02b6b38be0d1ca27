"""Socket activation with ``workers: 2``: the worker accepts from the inherited socket too.

``systemd-socket-activate`` holds the listening socket and execs meshd with it as fd 3; the
primary passes that socket on to its worker process (not a socket of its own bound with
SO_REUSEPORT), so both accept from the one socket the service manager keeps open.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from lifecycle_support import (
    REPO,
    UpstreamApp,
    bootstrap_doc,
    free_port,
    http_get,
    running_sidecar,
    snapshot_doc,
    wait_for,
    write_yaml,
)
from process_support import admin_port_pair, answers, child_pids, process_gone

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing"
    ),
]


@pytest.fixture
def upstream() -> Iterator[UpstreamApp]:
    with UpstreamApp() as app:
        yield app


def _get_json(port: int, path: str) -> object:
    status, _, body = http_get(port, path, timeout=5)
    assert status == 200, body
    return json.loads(body)


def _requests(stats: object) -> int:
    assert isinstance(stats, dict)
    return sum(
        int(v) for k, v in stats.items() if k.startswith("http.") and k.endswith(".requests")
    )


def test_workers_share_the_inherited_socket(tmp_path: Path, upstream: UpstreamApp) -> None:
    port, admin = free_port(), admin_port_pair()
    boot = tmp_path / "bootstrap.yaml"
    write_yaml(boot, bootstrap_doc(app_port=upstream.port, admin_port=admin, workers=2))
    write_yaml(
        tmp_path / "snapshot.yaml",
        snapshot_doc(version=1, upstream_port=upstream.port, listen_port=port),
    )
    activator = shutil.which("systemd-socket-activate")
    assert activator is not None
    wrapper = [activator, "-l", f"127.0.0.1:{port}", "--fdname=api"]
    wrapper += ["-E", f"PYTHONPATH={REPO}", "-E", "PYTHONUNBUFFERED=1"]
    workers: list[int] = []
    try:
        with running_sidecar(boot, wrapper=wrapper, wait=False) as sc:
            # The first connection wakes the activator, which execs meshd.
            wait_for(lambda: answers(port, "/"), timeout=60, what="the first answer")
            sc.wait_ready()
            wait_for(lambda: len(child_pids(sc.pid)) == 1, timeout=15, what="the worker")
            (worker,) = child_pids(sc.pid)
            workers.append(worker)
            wait_for(lambda: answers(admin + 1, "/ready"), timeout=30, what="worker ready")
            for admin_port in (admin, admin + 1):
                listeners = _get_json(admin_port, "/listeners")
                assert isinstance(listeners, list)
                (api,) = [x for x in listeners if x["name"] == "api"]
                assert api["inherited"] is True, api
                assert api["address"] == f"127.0.0.1:{port}"

            def worker_served() -> bool:
                for _ in range(10):
                    assert http_get(port, "/")[0] == 200
                return _requests(_get_json(admin + 1, "/stats")) > 0

            wait_for(worker_served, timeout=30, what="a request accepted by the worker")
            sc.send_signal(signal.SIGTERM)
            assert sc.wait_exit(timeout=30) == 0
            wait_for(lambda: process_gone(worker), timeout=15, what="the worker to exit")
    finally:
        for pid in workers:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
