"""``upgrade.yml``'s waits (the meshd_node role's ``wait.yml``) against real endpoints.

Ansible runs on this host (``ansible_connection: local``) and only makes HTTP requests: to a
stand-in sidecar admin API whose ``/ready`` answers 503 for a while, and to a real
``controld registry`` (the Consul API) whose TTL check turns passing later. The play must wait
for both, and fail when the check never passes. Nothing is installed or started but those
two test processes/threads, stopped in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ports import free_port

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


class _Ready(BaseHTTPRequestHandler):
    server: _AdminServer

    def do_GET(self) -> None:
        self.server.polls += 1
        ok = self.path == "/ready" and self.server.polls > self.server.not_ready_for
        body = b"ready\n" if ok else b"not ready\n"
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _AdminServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, not_ready_for: int) -> None:
        super().__init__(("127.0.0.1", 0), _Ready)
        self.polls = 0
        self.not_ready_for = not_ready_for


@pytest.fixture
def admin() -> Iterator[_AdminServer]:
    server = _AdminServer(not_ready_for=2)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "registry.log"
    argv = [sys.executable, "-m", "controld", "registry", "--listen", f"127.0.0.1:{port}"]
    argv += ["--data-dir", str(tmp_path / "registry")]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=child_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/v1/status/leader", timeout=2).status_code == 200
            return False

        wait_for(up, timeout=30, what="the registry")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


def _register_web(url: str) -> None:
    service = {"Name": "web", "ID": "web-1", "Port": 15006, "Check": {"TTL": "60s"}}
    resp = httpx.put(f"{url}/v1/agent/service/register", json=service, timeout=10)
    assert resp.status_code == 200, resp.text
    checks = httpx.get(f"{url}/v1/health/checks/web", timeout=10).json()
    assert [c["Status"] for c in checks] == ["critical"]


def _pass_later(url: str, after_s: float) -> threading.Thread:
    def run() -> None:
        time.sleep(after_s)
        httpx.put(f"{url}/v1/agent/check/pass/service:web-1", timeout=10)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _play(tmp: Path, admin_port: int, registry_url: str, retries: int) -> tuple[int, str]:
    playbook = tmp / "wait.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Wait like upgrade.yml",
                    "hosts": "node",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Wait",
                            "ansible.builtin.include_role": {
                                "name": "meshd_node",
                                "tasks_from": "wait.yml",
                            },
                        }
                    ],
                }
            ]
        )
    )
    node = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = tmp / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {"node": node},
                    "vars": {
                        "meshd_node_services": [
                            {
                                "name": "web",
                                "app": "127.0.0.1:8080",
                                "admin": f"127.0.0.1:{admin_port}",
                                "registry_token": "unused-here",
                            }
                        ],
                        "meshd_node_check_url": registry_url,
                        "meshd_node_check_delegate_to": "node",
                        "meshd_node_ready_retries": 20,
                        "meshd_node_ready_delay": 1,
                        "meshd_node_check_retries": retries,
                        "meshd_node_check_delay": 1,
                    },
                }
            }
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    tool = shutil.which("ansible-playbook")
    assert tool is not None
    result = subprocess.run(
        [tool, "-i", str(inventory), str(playbook)],
        cwd=tmp,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def test_waits_for_ready_and_a_passing_check(
    tmp_path: Path, admin: _AdminServer, registry: str
) -> None:
    _register_web(registry)
    passer = _pass_later(registry, 3.0)
    try:
        code, output = _play(tmp_path, admin.server_address[1], registry, retries=30)
    finally:
        passer.join(timeout=20)
    assert code == 0, output[-4000:]
    assert admin.polls == 3  # two 503s, then 200
    assert "FAILED - RETRYING" in output  # it did wait for the check
    checks = httpx.get(f"{registry}/v1/health/checks/web", timeout=10).json()
    assert json.dumps([c["Status"] for c in checks]) == '["passing"]'


def test_a_check_that_never_passes_stops_the_rollout(
    tmp_path: Path, admin: _AdminServer, registry: str
) -> None:
    _register_web(registry)
    code, output = _play(tmp_path, admin.server_address[1], registry, retries=2)
    assert code != 0
    assert "Wait for a passing registry check" in output and "failed=1" in output, output[-3000:]


def test_a_service_not_registered_yet_is_not_healthy(
    tmp_path: Path, admin: _AdminServer, registry: str
) -> None:
    code, output = _play(tmp_path, admin.server_address[1], registry, retries=2)
    assert code != 0, output[-3000:]
    assert "Wait for a passing registry check" in output and "failed=1" in output, output[-3000:]
