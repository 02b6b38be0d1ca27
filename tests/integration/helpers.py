"""Shared pieces of the integration tests: a real app, misbehaving upstreams, sidecars, clients.

* :class:`TestApp` is a tiny raw ASGI app served by hypercorn on 127.0.0.1 (port 0): echo,
  streaming, uploads, status codes, slow answers and a WebSocket echo. It counts the requests
  it sees, so a test can prove that a rejected request never reached it.
* :class:`RawServer` is an upstream that does exactly what a test scripts, byte for byte (a
  response cut short, an unprompted ``100 Continue``...), for misbehaviour hypercorn won't do.
* :func:`write_sidecar_config` / :func:`start_sidecar` / :func:`open_chain` run in-process
  sidecars from YAML written to a temporary directory; :class:`SidecarProcess` runs one in a
  subprocess (for memory measurements).
* :class:`RawClient` sends bytes and reads responses with every read bounded in time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

import httpx
import trio
import yaml
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import Framework

from meshd.sidecar import Sidecar

REPO = Path(__file__).resolve().parents[2]
#: Bound for any single wait in these tests: a broken proxy fails a test, never hangs it.
TIMEOUT = 10.0

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# ----------------------------------------------------------------------------------------------
# Deterministic payloads
# ----------------------------------------------------------------------------------------------

_BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern_pieces(size: int, piece: int = len(_BLOCK)) -> list[int]:
    """Lengths of the pieces :func:`pattern` yields."""
    full, rest = divmod(size, piece)
    return [piece] * full + ([rest] if rest else [])


def pattern(size: int, piece: int = 65536) -> Iterator[bytes]:
    """``size`` deterministic bytes in pieces of at most ``piece`` (no piece is kept)."""
    piece = min(piece, len(_BLOCK))
    for n in pattern_pieces(size, piece):
        yield _BLOCK[:n]


def pattern_sha256(size: int, piece: int = 65536) -> str:
    """sha256 of what :func:`pattern` produces for ``size`` and ``piece``."""
    digest = hashlib.sha256()
    for data in pattern(size, piece):
        digest.update(data)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# The application
# ----------------------------------------------------------------------------------------------


class TestApp:
    """A raw ASGI app; ``requests`` counts the HTTP requests (and WebSocket handshakes) seen."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.requests = 0
        self.paths: list[str] = []
        self.upload_progress = 0
        self.gate = trio.Event()
        self.websockets = 0
        self.port = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            self.requests += 1
            await self._websocket(scope, receive, send)
        else:
            self.requests += 1
            self.paths.append(scope["path"])
            await self._http(scope, receive, send)

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "websocket.connect"
        if scope["path"] != "/ws":
            await send({"type": "websocket.close"})  # before accept: hypercorn answers 403
            return
        await send({"type": "websocket.accept"})
        self.websockets += 1
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            reply: Message = {"type": "websocket.send"}
            if message.get("bytes") is not None:
                reply["bytes"] = message["bytes"]
            else:
                reply["text"] = message.get("text") or ""
            await send(reply)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        head = scope["method"] == "HEAD"
        if path == "/stream":
            await self._stream(send, int(query.get("size", "0")), int(query.get("piece", "65536")))
        elif path == "/gated-stream":
            await _start(send, 200, [(b"content-type", b"application/octet-stream")])
            await send({"type": "http.response.body", "body": b"first-piece", "more_body": True})
            await self.gate.wait()
            await send({"type": "http.response.body", "body": b"second-piece"})
        elif path == "/upload":
            count, digest = await self._consume(receive, track=True)
            await _json(send, {"count": count, "sha256": digest}, head=head)
        elif path.startswith("/status/"):
            code = int(path.removeprefix("/status/"))
            await _drain(receive)
            if code in (204, 304) or code < 200:
                await _start(send, code, [])
                await send({"type": "http.response.body", "body": b""})
            else:
                body = f"status {code}".encode()
                await _start(send, code, [(b"content-length", str(len(body)).encode())])
                await send({"type": "http.response.body", "body": b"" if head else body})
        elif path == "/slow":
            await _drain(receive)
            await trio.sleep(int(query.get("ms", "1000")) / 1000)
            await _json(send, {"slow": True}, head=head)
        else:
            count, digest = await self._consume(receive, track=False)
            await _json(
                send,
                {
                    "method": scope["method"],
                    "path": path,
                    "query": scope["query_string"].decode("latin-1"),
                    "http_version": scope["http_version"],
                    "headers": [
                        [n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]
                    ],
                    "body_len": count,
                    "body_sha256": digest,
                },
                head=head,
            )

    async def _consume(self, receive: Receive, *, track: bool) -> tuple[int, str]:
        digest = hashlib.sha256()
        count = 0
        if track:
            self.upload_progress = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body: bytes = message.get("body", b"")
            digest.update(body)
            count += len(body)
            if track:
                self.upload_progress = count
            if not message.get("more_body", False):
                break
        return count, digest.hexdigest()

    @staticmethod
    async def _stream(send: Send, size: int, piece: int) -> None:
        await _start(send, 200, [(b"content-type", b"application/octet-stream")])
        for data in pattern(size, piece):
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _start(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


async def _json(send: Send, value: object, *, head: bool = False) -> None:
    body = json.dumps(value).encode()
    await _start(
        send,
        200,
        [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


async def serve_app(
    app: TestApp, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` with hypercorn on 127.0.0.1, port 0; reports the port; runs until cancelled."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("tests.integration.app")
    config.include_server_header = False
    config.keep_alive_timeout = 60

    class _Started:
        def started(self, binds: list[str] | None = None) -> None:
            assert binds
            app.port = int(binds[0].rsplit(":", 1)[1])
            task_status.started(app.port)

    await serve(cast("Framework", app), config, task_status=_Started())


# ----------------------------------------------------------------------------------------------
# Scripted upstreams and plain TCP servers
# ----------------------------------------------------------------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]


class RawServer:
    """A TCP server on 127.0.0.1 that runs ``handler`` per connection (it is closed after)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.connections = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; reports the port."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.handler(stream)


async def read_head(stream: trio.abc.ReceiveStream, buffer: bytearray | None = None) -> bytes:
    """Read up to and including the next ``\\r\\n\\r\\n``; b"" if the peer closed first."""
    buf = buffer if buffer is not None else bytearray()
    with trio.fail_after(TIMEOUT):
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                return b""
            buf += data
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    del buf[:end]
    return head


def canned(response: bytes, *, then: str = "close") -> Handler:
    """A handler that reads a request head, writes ``response``, then closes or resets."""

    async def handler(stream: trio.SocketStream) -> None:
        if not await read_head(stream):
            return
        if response:
            await stream.send_all(response)
        if then == "reset":
            reset(stream)

    return handler


def reset(stream: trio.SocketStream) -> None:
    """Make closing ``stream`` send a TCP RST."""
    stream.socket.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )


async def echo_until_eof(stream: trio.SocketStream) -> None:
    """Echo everything, and half-close once the peer has."""
    with trio.fail_after(TIMEOUT * 3):
        while True:
            data = await stream.receive_some(65536)
            if not data:
                await stream.send_eof()
                return
            await stream.send_all(data)


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[None]:
    """``count`` connections to 127.0.0.1:``port`` that never send a byte, closed after.

    Connects are started without waiting for them (the server's backlog takes them).
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            socks.append(sock)
        yield
    finally:
        for sock in socks:
            sock.close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------------------------
# Sidecars
# ----------------------------------------------------------------------------------------------


def write_sidecar_config(
    directory: Path,
    *,
    service: str,
    app_port: int,
    listeners: list[dict[str, Any]],
    clusters: list[dict[str, Any]] | None = None,
    route_tables: list[dict[str, Any]] | None = None,
    admin_port: int = 0,
    version: int = 1,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``bootstrap.yaml`` and ``snapshot.yaml`` into ``directory``; returns the bootstrap."""
    directory.mkdir(parents=True, exist_ok=True)
    snapshot = {
        "version": version,
        "listeners": listeners,
        "route_tables": route_tables or [],
        "clusters": clusters or [],
    }
    (directory / "snapshot.yaml").write_text(yaml.safe_dump(snapshot))
    bootstrap = {
        "service": service,
        "app": f"127.0.0.1:{app_port}",
        "admin": f"127.0.0.1:{admin_port}",
        "snapshot": {"file": "snapshot.yaml"},
        "drain_timeout_s": 2,
        # Tests here are not about the drain delay: stop at once.
        "drain_delay_s": 0,
        **(extra or {}),
    }
    path = directory / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    return path


def cluster(name: str, port: int, *, service: str | None = None, **fields: Any) -> dict[str, Any]:
    """A one-endpoint cluster on 127.0.0.1."""
    return {
        "name": name,
        "service": service or name,
        "endpoints": [{"host": "127.0.0.1", "port": port}],
        **fields,
    }


async def start_sidecar(nursery: trio.Nursery, bootstrap: Path) -> Sidecar:
    """Run an in-process sidecar in ``nursery`` until it is cancelled."""
    sidecar: Sidecar = await nursery.start(Sidecar(bootstrap).run)
    return sidecar


def port_of(sidecar: Sidecar, listener: str) -> int:
    """The port ``listener`` of ``sidecar`` is bound to."""
    return sidecar.listeners.slots[listener].port


@dataclass
class Chain:
    """Client -> outbound sidecar (service web) -> inbound sidecar (service api) -> app."""

    outbound: Sidecar
    inbound: Sidecar
    #: The outbound listener the client talks to.
    port: int

    def endpoint_created(self, sidecar: Sidecar, cluster_name: str) -> int:
        """Upstream connections ``sidecar`` opened for ``cluster_name``."""
        return sum(e["created"] for e in _endpoints(sidecar, cluster_name))


def _endpoints(sidecar: Sidecar, cluster_name: str) -> list[dict[str, Any]]:
    for info in sidecar.clusters_info():
        if info["name"] == cluster_name:
            return cast("list[dict[str, Any]]", info["endpoints"])
    raise KeyError(cluster_name)


async def open_chain(
    nursery: trio.Nursery,
    directory: Path,
    app_port: int,
    *,
    inbound: dict[str, Any] | None = None,
    outbound: dict[str, Any] | None = None,
    route_tables: list[dict[str, Any]] | None = None,
) -> Chain:
    """Start the inbound sidecar, then the outbound one pointed at its port.

    ``inbound``/``outbound`` add fields to the respective listener; with ``route_tables`` the
    outbound listener uses the table called ``main`` (whose backends may name cluster ``api``).
    """
    inbound_path = write_sidecar_config(
        directory / "api",
        service="api",
        app_port=app_port,
        listeners=[
            {"name": "inbound", "direction": "inbound", "address": "127.0.0.1:0", **(inbound or {})}
        ],
    )
    inbound_sidecar = await start_sidecar(nursery, inbound_path)
    out_listener: dict[str, Any] = {
        "name": "api",
        "direction": "outbound",
        "address": "127.0.0.1:0",
        **(outbound or {}),
    }
    if route_tables:
        out_listener["route_table"] = "main"
    else:
        out_listener["cluster"] = "api"
    outbound_path = write_sidecar_config(
        directory / "web",
        service="web",
        app_port=closed_port(),
        listeners=[out_listener],
        clusters=[cluster("api", port_of(inbound_sidecar, "inbound"))],
        route_tables=route_tables,
    )
    outbound_sidecar = await start_sidecar(nursery, outbound_path)
    return Chain(outbound_sidecar, inbound_sidecar, port_of(outbound_sidecar, "api"))


async def admin_get(sidecar: Sidecar, path: str) -> httpx.Response:
    """GET an admin API path of an in-process sidecar."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sidecar.admin_port}") as client:
        with trio.fail_after(TIMEOUT):
            return await client.get(path)


# ----------------------------------------------------------------------------------------------
# A sidecar in a subprocess
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SidecarProcess:
    """``python -m meshd run -c BOOTSTRAP`` in a subprocess; ports read from its ready line."""

    bootstrap: Path
    proc: subprocess.Popen[bytes] | None = None
    listeners: list[str] = field(default_factory=list)
    admin_port: int = 0
    stderr_path: Path | None = None

    async def start(self) -> None:
        """Start and wait (bounded) for the ``ready`` log line."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("NOTIFY_SOCKET", None)
        self.stderr_path = self.bootstrap.with_suffix(".stderr")
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshd", "run", "-c", str(self.bootstrap)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=str(REPO),
            )
        with trio.fail_after(30):
            while True:
                ready = self._ready_line()
                if ready is not None:
                    self.listeners = list(ready["listeners"])
                    self.admin_port = int(ready["admin_port"])
                    return
                if self.proc.poll() is not None:
                    raise RuntimeError(f"meshd exited early: {self.stderr_path.read_text()}")
                await trio.sleep(0.05)

    def _ready_line(self) -> dict[str, Any] | None:
        assert self.stderr_path is not None
        return ready_record(self.stderr_path)

    def port(self, index: int = 0) -> int:
        """Port of the ``index``-th listener."""
        return int(self.listeners[index].rsplit(":", 1)[1])

    def status(self) -> dict[str, int]:
        """``VmRSS``/``VmHWM`` (and friends) of the process, in KiB."""
        assert self.proc is not None
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.startswith("Vm"):
                out[key] = int(value.split()[0])
        return out

    async def stop(self) -> None:
        """SIGTERM (drain), then SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            while proc.poll() is None:
                await trio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                while proc.poll() is None:
                    await trio.sleep(0.05)


# ----------------------------------------------------------------------------------------------
# Child processes (controld, meshd) shared by the process-level tests
# ----------------------------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """A child's environment: checkout on PYTHONPATH, no systemd/Consul/controld/meshctl vars."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LISTEN_", "NOTIFY_", "CONSUL_", "CONTROLD_", "MESHCTL_"))
    }
    env["PYTHONPATH"] = str(REPO)
    return env


def log_records(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a process's output (other lines skipped)."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def ready_record(path: Path) -> dict[str, Any] | None:
    """The ``ready`` log line of a controld/meshd output file, once written."""
    for record in log_records(path):
        if record.get("event") == "ready":
            return record
    return None


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM ``proc`` (by its PID), SIGKILL if it does not exit in time; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


# ----------------------------------------------------------------------------------------------
# A raw client
# ----------------------------------------------------------------------------------------------


@dataclass
class Response:
    """A response as read off the wire."""

    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    raw_head: bytes
    body: bytes = b""
    #: Status codes of 1xx responses that came before this one.
    interim: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The (last) value of header ``name``, if present."""
        name = name.lower()
        found = None
        for n, v in self.headers:
            if n == name:
                found = v
        return found

    def header_all(self, name: str) -> list[str]:
        """Every value of header ``name``."""
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def parse_head(raw: bytes) -> Response:
    """Parse a response head (status line and headers, ending with an empty line)."""
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return Response(int(code), reason, version, headers, raw)


class RawClient:
    """One TCP connection; sends bytes and reads responses, each read bounded by a timeout."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[RawClient]:
        """Connect to 127.0.0.1:``port``; closed on exit."""
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            yield cls(stream)
        finally:
            await trio.aclose_forcefully(stream)

    async def send(self, data: bytes) -> None:
        """Send ``data``."""
        with trio.fail_after(TIMEOUT):
            await self.stream.send_all(data)

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        self.buffer += data
        return True

    async def read_head(self, *, timeout: float = TIMEOUT, skip_interim: bool = True) -> Response:
        """Read the next response head; 1xx heads (but 101) are collected into ``interim``."""
        interim: list[int] = []
        with trio.fail_after(timeout):
            while True:
                while b"\r\n\r\n" not in self.buffer:
                    if not await self._fill():
                        raise EOFError(f"connection closed before a response head: {self.buffer!r}")
                end = self.buffer.index(b"\r\n\r\n") + 4
                response = parse_head(bytes(self.buffer[:end]))
                del self.buffer[:end]
                if skip_interim and 100 <= response.status < 200 and response.status != 101:
                    interim.append(response.status)
                    continue
                response.interim = interim
                return response

    async def body_pieces(
        self, response: Response, *, head_request: bool = False, timeout: float = TIMEOUT
    ) -> AsyncGenerator[bytes, None]:
        """The body of ``response`` as it arrives (de-chunked); each read bounded by ``timeout``."""
        status = response.status
        if head_request or status < 200 or status in (204, 304):
            return
        te = response.header("transfer-encoding")
        length = response.header("content-length")
        chunked = te is not None
        if chunked:
            assert te is not None and te.lower() == "chunked", te
        left = int(length) if length is not None and not chunked else -1
        while True:
            if chunked:
                size_line = await self._line(timeout)
                left = int(size_line.split(b";")[0], 16)
                if left == 0:
                    while await self._line(timeout):  # trailers, then the empty line
                        pass
                    return
            elif left == 0:
                return
            if left < 0:  # delimited by the end of the connection
                if not self.buffer:
                    with trio.fail_after(timeout):
                        if not await self._fill():
                            return
            else:
                size = left
                while left:
                    if not self.buffer:
                        with trio.fail_after(timeout):
                            if not await self._fill():
                                raise EOFError(f"closed with {left} of {size} body bytes missing")
                    take = min(left, len(self.buffer))
                    piece = bytes(self.buffer[:take])
                    del self.buffer[:take]
                    left -= take
                    yield piece
                if chunked and await self._line(timeout) != b"":
                    raise AssertionError("chunk not followed by CRLF")
                continue
            data = bytes(self.buffer)
            self.buffer.clear()
            yield data

    async def _line(self, timeout: float) -> bytes:
        with trio.fail_after(timeout):
            while b"\r\n" not in self.buffer:
                if not await self._fill():
                    raise EOFError("connection closed inside a chunked body")
        end = self.buffer.index(b"\r\n")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def read_response(
        self, *, head_request: bool = False, timeout: float = TIMEOUT
    ) -> Response:
        """Read the next complete response."""
        response = await self.read_head(timeout=timeout)
        pieces = [
            p async for p in self.body_pieces(response, head_request=head_request, timeout=timeout)
        ]
        response.body = b"".join(pieces)
        return response

    async def wait_closed(self, *, timeout: float = TIMEOUT) -> str:
        """Wait for the peer to end the connection: ``"eof"`` or ``"reset"``.

        Bytes that arrive meanwhile fail the check (nothing is expected after a final answer).
        """
        if self.buffer:
            raise AssertionError(f"unexpected bytes before close: {bytes(self.buffer)!r}")
        with trio.fail_after(timeout):
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return "reset"
        if data:
            raise AssertionError(f"unexpected bytes instead of a close: {data!r}")
        return "eof"

    async def read_until_closed(self, *, timeout: float = TIMEOUT) -> tuple[bytes, str]:
        """Everything until the peer ends the connection, and how it ended."""
        data = bytearray(self.buffer)
        self.buffer.clear()
        with trio.fail_after(timeout):
            while True:
                try:
                    piece = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return bytes(data), "reset"
                if not piece:
                    return bytes(data), "eof"
                data += piece


def request(
    method: str,
    target: str,
    *,
    host: str = "api.test",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """A request in bytes; ``Content-Length`` is added for ``body`` unless headers frame it."""
    lines = [f"{method} {target} {version}"]
    if host:
        lines.append(f"Host: {host}")
    given = [(n, v) for n, v in headers or []]
    if body is not None and not any(
        n.lower() in ("content-length", "transfer-encoding") for n, _ in given
    ):
        given.append(("Content-Length", str(len(body))))
    lines.extend(f"{n}: {v}" for n, v in given)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def app_headers(echo: dict[str, Any]) -> dict[str, list[str]]:
    """Headers an echo response says the app saw, by lower-case name."""
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


async def start_inbound(
    nursery: trio.Nursery, directory: Path, app_port: int, **listener: Any
) -> tuple[Sidecar, int]:
    """One sidecar (service api) whose inbound listener forwards to the app on ``app_port``."""
    path = write_sidecar_config(
        directory,
        service="api",
        app_port=app_port,
        listeners=[
            {"name": "inbound", "direction": "inbound", "address": "127.0.0.1:0", **listener}
        ],
    )
    sidecar = await start_sidecar(nursery, path)
    return sidecar, port_of(sidecar, "inbound")


async def start_outbound(
    nursery: trio.Nursery,
    directory: Path,
    upstream_port: int,
    *,
    route_tables: list[dict[str, Any]] | None = None,
    cluster_fields: dict[str, Any] | None = None,
    **listener: Any,
) -> tuple[Sidecar, int]:
    """One sidecar (service web) whose outbound listener ``out`` sends to cluster ``up``.

    With ``route_tables`` the listener uses the table ``main``; otherwise everything goes to
    ``up`` (one endpoint, 127.0.0.1:``upstream_port``).
    """
    out: dict[str, Any] = {
        "name": "out",
        "direction": "outbound",
        "address": "127.0.0.1:0",
        **listener,
    }
    if route_tables:
        out["route_table"] = "main"
    else:
        out["cluster"] = "up"
    path = write_sidecar_config(
        directory,
        service="web",
        app_port=closed_port(),
        listeners=[out],
        clusters=[cluster("up", upstream_port, **(cluster_fields or {}))],
        route_tables=route_tables,
    )
    sidecar = await start_sidecar(nursery, path)
    return sidecar, port_of(sidecar, "out")
