"""Helpers of the sidecar lifecycle tests: a real ``meshd`` subprocess, an upstream app, load.

Everything here is synchronous and thread-based on purpose: the sidecar under test is another
process, and the clients and the upstream app must keep running while a test blocks in a
signal/wait sequence. Every loop is bounded in count and time, and every process started here
is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from ports import free_port as free_port  # noqa: PLC0414 (re-exported)

__all__ = [
    "REPO",
    "LoadGenerator",
    "LoadResult",
    "SidecarProcess",
    "UpstreamApp",
    "bootstrap_doc",
    "child_env",
    "free_port",
    "http_get",
    "running_sidecar",
    "snapshot_doc",
    "wait_for",
    "write_yaml",
]

REPO = Path(__file__).resolve().parents[2]
"""The repository root (what ``PYTHONPATH`` of the sidecar subprocess points at)."""

# Variables that would make the child believe it runs under systemd (the test runner itself
# might), so they are never inherited; tests set them explicitly.
_SERVICE_MANAGER_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
)


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a sidecar subprocess: ours, minus service-manager variables."""
    env = {k: v for k, v in os.environ.items() if k not in _SERVICE_MANAGER_ENV}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("MESHD_LOG_LEVEL", None)
    if extra:
        env.update(extra)
    return env


def write_yaml(path: Path, doc: Any) -> None:
    """Replace ``path`` atomically, so a reload never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


def bootstrap_doc(
    *,
    app_port: int,
    admin_port: int = 0,
    snapshot: str = "snapshot.yaml",
    drain_timeout_s: float = 10.0,
    drain_delay_s: float = 0.0,
    **more: Any,
) -> dict[str, Any]:
    """A bootstrap document (admin on a free port by default).

    ``drain_delay_s`` defaults to 0 (not meshd's 5 s): most tests here are about something
    else than the delay, and SIGTERM should start closing at once.
    """
    return {
        "service": "web",
        "app": f"127.0.0.1:{app_port}",
        "admin": f"127.0.0.1:{admin_port}",
        "snapshot": {"file": snapshot},
        "drain_timeout_s": drain_timeout_s,
        "drain_delay_s": drain_delay_s,
        **more,
    }


def snapshot_doc(
    *,
    version: int,
    upstream_port: int,
    listen_port: int = 0,
    timeout_s: float = 10.0,
    extra_listeners: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A snapshot whose HTTP listener ``api`` routes everything to the upstream app."""
    return {
        "version": version,
        "listeners": [
            {
                "name": "api",
                "direction": "outbound",
                "address": f"127.0.0.1:{listen_port}",
                "route_table": "main",
            },
            *(extra_listeners or []),
        ],
        "route_tables": [
            {
                "name": "main",
                "routes": [
                    {
                        "name": "all",
                        "match": {"path": {"prefix": "/"}},
                        "backends": [{"cluster": "app", "weight": 1}],
                        "timeout_s": timeout_s,
                    }
                ],
            }
        ],
        "clusters": [
            {
                "name": "app",
                "service": "app",
                "endpoints": [{"host": "127.0.0.1", "port": upstream_port}],
            }
        ],
    }


# -- HTTP client --------------------------------------------------------------------------------


def http_get(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    timeout: float = 10.0,
    host: str = "127.0.0.1",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: status, lower-cased headers, body."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


# -- upstream app -------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body leave in separate writes; with Nagle on, the second waits for the
    # client's delayed ACK (40 ms), which would cap a keep-alive connection at ~25 req/s.
    disable_nagle_algorithm = True
    server: _UpstreamServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/slow":
            ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
            self.server.app.enter_slow()
            try:
                # An Event wait, so stopping the app cuts the sleep short.
                self.server.app.stopping.wait(ms / 1000)
            finally:
                self.server.app.leave_slow()
        self.server.app.count()
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True
    # Handler sockets are woken by UpstreamApp.close; server_close then joins their threads.
    block_on_close = True

    def __init__(self, app: UpstreamApp) -> None:
        self.app = app
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.app.track(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.app.untrack(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client (the sidecar) closing mid-response is expected during drain tests.
        pass


class UpstreamApp:
    """A threaded HTTP/1.1 app on 127.0.0.1: ``/`` answers at once, ``/slow?ms=N`` after N ms."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._lock = threading.Condition()
        self._conns: set[socket.socket] = set()
        self._slow_in_flight = 0
        self.requests = 0
        self._server = _UpstreamServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        """The port the app listens on."""
        return int(self._server.server_address[1])

    def __enter__(self) -> UpstreamApp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, wake every handler thread, join them."""
        self.stopping.set()
        self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join(timeout=10)

    # called from handler threads
    def track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def count(self) -> None:
        with self._lock:
            self.requests += 1

    def enter_slow(self) -> None:
        with self._lock:
            self._slow_in_flight += 1
            self._lock.notify_all()

    def leave_slow(self) -> None:
        with self._lock:
            self._slow_in_flight -= 1
            self._lock.notify_all()

    def wait_slow_in_flight(self, n: int, *, timeout: float = 15.0) -> None:
        """Block until ``n`` ``/slow`` requests are being served at once."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._slow_in_flight >= n, timeout=timeout):
                raise AssertionError(
                    f"only {self._slow_in_flight} of {n} slow requests reached the app"
                )


# -- the sidecar process ------------------------------------------------------------------------


@dataclass
class Ready:
    """What the sidecar's ``ready`` log line says."""

    admin_port: int
    listeners: list[str]
    version: int


class SidecarProcess:
    """``python -m meshd run -c BOOTSTRAP`` (optionally under a wrapper such as
    ``systemd-socket-activate``), its stderr captured to a file."""

    def __init__(
        self,
        bootstrap: Path,
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        wrapper: list[str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.log_path = log_path
        self.command = [
            *(wrapper or []),
            sys.executable,
            "-m",
            "meshd",
            "run",
            "-c",
            str(bootstrap),
            *(extra_args or []),
        ]
        self.env = child_env(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_info: Ready | None = None

    @property
    def pid(self) -> int:
        """The process id (the same across a wrapper's exec)."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start the process (not waiting for it to be ready)."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    # -- output ---------------------------------------------------------------------------------

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines are skipped)."""
        out = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def events_named(self, name: str) -> list[dict[str, Any]]:
        """The log lines whose ``event`` is ``name``."""
        return [e for e in self.events() if e.get("event") == name]

    # -- state ----------------------------------------------------------------------------------

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, *, timeout: float = 30.0) -> Ready:
        """Wait for the ``ready`` log line; fail with the output if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events_named("ready")
            if found:
                ev = found[0]
                self.ready_info = Ready(
                    admin_port=int(ev["admin_port"]),
                    listeners=list(ev.get("listeners", [])),
                    version=int(ev.get("version", -1)),
                )
                return self.ready_info
            if not self.running():
                raise AssertionError(
                    f"sidecar exited with {self.returncode()} before ready:\n{self.output()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"sidecar not ready after {timeout} s:\n{self.output()}")

    def returncode(self) -> int | None:
        """The exit status, or None while running."""
        return None if self.proc is None else self.proc.poll()

    def send_signal(self, signum: signal.Signals) -> None:
        """Signal the process (by pid)."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, *, timeout: float) -> int:
        """The exit status; AssertionError with the output if still running after ``timeout``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"sidecar still running {timeout} s later:\n{self.output()}"
            ) from None

    def stop(self) -> None:
        """Make sure the process is gone: SIGTERM, then SIGKILL (by pid)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    # -- admin API ------------------------------------------------------------------------------

    @property
    def admin_port(self) -> int:
        """The admin port from the ready line."""
        assert self.ready_info is not None, "wait_ready() first"
        return self.ready_info.admin_port

    def admin(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        """Status and body of an admin request."""
        status, _headers, data = http_get(
            self.admin_port, path, method=method, headers=headers, body=body
        )
        return status, data

    def admin_post(self, path: str) -> tuple[int, bytes]:
        """A state-changing admin request as meshd's tools send it: POST, JSON body."""
        return self.admin(
            path, method="POST", headers={"Content-Type": "application/json"}, body=b"{}"
        )

    def admin_json(self, path: str) -> Any:
        """The JSON body of a successful admin GET."""
        status, body = self.admin(path)
        assert status == 200, f"GET {path}: {status} {body!r}"
        return json.loads(body)

    def listener_port(self, name: str) -> int:
        """The bound port of listener ``name``, from ``/listeners``."""
        for item in self.admin_json("/listeners"):
            if item["name"] == name:
                return int(str(item["address"]).rsplit(":", 1)[1])
        raise AssertionError(f"no listener {name!r}")

    def version(self) -> int:
        """The snapshot version in force, from ``/config_dump``."""
        return int(self.admin_json("/config_dump")["snapshot"]["version"])

    def stat(self, name: str) -> Any:
        """One counter of ``/stats``."""
        return self.admin_json("/stats").get(name)


@contextlib.contextmanager
def running_sidecar(
    bootstrap: Path,
    *,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    wrapper: list[str] | None = None,
    wait: bool = True,
) -> Iterator[SidecarProcess]:
    """Start a sidecar (and wait until ready unless ``wait`` is false); always stop it."""
    proc = SidecarProcess(
        bootstrap,
        log_path=log_path or bootstrap.with_name("meshd.log"),
        env=env,
        wrapper=wrapper,
    )
    try:
        proc.start()
        if wait:
            proc.wait_ready()
        yield proc
    finally:
        proc.stop()


# -- load generator -----------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What the clients saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Requests attempted."""
        return sum(self.statuses.values()) + len(self.errors)

    @property
    def failures(self) -> list[str]:
        """Every non-200 status and every exception, for assertion messages."""
        bad = [f"status {s} x{n}" for s, n in self.statuses.items() if s != 200]
        return bad + self.errors[:20]


class LoadGenerator:
    """A few client threads sending GETs over keep-alive connections.

    Runs until :meth:`stop`, ``max_requests`` in all, or ``max_seconds``, whichever is first.
    """

    def __init__(
        self,
        port: int,
        *,
        path: str = "/",
        threads: int = 4,
        max_requests: int = 3000,
        max_seconds: float = 20.0,
    ) -> None:
        self.port = port
        self.path = path
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._issued = 0
        self._stop = threading.Event()
        self._deadline = 0.0
        self._threads = [
            threading.Thread(target=self._worker, name=f"load-{i}", daemon=True)
            for i in range(threads)
        ]

    @property
    def completed(self) -> int:
        """Requests finished so far (answered or failed)."""
        with self._lock:
            return self.result.total

    @property
    def finished(self) -> bool:
        """Every client thread has stopped (budget, deadline or :meth:`stop`)."""
        return not any(t.is_alive() for t in self._threads)

    def start(self) -> None:
        """Start the client threads."""
        self._deadline = time.monotonic() + self.max_seconds
        for t in self._threads:
            t.start()

    def stop(self) -> LoadResult:
        """Stop issuing, join the threads, return the result."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        return self.result

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _claim(self) -> bool:
        if self._stop.is_set() or time.monotonic() > self._deadline:
            return False
        with self._lock:
            if self._issued >= self.max_requests:
                return False
            self._issued += 1
            return True

    def _worker(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            while self._claim():
                try:
                    conn.request("GET", self.path)
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    with self._lock:
                        self.result.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    self.result.statuses[status] += 1
        finally:
            conn.close()
