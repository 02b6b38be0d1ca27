"""``controld run`` as a real process: embedded registry, external registry, bad options.

The daemon's admin API (``/v1/status``, ``/metrics``) must show services registered with
py-consul; with an external registry killed (-9) it must keep the last view and say the
registry is down, and reconnect when the registry comes back.
"""

from __future__ import annotations

import contextlib
import json
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import httpx
import pytest

from .compat_support import (
    MGMT_TOKEN,
    TIMEOUT,
    RegistryProcess,
    clean_env,
    free_port,
    wait_until,
)

#: Bound on the watcher reconnecting (its backoff is capped at 10 s).
RECONNECT_TIMEOUT = 40.0


class ControldProcess:
    """One ``python -m controld run ...`` subprocess, stopped by PID."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.admin_port = free_port()
        self.log_path = log_path
        #: The daemon creates it on start; ``/v1/status`` needs the token in it.
        self.token_file = log_path.parent / "admin-token"
        argv = [sys.executable, "-m", "controld", "run", *args]
        # Never the fixed default ports in tests.
        if "--push" not in args:
            argv += ["--push", "127.0.0.1:0"]
        if "--tls" not in args:
            argv += ["--tls", "127.0.0.1:0"]
        argv += [
            "--admin",
            f"127.0.0.1:{self.admin_port}",
            "--admin-token-file",
            str(self.token_file),
        ]
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.admin_port}", timeout=5.0)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the daemon's output, for failure messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self) -> None:
        """Wait until ``/ready`` answers 200 (fail at once if the process exits)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"controld exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                return self.http.get("/ready").status_code == 200
            return False

        wait_until(ready, timeout=30.0, what="controld ready")

    def status(self) -> dict[str, Any]:
        """``GET /v1/status`` as JSON."""
        token = self.token_file.read_text().strip()
        resp = self.http.get("/v1/status", headers={"authorization": f"Bearer {token}"})
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def registry_token(self, service: str, ttl_s: float | None = None) -> dict[str, Any]:
        """``POST /v1/tokens/registry``: a registry token with ``service``'s identity."""
        token = self.token_file.read_text().strip()
        body: dict[str, Any] = {"service": service}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        resp = self.http.post(
            "/v1/tokens/registry", json=body, headers={"authorization": f"Bearer {token}"}
        )
        assert resp.status_code == 200, resp.text
        answer: dict[str, Any] = resp.json()
        return answer

    def metrics(self) -> str:
        """``GET /metrics`` text."""
        resp = self.http.get("/metrics")
        assert resp.status_code == 200, resp.text
        return resp.text

    def stop(self) -> int:
        """SIGTERM, wait (SIGKILL if it hangs); the exit code."""
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        return self.proc.returncode


@pytest.fixture
def pyconsul_clients() -> Iterator[list[Any]]:
    clients: list[Any] = []
    try:
        yield clients
    finally:
        for client in clients:
            client.http.session.close()


def register_web(clients: list[Any], port: int, token: str | None = None) -> None:
    client = consul.Consul(host="127.0.0.1", port=port, token=token)
    clients.append(client)
    client.agent.service.register("web", service_id="web-1", address="127.0.0.1", port=9001)


def web_endpoints(daemon: ControldProcess) -> list[dict[str, Any]] | None:
    services: dict[str, list[dict[str, Any]]] = daemon.status()["discovery"]["services"]
    return services.get("web") or None


def disconnected(daemon: ControldProcess) -> dict[str, Any] | None:
    status = daemon.status()
    return None if status["registry"]["connected"] else status


def test_embedded_registry(tmp_path: Path, pyconsul_clients: list[Any]) -> None:
    port = free_port()
    daemon = ControldProcess(
        ["--registry-listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")],
        tmp_path / "controld.log",
    )
    try:
        daemon.wait_ready()
        # ACLs are on by default: the web sidecar's own registry token registers it.
        register_web(pyconsul_clients, port, daemon.registry_token("web")["secret_id"])
        endpoints = wait_until(lambda: web_endpoints(daemon), what="web in the view")
        assert endpoints == [
            {"host": "127.0.0.1", "port": 9001, "instance_id": "web-1", "sidecar": False}
        ]
        registry = daemon.status()["registry"]
        assert registry["mode"] == "embedded"
        assert registry["address"] == f"http://127.0.0.1:{port}"
        assert registry["connected"] is True
        assert registry["last_error"] is None
        assert registry["last_index"] > 0
        metrics = daemon.metrics()
        assert "controld_registry_up 1.0" in metrics
        assert 'controld_discovery_endpoints{service="web"} 1.0' in metrics
        assert daemon.http.get("/live").status_code == 200
        ready_line = [
            json.loads(line)
            for line in daemon.log_path.read_text().splitlines()
            if '"ready"' in line
        ]
        assert ready_line and ready_line[0]["admin_port"] == daemon.admin_port
        assert ready_line[0]["registry_port"] == port
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log_tail()
    assert (tmp_path / "data").is_dir()


