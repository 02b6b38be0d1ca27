"""A small HTTP/1.1 server for the registry's ASGI app, on Trio, non-blocking sockets, httptools.

Why not hypercorn here: a change must wake and answer 1000 parked blocking queries within
tens of milliseconds. Hypercorn's per-response cost (h11, several tasks and cancel scopes per
connection) puts the floor at ~130 ms on a 2-core machine for a trivial ASGI app; this server
writes a finished response with one ``send()``, and lets a woken blocking query write it
before its task even resumes (``controld.send_now`` in the ASGI scope, keep-alive non-HEAD
requests only: one whole prepared response, replacing what the app then sends). It serves
exactly what the registry needs: HTTP/1.1 (and 1.0) with keep-alive, ``Content-Length`` or
chunked request bodies (buffered, bounded; a body still arriving when the head is complete is
read only if the app asks for it), one request at a time per connection, responses buffered
and sent whole. A client that hangs up while its blocking query is parked gets its
request cancelled.

Connection-level limits (:class:`ServerLimits`): the accept loop is
:class:`meshcore.net.accept.Acceptor` (a cap on open connections, silent ones closed first; a
time to first byte; back-off when descriptors run out), and a request head is bounded in size,
header count and time (from its first byte to its blank line): over them the answer is 431 or
408 and the connection closes.

:class:`RegistryServer` uses it by default; ``http_server="hypercorn"`` selects hypercorn's
Trio worker instead.
"""

from __future__ import annotations

import http
import logging
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httptools
import trio

from controld.registry import serverlimits
from controld.registry.conn import Closed, Conn, TlsConn, tls_accept
from controld.registry.reqcollect import RequestCollector
from controld.registry.serverlimits import ServerLimits, limit_events_counter
from meshcore.net.accept import Acceptor

__all__ = ["HTTPServer", "ServerLimits", "limit_events_counter"]

log = logging.getLogger("controld.registry.httpserver")

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

_REASONS = {int(s): s.phrase.encode() for s in http.HTTPStatus}


