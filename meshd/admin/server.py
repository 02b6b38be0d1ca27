"""Serves the admin app: a small HTTP/1.1 server on Trio and httptools, local traffic only.

Why not hypercorn (which controld's admin API uses): the admin API answers a handful of small
requests from local tools, and hypercorn with its h2/wsproto/h11 stack cost a sidecar ~3.5 MB
of resident memory for that, in every process. This server does what the admin API needs:
HTTP/1.1 and 1.0 with keep-alive, bounded request heads and bodies, one request at a time per
connection, responses buffered and sent whole with ``Content-Length``. ``shutdown_nowait``
stops accepting, closes idle connections and lets in-flight requests finish within
``graceful_timeout``.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import httptools
import structlog
import trio

from meshd.errors import MeshdError
from meshd.net.listen import bind_tcp

__all__ = ["AdminBindError", "AdminServer", "AsgiApp"]

log = structlog.get_logger("meshd.admin")

#: An ASGI 3 application (``http`` scopes only).
AsgiApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

#: Bounds of a request: head size, body size, time to read a whole request once it began.
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
REQUEST_TIMEOUT_S = 10.0
#: An idle keep-alive connection is closed after this long.
KEEP_ALIVE_S = 60.0
_READ = 65536
_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 408: "Request Timeout"}


class AdminBindError(MeshdError):
    """The admin server could not listen on its address (in use, not local, ...)."""


class _BadRequest(Exception):
    """The request can't be parsed or is over a bound."""


