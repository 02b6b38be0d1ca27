"""Building blocks of the restart tests: socket activation as systemd does it, steady load.

* :func:`spawn_meshd` starts ``python -m meshd run`` either plainly or with listening sockets
  the test holds, passed exactly as systemd passes them: moved to fds 3, 4, ..., with
  ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` set to the pid of the process that
  then runs meshd (a tiny exec wrapper, :data:`ACTIVATE`, so the pid is known).
  :func:`activated` is that wrapping for any command (the packaging tests run the installed
  meshd of a chroot through ``chroot(8)``, which execs it in the same process).
* :class:`EchoApp` is the service's app (GET and POST) in a subprocess.
* :class:`Load` runs keep-alive and new-connection clients (GET and POST) against a caller
  sidecar's outbound listener; every client is bounded in requests and time.
* :class:`RegistryWatch` samples the registry, so a test can tell whether an instance was ever
  missing.

Every process is started here with its PID kept and stopped by it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cp_mesh_support import REPO, TIMEOUT
from helpers import clean_env

ACTIVATE = """
import fcntl, os, sys
sep = sys.argv.index("--")
names, fds, argv = sys.argv[1], [int(fd) for fd in sys.argv[2:sep]], sys.argv[sep + 1:]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names, LISTEN_PID=str(os.getpid()))
os.execvp(argv[0], argv)
"""

APP = """
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._answer(b"get " + self.path.encode() + b"\\n")

    def do_POST(self):
        size = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(size)
        self._answer(b"post " + str(len(data)).encode() + b"\\n")

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def listening_socket(port: int) -> socket.socket:
    """What ``meshd@.socket`` holds: a listening socket on 127.0.0.1:``port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def activated(
    workdir: Path, sockets: Sequence[tuple[str, socket.socket]], argv: Sequence[str]
) -> tuple[list[str], list[int]]:
    """The command that runs ``argv`` with ``sockets`` (name, socket) passed as systemd passes
    them, and the descriptors the child must inherit (``pass_fds``). ``argv`` must exec the
    daemon in the same process (``LISTEN_PID`` is the wrapper's pid)."""
    fds = [sock.fileno() for _name, sock in sockets]
    names = ":".join(name for name, _sock in sockets)
    wrapper = workdir / "activate.py"
    wrapper.write_text(ACTIVATE)
    return [sys.executable, str(wrapper), names, *map(str, fds), "--", *argv], fds


def spawn_meshd(
    workdir: Path,
    bootstrap: Path,
    log_path: Path,
    *,
    sockets: Sequence[tuple[str, socket.socket]] = (),
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """``meshd run -c bootstrap``; with ``sockets`` (name, socket), socket-activated."""
    command = [sys.executable, "-m", "meshd", "run", "-c", str(bootstrap), *extra_args]
    fds: list[int] = []
    if sockets:
        command, fds = activated(workdir, sockets, command)
    with log_path.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            pass_fds=fds,
        )


class EchoApp:
    """The service's app: ``GET`` answers ``get <path>``, ``POST`` answers ``post <length>``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        """Start it and read its port (one line, printed right after binding)."""
        script = self.workdir / "echo_app.py"
        script.write_text(APP)
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=clean_env(),
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def stop(self) -> None:
        """Stop it by PID."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(TIMEOUT)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Failure:
    """One failed request: when (seconds since the load started), which client, what."""

    at_s: float
    client: str
    what: str


@dataclass
class LoadResult:
    """What the clients saw."""

    ok: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    #: Answers that said ``Connection: close`` on a keep-alive connection, by client.
    closes: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Requests sent."""
        return sum(self.ok.values()) + len(self.failures)


class Load:
    """Keep-alive and new-connection clients, each alternating GET and POST (1 KiB body).

    With ``direct_port`` one more keep-alive client talks to that port (the restarted
    sidecar's inbound listener) rather than through the caller.
    Bounded: every client stops at :meth:`stop`, after ``max_seconds``, or once the clients
    together sent ``max_requests``.
    """

    def __init__(
        self,
        port: int,
        *,
        keepalive_clients: int = 3,
        new_connection_clients: int = 3,
        pause_s: float = 0.02,
        max_requests: int = 20000,
        max_seconds: float = 90.0,
        direct_port: int | None = None,
    ) -> None:
        self.port = port
        self.pause_s = pause_s
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = 0
        self._started = 0.0
        keepalive = [(f"keepalive-{i}", port) for i in range(keepalive_clients)]
        if direct_port is not None:
            keepalive.append(("keepalive-direct", direct_port))
        self._threads = [
            threading.Thread(target=self._keepalive, args=client, daemon=True)
            for client in keepalive
        ] + [
            threading.Thread(target=self._fresh, args=(f"new-connection-{i}",), daemon=True)
            for i in range(new_connection_clients)
        ]

    def start(self) -> None:
        """Start the clients."""
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self) -> LoadResult:
        """Stop the clients and wait for them (bounded)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT)
        return self.result

    def sent(self) -> int:
        """Requests sent so far."""
        with self._lock:
            return self._sent

    def wait_more(self, count: int, *, timeout: float = TIMEOUT) -> None:
        """Block (bounded) until ``count`` more requests have completed."""
        goal = self.result.total + count
        deadline = time.monotonic() + timeout
        while self.result.total < goal:
            if time.monotonic() > deadline:
                raise AssertionError(f"load stalled at {self.result.total} requests")
            time.sleep(0.05)

    def _claim(self) -> bool:
        if self._stop.is_set() or time.monotonic() - self._started > self.max_seconds:
            return False
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _record(self, client: str, kind: str, error: str | None) -> None:
        with self._lock:
            if error is None:
                self.result.ok[kind] += 1
            else:
                at = round(time.monotonic() - self._started, 3)
                self.result.failures.append(Failure(at, client, f"{kind}: {error}"))

    def _exchange(
        self, conn: http.client.HTTPConnection, n: int, close: bool, client: str = ""
    ) -> tuple[str, str]:
        headers = {"Connection": "close"} if close else {}
        if n % 2:
            body = b"x" * 1024
            conn.request("POST", "/echo", body=body, headers=headers)
            expected = b"post 1024\n"
            kind = "POST"
        else:
            conn.request("GET", f"/get/{n}", headers=headers)
            expected = f"get /get/{n}\n".encode()
            kind = "GET"
        resp = conn.getresponse()
        data = resp.read()
        if not close and (resp.getheader("connection") or "").lower() == "close":
            with self._lock:
                self.result.closes[client] += 1
        if resp.status != 200 or data != expected:
            return kind, f"status {resp.status} {resp.getheader('x-meshd-error')} {data[:80]!r}"
        return kind, ""

    def _keepalive(self, name: str, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        n = 0
        try:
            while self._claim():
                n += 1
                kind = "POST" if n % 2 else "GET"
                try:
                    kind, error = self._exchange(conn, n, close=False, client=name)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()  # the next request opens a new connection
                    error = f"{type(exc).__name__}: {exc}"
                self._record(name, f"keepalive {kind}", error or None)
                time.sleep(self.pause_s)
        finally:
            conn.close()

    def _fresh(self, name: str) -> None:
        n = 0
        while self._claim():
            n += 1
            kind = "POST" if n % 2 else "GET"
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
            try:
                kind, error = self._exchange(conn, n, close=True)
            except (OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:
                conn.close()
            self._record(name, f"new-connection {kind}", error or None)
            time.sleep(self.pause_s)


class RegistryWatch:
    """Samples the registry's catalog for one service instance every 50 ms (bounded)."""

    def __init__(self, registry_url: str, token: str, service: str, instance: str) -> None:
        self.url = f"{registry_url}/v1/catalog/service/{service}"
        self.headers = {"X-Consul-Token": token}
        self.instance = instance
        self.present = 0
        self.missing: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def instances(self) -> set[str]:
        """Instance IDs the registry has for the service now."""
        resp = httpx.get(self.url, headers=self.headers, timeout=5.0)
        resp.raise_for_status()
        return {str(entry["ServiceID"]) for entry in resp.json()}

    def start(self) -> None:
        """Start sampling."""
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (bounded)."""
        self._stop.set()
        self._thread.join(TIMEOUT)

    def _run(self) -> None:
        deadline = self._started + 120.0
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                found = self.instance in self.instances()
            except httpx.HTTPError:
                found = False
            if found:
                self.present += 1
            else:
                self.missing.append(round(time.monotonic() - self._started, 3))
            self._stop.wait(0.05)


def load_report(what: str, result: LoadResult, watch: RegistryWatch) -> str:
    """What the clients and the registry watch saw, with the first failures."""
    lines = [
        f"{what}: {result.total} requests, {len(result.failures)} failed; "
        f"answered by kind: {dict(sorted(result.ok.items()))}; "
        f"registry samples: {watch.present} with {watch.instance}, {len(watch.missing)} "
        f"without; Connection: close answers on keep-alive connections: {dict(result.closes)}",
    ]
    lines += [f"  {f.at_s:7.3f}s {f.client}: {f.what}" for f in result.failures[:30]]
    return "\n".join(lines)


def log_events(path: Path, name: str) -> list[dict[str, object]]:
    """The JSON log lines of a process whose ``event`` is ``name``."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                out.append(record)
    return out


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie we reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


__all__ = [
    "REPO",
    "EchoApp",
    "Failure",
    "Load",
    "LoadResult",
    "RegistryWatch",
    "activated",
    "listening_socket",
    "load_report",
    "log_events",
    "pid_alive",
    "spawn_meshd",
]