def test_external_registry_down_and_back(
    acl_registry: RegistryProcess, tmp_path: Path, pyconsul_clients: list[Any]
) -> None:
    registry = acl_registry  # with ACLs, as a production Consul: controld reads with its token
    daemon = ControldProcess(
        ["--registry", registry.url, "--registry-token", MGMT_TOKEN], tmp_path / "controld.log"
    )
    try:
        daemon.wait_ready()
        register_web(pyconsul_clients, registry.port, MGMT_TOKEN)
        wait_until(lambda: web_endpoints(daemon), what="web in the view")
        status = daemon.status()
        assert status["registry"]["mode"] == "external"
        assert status["registry"]["address"] == registry.url
        assert status["registry"]["connected"] is True
        view = status["discovery"]

        registry.kill9()
        down = wait_until(lambda: disconnected(daemon), what="registry reported down")
        assert down["registry"]["last_error"]
        assert down["registry"]["errors"] >= 1
        assert down["discovery"] == view  # the last view is kept
        assert "controld_registry_up 0.0" in daemon.metrics()

        registry.start()
        wait_until(
            lambda: daemon.status()["registry"]["connected"],
            timeout=RECONNECT_TIMEOUT,
            what="reconnected",
        )
        assert web_endpoints(daemon)
        assert "controld_registry_up 1.0" in daemon.metrics()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log_tail()


def test_embedded_without_data_dir_fails(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controld",
            "run",
            "--admin",
            f"127.0.0.1:{free_port()}",
            "--push",
            "off",
            "--tls",
            "off",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert "--data-dir" in result.stderr
    assert "--registry" in result.stderr


def test_imported_root_signs(tmp_path: Path) -> None:
    from controld.ca import generate_root

    root = generate_root()
    cert, key = tmp_path / "root.pem", tmp_path / "root-key.pem"
    cert.write_text(root.cert_pem())
    key.write_bytes(root.key_pem())
    args = ["--registry-listen", f"127.0.0.1:{free_port()}", "--push", "off"]
    args += ["--data-dir", str(tmp_path / "data")]
    daemon = ControldProcess(
        [*args, "--ca-import-cert", str(cert), "--ca-import-key", str(key)],
        tmp_path / "controld.log",
    )
    try:
        daemon.wait_ready()
        assert daemon.http.get("/v1/bundle").json()["roots"] == [root.cert_pem()]
    finally:
        assert daemon.stop() == 0, daemon.log_tail()


@pytest.mark.parametrize(
    ("cert_text", "key_text", "message"),
    [
        ("not a certificate", None, "root.pem"),
        (None, "", "root-key.pem"),
    ],
)
def test_bad_root_to_import_fails(
    tmp_path: Path, cert_text: str | None, key_text: str | None, message: str
) -> None:
    from controld.ca import generate_root

    root = generate_root()
    cert, key = tmp_path / "root.pem", tmp_path / "root-key.pem"
    cert.write_text(root.cert_pem() if cert_text is None else cert_text)
    key.write_bytes(root.key_pem() if key_text is None else key_text.encode())
    argv = [sys.executable, "-m", "controld", "run", "--data-dir", str(tmp_path / "data")]
    argv += ["--registry-listen", f"127.0.0.1:{free_port()}", "--push", "off", "--tls", "off"]
    argv += ["--admin", f"127.0.0.1:{free_port()}"]
    argv += ["--ca-import-cert", str(cert), "--ca-import-key", str(key)]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "controld run:" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_tls_listener_serves_the_api_with_a_certificate_from_its_ca(tmp_path: Path) -> None:
    tls_port = free_port()
    args = ["--registry-listen", f"127.0.0.1:{free_port()}", "--push", "off"]
    args += ["--data-dir", str(tmp_path / "data"), "--tls", f"127.0.0.1:{tls_port}"]
    args += ["--tls-san", "controld.example"]
    daemon = ControldProcess(args, tmp_path / "controld.log")
    try:
        daemon.wait_ready()
        roots = daemon.http.get("/v1/bundle").json()["roots"]
        # Host name checked: the certificate names 127.0.0.1 (and the extra SAN).
        ctx = ssl.create_default_context(cadata="".join(roots))
        with httpx.Client(verify=ctx, timeout=5.0) as client:
            answer = client.get(f"https://127.0.0.1:{tls_port}/v1/bundle")
        assert answer.status_code == 200 and answer.json()["roots"] == roots
        headers = {"Authorization": f"Bearer {daemon.token_file.read_text().strip()}"}
        tls = daemon.http.get("/v1/ca", headers=headers).json()["tls"]
        assert tls["listen"] == f"127.0.0.1:{tls_port}"
        assert tls["spiffe_id"] == "spiffe://mesh.local/controld"
        assert "controld.example" in tls["sans"] and "127.0.0.1" in tls["sans"]
    finally:
        assert daemon.stop() == 0, daemon.log_tail()


def test_tls_listener_off(tmp_path: Path) -> None:
    args = ["--registry-listen", f"127.0.0.1:{free_port()}", "--push", "off", "--tls", "off"]
    daemon = ControldProcess([*args, "--data-dir", str(tmp_path / "data")], tmp_path / "c.log")
    try:
        daemon.wait_ready()
        headers = {"Authorization": f"Bearer {daemon.token_file.read_text().strip()}"}
        assert daemon.http.get("/v1/ca", headers=headers).json()["tls"] is None
    finally:
        assert daemon.stop() == 0, daemon.log_tail()