@dataclass
class _Request:
    """One parsed request."""

    method: str
    http_version: str
    keep_alive: bool
    url: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Collector:
    """httptools callbacks: the requests completed so far, in order (pipelining), and
    whether one is under way."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.complete: deque[_Request] = deque()
        self.started = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._head: tuple[str, str, bool] = ("GET", "1.1", True)

    def on_message_begin(self) -> None:
        self.started = True
        self._url, self._headers, self._body = b"", [], bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_HEAD:
            raise _BadRequest("request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        if len(self._headers) > 200:
            raise _BadRequest("too many headers")

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method().decode("ascii", "replace")
        self._head = (method, parser.get_http_version(), parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > MAX_BODY:
            raise _BadRequest("request body too large")

    def on_message_complete(self) -> None:
        method, version, keep_alive = self._head
        request = _Request(method, version, keep_alive, self._url, self._headers, bytes(self._body))
        self.complete.append(request)
        self.started = False


class AdminServer:
    """Owns the admin HTTP server task.

    ``run`` serves until cancelled (which stops at once) or until :meth:`shutdown_nowait`
    (which stops accepting and lets in-flight requests finish within ``graceful_timeout``).
    ``sock``: an already listening socket served instead of binding ``host:port`` (the
    server takes it over and closes it when ``run`` returns).
    """

    def __init__(
        self,
        app: AsgiApp,
        host: str,
        port: int,
        *,
        graceful_timeout: float = 1.0,
        error_logger: logging.Logger | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._sock = sock
        self._graceful_timeout = graceful_timeout
        self._error_logger = error_logger or logging.getLogger("meshd.admin")
        self._shutdown = trio.Event()
        #: Cancel scopes of the connections waiting for their next request.
        self._idle: set[trio.CancelScope] = set()
        self._closing = False
        self._live = 0
        self._all_closed = trio.Event()

    @property
    def port(self) -> int:
        """The bound port once ``run`` has started; the configured one before."""
        return self._port

    def shutdown_nowait(self) -> None:
        """Ask ``run`` to stop accepting, finish in-flight requests and return."""
        self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve; reports the bound port through ``task_status`` once listening.

        Raises :class:`AdminBindError` if the address can't be bound.
        """
        sock, self._sock = self._sock, None
        if sock is None:
            try:
                sock = bind_tcp(self._host, self._port, backlog=128)
            except OSError as exc:
                where = f"[{self._host}]" if ":" in self._host else self._host
                raise AdminBindError(
                    f"cannot listen on {where}:{self._port}: {exc.strerror or exc}"
                ) from exc
        sock.setblocking(False)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        self._port = int(sock.getsockname()[1])
        async with trio.open_nursery() as connections:
            async with listener, trio.open_nursery() as accepting:
                accepting.start_soon(self._accept, listener, connections)
                task_status.started(self._port)
                await self._shutdown.wait()
                accepting.cancel_scope.cancel()
            self._closing = True
            for scope in list(self._idle):
                scope.cancel()
            with trio.move_on_after(self._graceful_timeout):
                while self._live:
                    self._all_closed = trio.Event()
                    await self._all_closed.wait()
            connections.cancel_scope.cancel()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of descriptors, say: the admin API is not worth a busy loop.
                log.warning("admin accept failed", error=str(exc))
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._serve, stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        self._live += 1
        try:
            async with stream:
                await self._requests(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            self._live -= 1
            if not self._live:
                self._all_closed.set()

    async def _requests(self, stream: trio.SocketStream) -> None:
        collector = _Collector()
        while not self._closing:
            if not collector.complete:
                try:
                    if not await self._read_request(stream, collector):
                        return
                except _BadRequest:
                    await stream.send_all(_response(400, [], b"bad request\n", close=True))
                    return
                except trio.TooSlowError:
                    await stream.send_all(_response(408, [], b"timeout\n", close=True))
                    return
            request = collector.complete.popleft()
            status, headers, body = await self._call(request)
            keep_alive = request.keep_alive and not self._closing
            await stream.send_all(_response(status, headers, body, close=not keep_alive))
            if not keep_alive:
                return

    async def _read_request(self, stream: trio.SocketStream, collector: _Collector) -> bool:
        """Read until a whole request is in ``collector``; False if the client closed (or the
        server closes an idle connection); raises :class:`_BadRequest`, ``TooSlowError``."""
        idle_deadline = trio.current_time() + KEEP_ALIVE_S
        request_deadline: float | None = None
        while not collector.complete:
            if collector.started and request_deadline is None:
                request_deadline = trio.current_time() + REQUEST_TIMEOUT_S
            if request_deadline is None:
                with trio.move_on_at(idle_deadline):
                    data = await self._receive(stream, idle=True)
                    if data:
                        self._feed(collector, data)
                        continue
                return False  # closed, idle too long, or shut down between requests
            with trio.fail_at(request_deadline):
                data = await self._receive(stream, idle=False)
            if not data:
                return False
            self._feed(collector, data)
        return True

    @staticmethod
    def _feed(collector: _Collector, data: bytes) -> None:
        try:
            collector.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise _BadRequest("upgrade not supported") from None
        except httptools.HttpParserError as exc:
            raise _BadRequest(str(exc)) from exc

    async def _receive(self, stream: trio.SocketStream, *, idle: bool) -> bytes:
        if not idle:
            return await stream.receive_some(_READ)
        # Between requests: shutdown may close the connection (nothing is lost).
        with trio.CancelScope() as scope:
            self._idle.add(scope)
            try:
                return await stream.receive_some(_READ)
            finally:
                self._idle.discard(scope)
        return b""

    async def _call(self, request: _Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        url = httptools.parse_url(request.url)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version,
            "method": request.method,
            "scheme": "http",
            "path": (url.path or b"/").decode("utf-8", "replace"),
            "raw_path": url.path or b"/",
            "query_string": url.query or b"",
            "root_path": "",
            "headers": request.headers,
            "server": (self._host, self._port),
            "client": None,
        }
        body = request.body
        sent_body = False
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        out = bytearray()

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: Any) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                out.extend(message.get("body", b""))

        try:
            await self._app(scope, receive, send)
        except Exception:
            # One broken view must not take the admin API down; the error is logged.
            self._error_logger.exception("admin request failed")
            return 500, [(b"content-type", b"text/plain; charset=utf-8")], b"internal error\n"
        return status, headers, bytes(out)


def _response(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, close: bool
) -> bytes:
    reason = _REASONS.get(status, "")
    lines = [f"HTTP/1.1 {status} {reason}".encode("ascii")]
    for name, value in headers:
        if name.lower() not in (b"content-length", b"connection", b"transfer-encoding"):
            lines.append(name + b": " + value)
    lines.append(b"content-length: %d" % len(body))
    if close:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