class HTTPServer:
    """Serves ``app`` on ``host:port``; ``run`` reports the bound port, returns on shutdown."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        graceful_timeout: float = 1.0,
        tls: Callable[[], ssl.SSLContext] | None = None,
        limits: ServerLimits | None = None,
        on_event: Callable[[str], None] | None = None,
        sock: socket.socket | None = None,
    ):
        """``tls``: serve TLS, with the context it returns for each new connection.

        ``sock``: an already listening socket (socket activation) served instead of binding
        ``host:port``; ``run`` closes it when it returns.

        ``on_event`` is told each time a connection limit acts (see
        :data:`meshcore.net.accept.LIMIT_EVENTS`).
        """
        self.app = app
        self.tls = tls
        self.limits = limits or ServerLimits()
        self._on_event = on_event
        self.acceptor: Acceptor | None = None
        self.host = host
        self.port = port
        self.graceful_timeout = graceful_timeout
        self._sock = sock
        self._shutdown = trio.Event()
        self._idle: set[trio.CancelScope] = set()

    def shutdown_nowait(self) -> None:
        """Stop accepting, close idle connections, give in-flight requests a grace period."""
        self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until :meth:`shutdown_nowait`."""
        listener = self._sock
        if listener is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            if self._sock is None:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.host, self.port))
                listener.listen(1024)
            listener.setblocking(False)
            self.host, self.port = listener.getsockname()[:2]
            async with trio.open_nursery() as conns:
                async with trio.open_nursery() as acceptor:
                    acceptor.start_soon(self._accept, listener, conns)
                    task_status.started(self.port)
                    await self._shutdown.wait()
                    acceptor.cancel_scope.cancel()
                for scope in list(self._idle):
                    scope.cancel()
                conns.cancel_scope.deadline = trio.current_time() + self.graceful_timeout
        finally:
            listener.close()

    async def _accept(self, listener: socket.socket, conns: trio.Nursery) -> None:
        server = listener.getsockname()[:2]

        async def serve(sock: socket.socket, addr: Any) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self._serve(sock, addr[:2], server)

        # HANDSHAKE_TIMEOUT_S is read now, not at import: tests shorten it.
        limits = self.limits.connection_limits(tls=self.tls is not None)
        self.acceptor = Acceptor(limits, serve, on_event=self._on_event)
        await self.acceptor.serve(listener, conns)

    async def _serve(
        self, sock: socket.socket, client: tuple[str, int], server: tuple[str, int]
    ) -> None:
        if self.tls is None:
            conn = Conn(sock, client, server)
        else:
            try:
                conn = await tls_accept(
                    sock, self.tls(), client, server, serverlimits.HANDSHAKE_TIMEOUT_S
                )
            except Closed as exc:
                log.debug("TLS handshake with %s failed: %s", client, exc.__cause__ or exc)
                return
        try:
            await self._serve_conn(conn)
        except Closed:
            pass
        finally:
            conn.sock.close()

    async def _serve_conn(self, conn: Conn) -> None:
        req = RequestCollector(self.limits.max_headers)
        parser = httptools.HttpRequestParser(req)
        limits = self.limits
        while True:
            idle = trio.CancelScope()
            if req.in_head:
                idle.deadline = req.head_started + limits.head_timeout_s
            self._idle.add(idle)
            with idle:
                if self._shutdown.is_set():
                    return
                data = await conn.recv()
            self._idle.discard(idle)
            if idle.cancelled_caught:
                if req.in_head and not self._shutdown.is_set():
                    await self._plain(conn, 408, b"Request head took too long")
                return
            if not data:
                return
            refusal = self._feed(parser, req, data)
            if refusal is not None:
                await self._plain(conn, *refusal)
                return
            if req.continue_:
                req.continue_ = False
                await conn.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            while req.complete:
                url, headers, body = req.complete.pop(0)
                if not await self._dispatch(conn, parser, url=url, headers=headers, body=body):
                    return
            if req.awaiting_body:
                # The head is complete, the body is not: the app runs now and the body is
                # read only if it asks for it, so a request the app refuses (no credential,
                # announced size over its limit) costs no more than its head. The
                # connection closes after the answer.
                await self._dispatch(
                    conn, parser, url=req.url, headers=req.headers, body=None, req=req
                )
                return

    def _feed(
        self, parser: httptools.HttpRequestParser, req: RequestCollector, data: bytes
    ) -> tuple[int, bytes] | None:
        """Parse ``data``; the status and text to refuse the request with, if any."""
        # Bytes read while a head is incomplete. With pipelining, a read may also hold the
        # end of the previous body: the count is off by at most one read (RECV_SIZE).
        if not req.in_head:
            req.head_bytes = 0
        req.head_bytes += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return 400, b"Upgrade not supported"
        except httptools.HttpParserError:
            return 400, b"Bad Request"
        if req.too_large:
            return 413, b"Request body too large"
        if req.in_head and req.head_bytes > self.limits.max_head_bytes:
            return 431, b"Request header too large"
        if req.too_many_headers:
            return 431, b"Too many request header fields"
        return None

    async def _read_rest(
        self, conn: Conn, parser: httptools.HttpRequestParser, req: RequestCollector
    ) -> bytes | tuple[int, bytes] | None:
        """The body of the request whose head was dispatched, the refusal to answer, or None
        when the client went away."""
        if req.continue_:
            req.continue_ = False
            await conn.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not req.complete:
            with trio.move_on_after(self.limits.head_timeout_s) as late:
                data = await conn.recv()
            if late.cancelled_caught:
                return 408, b"Request body took too long"
            if not data:
                return None
            refusal = self._feed(parser, req, data)
            if refusal is not None:
                return refusal
        return req.complete.pop(0)[2]

    async def _dispatch(
        self,
        conn: Conn,
        parser: httptools.HttpRequestParser,
        *,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        req: RequestCollector | None = None,
    ) -> bool:
        """Run the app for one request; False when the connection must close.

        ``body`` None: the body is still arriving and is read from ``req`` when the app asks
        for it; the answer then says ``connection: close`` (an unread body is never parsed as
        a next request).
        """
        method = parser.get_method().decode("ascii", "replace")
        keep = parser.should_keep_alive() and not self._shutdown.is_set() and body is not None
        version = parser.get_http_version()
        raw_path, _, query = url.partition(b"?")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "method": method,
            "scheme": "http",
            "path": urllib.parse.unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": conn.client,
            "server": conn.server,
        }
        sent_body = False
        disconnected = trio.Event()
        refusal: tuple[int, bytes] | None = None
        broken = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body, body, refusal, broken
            if not sent_body:
                sent_body = True
                if body is None:
                    assert req is not None
                    try:
                        rest = await self._read_rest(conn, parser, req)
                    except Closed:
                        rest = None
                    if not isinstance(rest, bytes):
                        if rest is None:
                            broken = True  # the client went away: nothing to answer
                        else:
                            refusal = rest
                        disconnected.set()
                        return {"type": "http.disconnect"}
                    body = rest
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        status = 500
        wire_head: bytes | None = None
        out_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        done = False
        unsent: bytes | None = None

        def send_now(data: bytes) -> None:
            # A whole keep-alive response written from outside this task (a blocking query
            # woken by WatchHub.run); what the socket won't take now goes after the app.
            nonlocal done, broken, unsent
            if done:
                return
            done = True
            try:
                sent = conn.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                broken = True
                return
            if sent < len(data):
                unsent = data[sent:]

        if isinstance(conn, TlsConn):
            # The ASGI TLS extension; a woken query writes through its own task here.
            scope["scheme"] = "https"
            chain = [] if conn.client_cert is None else [conn.client_cert]
            scope["extensions"] = {"tls": {"client_cert_chain": chain, "tls_version": 0x0304}}
        elif keep and method != "HEAD":
            scope["controld.send_now"] = send_now

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, out_headers, done, broken, wire_head
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                out_headers = message.get("headers", ())
                # A head prepared once for many woken watchers (keep-alive only).
                wire_head = message.get("controld.head") if keep else None
            elif kind == "http.response.body" and not done:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done = True
                    head = wire_head or _head(status, list(out_headers), chunks, keep)
                    data = head if method == "HEAD" else head + b"".join(chunks)
                    try:
                        await conn.send_all(data)
                    except Closed:
                        broken = True

        await self._call(scope, receive, send)
        if unsent is not None and not broken:
            try:
                await conn.send_all(unsent)
            except Closed:
                broken = True
        if broken:
            disconnected.set()
            return False
        if refusal is not None and not done:
            await self._plain(conn, *refusal)
            return False
        if not done:
            await self._plain(conn, 500, b"Internal Server Error")
            return False
        return keep

    async def _call(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:
            # The app is ours and translates its errors; anything else is a bug to log,
            # answered as a 500 by the caller (the response was not completed).
            log.exception("unhandled error serving %s %s", scope["method"], scope["path"])

    async def _plain(self, conn: Conn, status: int, text: bytes) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        await conn.send_all(_head(status, headers, [text], False) + text)


def _head(status: int, headers: list[tuple[bytes, bytes]], body: list[bytes], keep: bool) -> bytes:
    reason = _REASONS.get(status, b"")
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    has_length = False
    for name, value in headers:
        if name.lower() == b"content-length":
            has_length = True
        lines.append(name + b": " + value)
    if not has_length:
        lines.append(b"content-length: %d" % sum(map(len, body)))
    if not keep:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"
