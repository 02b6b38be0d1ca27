"""Misbehaving backend processes for resilience tests.

A backend is a real process (``python backends.py``) running a small threaded HTTP/1.1 server
on 127.0.0.1. What it does with each request is its *mode*, set when it starts and changed
while it runs:

* ``ok``: 200 with body ``<name>\\n`` (and header ``x-backend: <name>``);
* ``status``: answers ``status`` (e.g. 503), same body and header;
* ``reset``: reads the request and resets the connection (RST, no answer);
* ``hang``: reads the request and never answers (holds the connection until stopped);
* ``slow``: answers 200 after ``delay_s``;
* ``die``: the process exits (code 3) as soon as a request arrived.

A backend that refuses connections is one that was stopped (:meth:`Backend.stop`) or killed
(:meth:`Backend.kill9`): its port stays known and closed.

Every request it saw (not the control requests below) is counted before the mode acts, in
memory and in ``<name>.count`` (rewritten atomically), so the count survives ``die`` and
``kill -9``. Control requests, answered whatever the mode: ``GET /__backend/state`` (JSON:
name, mode, status, delay_s, requests) and ``PUT /__backend/mode`` (JSON body with ``mode``
and optionally ``status`` / ``delay_s``).

:class:`Backends` starts them and stops (SIGKILL) every one still running when it closes, so a
failing test leaves nothing behind; the ``backends`` fixture (conftest) wraps it.
This module runs its server with the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["MODES", "Backend", "BackendState", "Backends", "running_backends"]

MODES = ("ok", "status", "reset", "hang", "slow", "die")
CONTROL_PREFIX = "/__backend/"
#: Bound of every wait of the controller (start, stop, control requests).
TIMEOUT = 15.0
#: A hung request holds its connection at most this long (the process is stopped sooner).
_HANG_S = 300.0
_DIE_CODE = 3


# ----------------------------------------------------------------------------------------------
# The server (runs in the backend process)
# ----------------------------------------------------------------------------------------------


@dataclass
class BackendState:
    """A backend's mode and what it has seen."""

    name: str
    mode: str = "ok"
    status: int = 200
    delay_s: float = 0.0
    requests: int = 0

    def as_json(self) -> dict[str, Any]:
        """JSON-able copy."""
        return {
            "name": self.name,
            "mode": self.mode,
            "status": self.status,
            "delay_s": self.delay_s,
            "requests": self.requests,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    #: socketserver's default listen backlog is 5: on a loaded host a burst of connects
    #: overflows it before the accept thread runs, and the kernel drops the SYNs, so those
    #: connects (a sidecar's, its health probe's) stall for the 1 s SYN retransmission.
    #: Real servers listen with a deep backlog; so does this one.
    request_queue_size = 128

    def __init__(self, state: BackendState, count_file: Path) -> None:
        self.state = state
        self.count_file = count_file
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    def count(self) -> tuple[str, int, float]:
        """Count one request (memory and file); the mode, status and delay to act on."""
        with self.lock:
            self.state.requests += 1
            tmp = self.count_file.with_name(self.count_file.name + ".tmp")
            tmp.write_text(str(self.state.requests))
            os.replace(tmp, self.count_file)
            return self.state.mode, self.state.status, self.state.delay_s

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients (sidecars) closing mid-answer are part of these tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith(CONTROL_PREFIX):
            self._control(body)
            return
        mode, status, delay_s = self.server.count()
        if mode == "die":
            os._exit(_DIE_CODE)
        if mode == "reset":
            # Linger 0: close() sends RST instead of FIN, as a crashing peer's kernel would.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # The socket closes for real only once its file objects are closed too.
            self.rfile.close()
            self.connection.close()
            self.close_connection = True
            return
        if mode == "hang":
            self.server.stopping.wait(_HANG_S)
            self.close_connection = True
            return
        if mode == "slow":
            self.server.stopping.wait(delay_s)
        self._answer(status if mode == "status" else 200, f"{self.server.state.name}\n".encode())

    def _control(self, body: bytes) -> None:
        state = self.server.state
        if self.path == CONTROL_PREFIX + "mode" and self.command == "PUT":
            doc = json.loads(body or b"{}")
            if doc.get("mode") not in MODES:
                self._answer(400, b"unknown mode\n")
                return
            with self.server.lock:
                state.mode = str(doc["mode"])
                state.status = int(doc.get("status", state.status))
                state.delay_s = float(doc.get("delay_s", state.delay_s))
        elif self.path != CONTROL_PREFIX + "state":
            self._answer(404, b"no such control endpoint\n")
            return
        with self.server.lock:
            doc = state.as_json()
        self._answer(200, json.dumps(doc).encode(), "application/json")

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-backend", self.server.state.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def serve(argv: list[str] | None = None) -> None:
    """The backend process: bind, write ``<name>.ready`` (port and pid), serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--mode", default="ok", choices=MODES)
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--delay-s", type=float, default=0.0)
    args = parser.parse_args(argv)
    state = BackendState(args.name, args.mode, args.status, args.delay_s)
    server = _Server(state, args.dir / f"{args.name}.count")
    server.count_file.write_text("0")
    ready = args.dir / f"{args.name}.ready"
    tmp = ready.with_name(ready.name + ".tmp")
    tmp.write_text(json.dumps({"port": server.server_address[1], "pid": os.getpid()}))
    os.replace(tmp, ready)
    server.serve_forever(poll_interval=0.05)


# ----------------------------------------------------------------------------------------------
# The controller (runs in the test)
# ----------------------------------------------------------------------------------------------


class Backend:
    """One backend process, controlled by the test (by pid and through its control endpoint)."""

    def __init__(self, name: str, workdir: Path, proc: subprocess.Popen[bytes], port: int) -> None:
        self.name = name
        self.workdir = workdir
        self.proc = proc
        #: Stays the same after the process is gone (then connections are refused).
        self.port = port

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """The process has not exited."""
        return self.proc.poll() is None

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def state(self) -> dict[str, Any]:
        """``GET /__backend/state`` (the backend must be alive)."""
        return self._control("GET", "state")

    def set_mode(
        self, mode: str, *, status: int | None = None, delay_s: float | None = None
    ) -> None:
        """Change what the backend does with the next requests."""
        doc: dict[str, Any] = {"mode": mode}
        if status is not None:
            doc["status"] = status
        if delay_s is not None:
            doc["delay_s"] = delay_s
        got = self._control("PUT", "mode", doc)
        assert got["mode"] == mode, got

    def count(self) -> int:
        """Requests seen so far (from the count file, so also after the process is gone)."""
        text = (self.workdir / f"{self.name}.count").read_text().strip()
        return int(text or 0)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it is still there after :data:`TIMEOUT`; the exit code."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=TIMEOUT)

    def kill9(self) -> int:
        """``kill -9`` (by pid) and reap; the exit code."""
        if self.alive:
            self.proc.kill()
        return self.proc.wait(timeout=TIMEOUT)

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process to exit (e.g. after a request in ``die`` mode)."""
        return self.proc.wait(timeout=timeout)

    def _control(self, method: str, what: str, doc: Any = None) -> dict[str, Any]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            body = None if doc is None else json.dumps(doc).encode()
            conn.request(method, CONTROL_PREFIX + what, body=body)
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, f"{self.name}: {method} {what}: {resp.status} {data!r}"
            result: dict[str, Any] = json.loads(data)
            return result
        finally:
            conn.close()


class Backends:
    """Starts backends in ``workdir``; :meth:`close` kills every one still running."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Backend] = []

    def start(
        self, name: str, mode: str = "ok", *, status: int = 200, delay_s: float = 0.0
    ) -> Backend:
        """Start backend ``name`` and wait (bounded) until it listens."""
        assert mode in MODES, mode
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "--name", name]
        argv += ["--dir", str(self.workdir), "--mode", mode]
        argv += ["--status", str(status), "--delay-s", str(delay_s)]
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + TIMEOUT
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=TIMEOUT)
                raise AssertionError(f"backend {name} did not start:\n{log.read_text()}")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        backend = Backend(name, self.workdir, proc, int(info["port"]))
        self.started.append(backend)
        return backend

    def close(self) -> None:
        """Kill (SIGKILL, by pid) and reap every backend still running."""
        for backend in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                backend.kill9()

    def __enter__(self) -> Backends:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_backends(workdir: Path) -> Iterator[Backends]:
    """:class:`Backends` in ``workdir``, all killed at the end however the block ends."""
    backends = Backends(workdir)
    try:
        yield backends
    finally:
        backends.close()


if __name__ == "__main__":
    serve()
