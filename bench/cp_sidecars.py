"""Simulated sidecars for ``bench/run controlplane``: the push protocol over raw sockets.

One epoll loop (:class:`Loop`, stdlib ``selectors``) drives every connection, each a
keep-alive HTTP/1.1 connection to controld's API. A :class:`SimSidecar` does what meshd's
controld source does, minus applying anything:

1. ``POST /v1/proxies/{id}`` with its descriptor;
2. ``GET /v1/snapshots/{id}?wait=60`` (first contact: no version/hash);
3. on ``200`` it reads the answer's version and hash and polls again at once with them (that
   poll *is* the ACK, so its send time is recorded); on ``304`` it polls again unchanged; on
   ``404`` (controld forgot it) it registers again.

Standard library only, like the rest of the harness. Everything is bounded by the caller's
deadlines; connections that the server closes are reopened and the request in flight resent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlencode

from common import BenchError, Response, parse_response

from meshcore.api.sidecar import proxy_path, snapshot_path, snapshot_query

#: ``{"version": V, "hash": "H", ...`` at the start of a snapshot answer: read without parsing
#: the (large) snapshot; any other layout falls back to ``json.loads``.
_HEAD = re.compile(rb'\A\s*\{\s*"version"\s*:\s*(\d+)\s*,\s*"hash"\s*:\s*"([^"]+)"')
_RECV = 262144


def build_request(
    method: str, path: str, port: int, token: str | None = None, body: bytes | None = None
) -> bytes:
    """An HTTP/1.1 request (keep-alive), JSON body when given."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    elif method not in ("GET", "HEAD"):
        head += "Content-Length: 0\r\n"
    return head.encode("latin-1") + b"\r\n" + (body or b"")


class Conn:
    """One keep-alive connection: at most one request in flight, resent after a reconnect."""

    __slots__ = ("buf", "connected", "handler", "pending", "request", "sock", "waiting")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.pending = b""
        #: The request in flight (resent on a fresh connection if the server closes this one).
        self.request = b""
        self.waiting = False
        self.connected = False
        self.handler: Callable[[Conn, Response, float], None] | None = None


