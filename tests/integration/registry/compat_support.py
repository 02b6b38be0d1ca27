"""Building blocks of the registry compatibility suite.

* :class:`RegistryProcess` runs ``python -m controld registry`` as a real subprocess on
  127.0.0.1 (free port, its own data dir), waits until ``GET /v1/status/leader`` answers,
  and stops, restarts or ``kill -9``-s it by PID.
* :func:`wait_until` polls a condition with a bound, so a broken server fails a test
  rather than hanging it.
* :class:`CheckTarget` is a tiny HTTP server (status settable) and TCP listener on
  127.0.0.1 for the HTTP/TCP health checks to probe.
* :mod:`compat_venv` has the venvs of other Consul clients the suite runs scripts in.

Every expectation in the suite is Consul's documented behaviour (HTTP API docs at
developer.hashicorp.com/consul/api-docs) or what py-consul / python-consul send and expect.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from helpers import stop_process
from ports import free_port as free_port  # noqa: PLC0414 (re-exported)

REPO = Path(__file__).resolve().parents[3]
#: Bound for any single wait: a broken server fails the test, it never hangs it.
TIMEOUT = 15.0
#: The management token of the ACL-enabled registries.
MGMT_TOKEN = "9c5e4d2a-0b7e-4c39-8f51-3f1c2a6d7e80"

T = TypeVar("T")

_CLIENT_ENV = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes: checkout on PYTHONPATH, no Consul client settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _CLIENT_ENV and not k.startswith(("LISTEN_", "NOTIFY_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def wait_until(
    predicate: Callable[[], T | bool | None],
    *,
    timeout: float = TIMEOUT,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = predicate()
        if last:
            return last  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")
        time.sleep(interval)


def registry_argv(listen: str, data_dir: Path, token: str | None = None) -> list[str]:
    """``python -m controld registry`` with the given options."""
    argv = [sys.executable, "-m", "controld", "registry", "--listen", listen]
    argv += ["--data-dir", str(data_dir)]
    if token is not None:
        argv += ["--acl-management-token", token]
    return argv


class RegistryProcess:
    """One ``controld registry`` subprocess; the same port and data dir across restarts."""

    def __init__(self, data_dir: Path, log_dir: Path, *, token: str | None = None) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.token = token
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.address}"

    @property
    def pid(self) -> int:
        """PID of the running process."""
        assert self.proc is not None, "registry not started"
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        """Where the current run's stdout/stderr go."""
        return self.log_dir / f"registry-{self.starts}.log"

    def log_tail(self, lines: int = 30) -> str:
        """The end of the current run's output, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = 30.0) -> None:
        """Start the process and wait until ``/v1/status/leader`` answers 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                registry_argv(self.address, self.data_dir, self.token),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                cwd=str(self.log_dir),
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Poll ``GET /v1/status/leader`` (no token: Consul does not ACL the status API)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"registry exited with {self.proc.returncode} before being ready:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    resp = client.get("/v1/status/leader")
                    if resp.status_code == 200 and resp.json():
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"registry not ready on {self.address} after {timeout}s:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code (None if not running)."""
        return stop_process(self.proc, timeout)

    def kill9(self) -> None:
        """``kill -9`` the process (by PID) and reap it."""
        proc = self.proc
        assert proc is not None and proc.poll() is None, "registry not running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT)

    def restart(self, *, hard: bool = False) -> None:
        """Stop (or ``kill -9`` when ``hard``) and start again on the same port and data dir."""
        if hard:
            self.kill9()
        else:
            self.stop()
        self.start()

    def rss_kb(self) -> int:
        """``VmRSS`` of the process in kB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def x_index(resp: httpx.Response) -> int:
    """The ``X-Consul-Index`` of a response, which must be there and be a positive integer."""
    raw = resp.headers.get("X-Consul-Index")
    assert raw is not None, f"no X-Consul-Index on {resp.request.method} {resp.request.url}"
    value = int(raw)
    assert value > 0, f"X-Consul-Index must be > 0, got {value}"
    return value


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (or ``<dir>``) of everything under ``root``, incl. ``root``."""
    out: dict[str, str] = {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ----------------------------------------------------------------------------------------------
# Targets for HTTP and TCP health checks
# ----------------------------------------------------------------------------------------------


class CheckTarget:
    """An HTTP server answering ``status`` with ``body`` on every GET, on 127.0.0.1.

    ``status`` can be changed while it runs; ``hits`` counts requests (proves the registry
    really probes it). ``close()`` stops it, so the port then refuses connections.
    """

    def __init__(self, status: int = 200, body: bytes = b"ok") -> None:
        self.status = status
        self.body = body
        self.hits = 0
        self.last_headers: dict[str, str] = {}
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                target.hits += 1
                target.last_headers = {k.lower(): v for k, v in self.headers.items()}
                self.send_response(target.status)
                self.send_header("Content-Length", str(len(target.body)))
                self.end_headers()
                self.wfile.write(target.body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/health``."""
        return f"http://127.0.0.1:{self.port}/health"

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(TIMEOUT)


# ----------------------------------------------------------------------------------------------
# Listeners for the checks
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tcp_listener() -> Iterator[int]:
    """A listening TCP socket on 127.0.0.1 (its port), closed at the end of the block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])
