"""End to end across two hosts: app and inbound sidecar on one, caller and outbound on the other."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml
from netns import Host, netns_available, two_hosts

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(netns_available() is not None, reason=str(netns_available())),
]

APP = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

CLIENT = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    sys.stdout.write(r.read().decode())
"""


def _write(directory: Path, bootstrap: dict[str, object], snapshot: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "snapshot.yaml").write_text(yaml.safe_dump(snapshot))
    path = directory / "bootstrap.yaml"
    path.write_text(yaml.safe_dump({**bootstrap, "snapshot": {"file": "snapshot.yaml"}}))
    return path


def _wait_ready(host: Host, port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = host.run(["curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{port}/ready"])
        if done.returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"sidecar in {host.name} never became ready:\n{log.read_text()[-2000:]}")


def test_request_crosses_hosts_through_both_sidecars(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with two_hosts("t") as (caller, server):
        server.spawn([sys.executable, "-c", APP, "8080"], log=tmp_path / "app.log", env=env)
        inbound = _write(
            tmp_path / "api",
            {"service": "api", "app": "127.0.0.1:8080", "admin": "127.0.0.1:15000"},
            {
                "version": 1,
                "listeners": [
                    {
                        "name": "inbound",
                        "direction": "inbound",
                        "address": f"{server.address}:15006",
                    }
                ],
            },
        )
        outbound = _write(
            tmp_path / "web",
            {"service": "web", "app": "127.0.0.1:8080", "admin": "127.0.0.1:15000"},
            {
                "version": 1,
                "listeners": [
                    {
                        "name": "api",
                        "direction": "outbound",
                        "address": "127.0.0.1:15001",
                        "cluster": "api",
                    }
                ],
                "clusters": [
                    {
                        "name": "api",
                        "service": "api",
                        "endpoints": [{"host": server.address, "port": 15006}],
                    }
                ],
            },
        )
        meshd = [sys.executable, "-m", "meshd", "run", "-c"]
        server.spawn([*meshd, str(inbound)], log=tmp_path / "api.log", env=env)
        caller.spawn([*meshd, str(outbound)], log=tmp_path / "web.log", env=env)
        _wait_ready(server, 15000, tmp_path / "api.log")
        _wait_ready(caller, 15000, tmp_path / "web.log")

        done = caller.run([sys.executable, "-c", CLIENT, "http://127.0.0.1:15001/hello?x=1"])
        assert done.returncode == 0, done.stderr.decode()
        echo = json.loads(done.stdout)
        assert echo["path"] == "/hello?x=1"
        headers = {k.lower(): v for k, v in echo["headers"].items()}
        # Each hop appends who it got the request from: the caller's app, then the caller host.
        assert headers["x-forwarded-for"] == f"127.0.0.1, {caller.address}"
        assert len(headers["x-request-id"]) == 32
        assert headers["traceparent"].startswith("00-")

        # The app itself is not reachable from the other host: only the sidecar listens there.
        direct = caller.run(["curl", "-sS", "-m", "3", f"http://{server.address}:8080/"])
        assert direct.returncode != 0