class Loop:
    """Non-blocking connections to 127.0.0.1:``port``, multiplexed by one epoll selector."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.reconnects = 0
        self._connecting = 0

    def close(self) -> None:
        """Close every connection and the selector."""
        for conn in self.conns:
            self._drop(conn)
        self.conns.clear()
        self.selector.close()

    def _drop(self, conn: Conn) -> None:
        if conn.sock is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        conn.sock.close()
        conn.sock = None
        if not conn.connected:
            self._connecting -= 1
        conn.connected = False

    def _connect(self, conn: Conn) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn.sock = sock
        conn.connected = False
        conn.buf.clear()
        self._connecting += 1
        sock.connect_ex(("127.0.0.1", self.port))
        self.selector.register(sock, selectors.EVENT_WRITE, conn)

    def open(self, count: int, timeout: float = 30.0) -> list[Conn]:
        """``count`` connected sockets, connected in batches (the accept backlog is small)."""
        fresh: list[Conn] = []
        deadline = time.monotonic() + timeout
        batch = 100
        for first in range(0, count, batch):
            for _ in range(min(batch, count - first)):
                conn = Conn()
                self.conns.append(conn)
                fresh.append(conn)
                self._connect(conn)
            while self._connecting:
                if time.monotonic() > deadline:
                    raise BenchError(f"{self._connecting} connections not established in time")
                self.poll(0.5)
        return fresh

    def send(self, conn: Conn, request: bytes) -> None:
        """Queue ``request`` on ``conn``; it goes out as the socket accepts it."""
        conn.request = request
        conn.waiting = True
        conn.pending = request
        if conn.sock is None:
            self._connect(conn)
        elif conn.connected:
            self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        assert conn.sock is not None
        while conn.pending:
            try:
                sent = conn.sock.send(conn.pending)
            except BlockingIOError:
                break
            except OSError:
                self._reopen(conn)
                return
            conn.pending = conn.pending[sent:]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.pending else 0)
        self.selector.modify(conn.sock, events, conn)

    def _reopen(self, conn: Conn) -> None:
        """The server closed ``conn``: reconnect and resend the request in flight, if any."""
        self._drop(conn)
        self.reconnects += 1
        conn.pending = conn.request if conn.waiting else b""
        self._connect(conn)

    def poll(self, timeout: float) -> int:
        """One epoll round; handlers run for every completed response. Events handled."""
        events = self.selector.select(timeout=timeout)
        for key, mask in events:
            conn: Conn = key.data
            if conn.sock is None or key.fileobj is not conn.sock:
                continue  # dropped earlier in this round
            if not conn.connected:
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise BenchError(f"connect to 127.0.0.1:{self.port}: {os.strerror(err)}")
                conn.connected = True
                self._connecting -= 1
                self._flush(conn)
                continue
            sock = conn.sock
            if mask & selectors.EVENT_WRITE:
                self._flush(conn)
                if conn.sock is not sock:
                    continue  # reopened: the new socket reports when it connects
            if not mask & selectors.EVENT_READ:
                continue
            try:
                data = sock.recv(_RECV)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self._reopen(conn)
                continue
            if not conn.waiting:
                raise BenchError("controld sent bytes nobody asked for")
            conn.buf += data
            parsed = parse_response(conn.buf)
            if parsed is None:
                continue
            stamp = time.perf_counter()
            resp, used = parsed
            del conn.buf[:used]
            conn.waiting = False
            conn.request = b""
            if conn.handler is not None:
                conn.handler(conn, resp, stamp)
        return len(events)

    def run_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll until ``done()``; BenchError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{what}: not done within {timeout:.0f}s")
            self.poll(min(left, 0.2))


def snapshot_head(body: bytes) -> tuple[int, str]:
    """Version and hash of a ``200`` snapshot answer."""
    match = _HEAD.match(body)
    if match is not None:
        return int(match.group(1)), match.group(2).decode("ascii")
    doc = json.loads(body)
    return int(doc["version"]), str(doc["hash"])


class SimSidecar:
    """One simulated sidecar on its own connection (see the module doc)."""

    __slots__ = (
        "acks",
        "conn",
        "descriptor",
        "error",
        "hash",
        "loop",
        "proxy_id",
        "registering",
        "registrations",
        "token",
        "version",
        "wait_s",
    )

    def __init__(
        self, loop: Loop, conn: Conn, descriptor: dict[str, object], token: str, wait_s: int = 60
    ) -> None:
        self.loop = loop
        self.conn = conn
        self.descriptor = json.dumps(descriptor).encode()
        self.proxy_id = str(descriptor["proxy_id"])
        self.token = token
        self.wait_s = wait_s
        self.version: int | None = None
        self.hash: str | None = None
        #: (perf_counter when the ACK poll was sent, version, hash), one per snapshot received.
        self.acks: list[tuple[float, int, str]] = []
        self.registrations = 0
        self.registering = False
        self.error: str | None = None
        conn.handler = self._on_response

    def register(self) -> None:
        """POST the descriptor (then poll, from the response handler)."""
        path = proxy_path(self.proxy_id)
        self.registrations += 1
        self.registering = True
        self.loop.send(
            self.conn, build_request("POST", path, self.loop.port, self.token, self.descriptor)
        )

    def _poll(self) -> None:
        query = urlencode(snapshot_query(self.version, self.hash, self.wait_s))
        path = f"{snapshot_path(self.proxy_id)}?{query}"
        self.loop.send(self.conn, build_request("GET", path, self.loop.port, self.token))

    def _on_response(self, conn: Conn, resp: Response, stamp: float) -> None:
        if self.registering:
            self.registering = False
            if resp.status != 200:
                self.error = f"{self.proxy_id}: register: HTTP {resp.status} {resp.body[:300]!r}"
                return
            self._poll()
            return
        if resp.status == 200:
            self.version, self.hash = snapshot_head(resp.body)
            self._poll()
            self.acks.append((time.perf_counter(), self.version, self.hash))
        elif resp.status == 304:
            self._poll()
        elif resp.status == 404:
            self.register()
        else:
            self.error = f"{self.proxy_id}: HTTP {resp.status} {resp.body[:300]!r}"


def start_sidecars(
    loop: Loop, descriptors: Sequence[dict[str, object]], tokens: dict[str, str]
) -> list[SimSidecar]:
    """Open a connection per descriptor and register them all (answers come with polling)."""
    conns = loop.open(len(descriptors))
    sims = [
        SimSidecar(loop, conn, desc, tokens[str(desc["service"])])
        for conn, desc in zip(conns, descriptors, strict=True)
    ]
    for sim in sims:
        sim.register()
    return sims
