"""The fast lane (meshd/http/lane.py): meshd's HTTP proxy code in one Trio run, real sockets.

The proxy (``serve_http`` on a listener built from a snapshot, with ``run_deadlines``), its
backends and its clients are real TCP sockets on 127.0.0.1. Every test also checks what the
lane is for or what it must hand back: simple requests are served without waking the
connection's task; anything else is finished by the task, as before.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from meshcore.model import Bootstrap, Snapshot
from meshd.accesslog import AccessLog
from meshd.cluster.pool import PoolManager
from meshd.config import build_runtime
from meshd.context import ProxyShared
from meshd.http import connection as connection_module
from meshd.http.config import HttpListenerConfig
from meshd.http.connection import serve_http
from meshd.net.stream import SocketStream
from meshd.net.tls import TlsStream, tls_accept, tls_connect
from meshd.net.tlsconfig import client_context, server_context
from meshd.net.waits import EPOLL_WAITS
from meshd.stats import Stats

# The unit tests' mini CA (beside the TLS tests).
sys.path.insert(0, str(Path(__file__).parents[1] / "net"))
from tls_certs import Leaf, MiniCA, make_ca, spiffe

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not EPOLL_WAITS, reason="epoll (Linux) only"),
]

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n"
GET = b"GET /%d HTTP/1.1\r\nHost: app\r\n\r\n"


def _listen() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock, int(sock.getsockname()[1])


@dataclass
class Backend:
    """A keep-alive HTTP backend: ``answer`` gives each request's response bytes."""

    answer: Callable[[bytes], bytes | None] = lambda _: OK
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    #: Requests held without an answer (None from ``answer``): their sockets.
    hung: list[trio.SocketStream | TlsStream] = field(default_factory=list)

    async def serve(self, stream: trio.SocketStream | TlsStream) -> None:
        self.connections += 1
        buffered = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffered) < length:
                    buffered += await stream.receive_some(65536)
                body, buffered = buffered[:length], buffered[length:]
                self.requests.append(head + b"\r\n\r\n" + body)
                response = self.answer(head + b"\r\n\r\n" + body)
                if response is None:
                    self.hung.append(stream)
                    await trio.sleep_forever()
                if response == b"RST":
                    assert isinstance(stream, trio.SocketStream)
                    stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    await stream.aclose()
                    return
                await stream.send_all(response)
                if response.startswith(b"HTTP/1.1 200 OK\r\nX-Until-Close"):
                    await stream.aclose()  # the body ends with the connection
                    return


class TaskSteps(trio.abc.Instrument):
    """Counts the steps of the tasks serving client connections."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("proxy_connection"):
            self.steps += 1


@dataclass
class Tls:
    """mTLS for the proxy's downstream (an inbound sidecar's), its upstream (an outbound
    sidecar's), or both: one CA, a leaf per service."""

    ca: MiniCA
    leaves: dict[str, Leaf] = field(default_factory=dict)

    def leaf(self, service: str) -> Leaf:
        if service not in self.leaves:
            self.leaves[service] = self.ca.service(service)
        return self.leaves[service]

    def server(self, service: str) -> Any:
        leaf = self.leaf(service)
        return server_context(leaf.cert_pem, leaf.key_pem, self.ca.root_pem)

    def client(self, service: str) -> Any:
        leaf = self.leaf(service)
        return client_context(leaf.cert_pem, leaf.key_pem, [self.ca.root_pem])


@dataclass
class Contexts:
    client: Any


@pytest.fixture(scope="module")
def tls() -> Tls:
    return Tls(make_ca())


@dataclass
class Proxy:
    port: int
    shared: ProxyShared
    backend: Backend
    cfg: HttpListenerConfig
    #: The proxy's side of each client connection, as accepted.
    downstreams: list[SocketStream | TlsStream] = field(default_factory=list)


@contextlib.asynccontextmanager
async def proxy(
    backend: Backend,
    *,
    route: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
    tls: Tls | None = None,
    tls_down: bool = False,
    tls_up: bool = False,
) -> AsyncIterator[Proxy]:
    backend_sock, backend_port = _listen()
    proxy_sock, proxy_port = _listen()
    bootstrap = Bootstrap.model_validate(
        {
            "service": "web",
            "app": "127.0.0.1:1",
            "admin": "127.0.0.1:1",
            "snapshot": {"file": "snapshot.yaml"},
            "access_log": {"enabled": False},
        }
    )
    snapshot = Snapshot.model_validate(
        {
            "version": 1,
            "listeners": [
                {
                    "name": "out",
                    "direction": "outbound",
                    "address": f"127.0.0.1:{proxy_port}",
                    "route_table": "main",
                    **(listener or {}),
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "service": "app",
                    "endpoints": [{"host": "127.0.0.1", "port": backend_port}],
                    **({"tls": {"spiffe_id": spiffe("app")}} if tls_up else {}),
                }
            ],
            "route_tables": [
                {
                    "name": "main",
                    "routes": [{"name": "r", "backends": [{"cluster": "app"}], **(route or {})}],
                }
            ],
        }
    )
    pools = PoolManager(Contexts(tls.client("web")) if tls is not None and tls_up else None)
    cfg = build_runtime(bootstrap, snapshot, pools).listeners["out"]
    assert isinstance(cfg, HttpListenerConfig)
    shared = ProxyShared(stats=Stats(), access_log=AccessLog(enabled=False, sample_rate=1.0))

    async def accept(
        lsock: socket.socket, handle: Callable[[socket.socket], Awaitable[None]], name: str
    ) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await trio.lowlevel.wait_readable(lsock)
                try:
                    sock, _ = lsock.accept()
                except BlockingIOError:
                    continue
                nursery.start_soon(handle, sock, name=name)

    async def to_backend(sock: socket.socket) -> None:
        if tls is not None and tls_up:
            stream = await tls_accept(sock, tls.server("app"))
            try:
                await backend.serve(stream)
            finally:
                stream.close_nowait()
            return
        with sock:
            await backend.serve(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))

    downstreams: list[SocketStream | TlsStream] = []

    async def proxy_connection(sock: socket.socket) -> None:
        down: SocketStream | TlsStream
        if tls is not None and tls_down:
            down = await tls_accept(sock, tls.server("web"))
        else:
            down = SocketStream(sock)
        downstreams.append(down)
        await serve_http(down, cfg, shared)

    with backend_sock, proxy_sock:
        async with trio.open_nursery() as nursery:
            await nursery.start(shared.run_deadlines)
            nursery.start_soon(accept, backend_sock, to_backend, "backend_connection")
            nursery.start_soon(accept, proxy_sock, proxy_connection, "proxy_connection")
            try:
                yield Proxy(proxy_port, shared, backend, cfg, downstreams)
            finally:
                nursery.cancel_scope.cancel()
                for pool in pools:
                    pool.close()


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.buffered = b""

    async def send(self, data: bytes) -> None:
        await trio.lowlevel.wait_writable(self.sock)
        self.sock.sendall(data)

    async def _more(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                return self.sock.recv(65536)
            except BlockingIOError:
                continue

    async def _head(self) -> bytes:
        """The next response's head (status line and fields), taken from the buffer."""
        while b"\r\n\r\n" not in self.buffered:
            data = await self._more()
            if not data:
                raise EOFError(self.buffered)
            self.buffered += data
        head, _, self.buffered = self.buffered.partition(b"\r\n\r\n")
        return head

    async def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        """One response framed by Content-Length (none: an empty body)."""
        lines = (await self._head()).split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffered) < length:
            data = await self._more()
            if not data:
                raise EOFError(self.buffered)
            self.buffered += data
        body, self.buffered = self.buffered[:length], self.buffered[length:]
        return status, headers, body

    async def response_head_only(self) -> tuple[int, dict[bytes, bytes], bytes]:
        """The response to a HEAD request: its head says a length, no body follows."""
        status = int((await self._head()).split(b"\r\n")[0].split()[1])
        return status, {}, b""

    async def closed(self) -> bool:
        """True once the proxy has closed the connection (after any bytes left)."""
        with trio.fail_after(10):
            while True:
                try:
                    data = await self._more()
                except ConnectionResetError:
                    return True
                if not data:
                    return True
                self.buffered += data

    def close(self) -> None:
        self.sock.close()


class TlsClient(Client):
    """A client over mTLS (the outbound sidecar's side of an inbound one)."""

    def __init__(self, stream: TlsStream) -> None:
        self.stream = stream
        self.buffered = b""

    @classmethod
    async def connect(cls, port: int, tls: Tls) -> TlsClient:
        return cls(await tls_connect("127.0.0.1", port, tls.client("client")))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bytes:
        return await self.stream.receive_some()

    def close(self) -> None:
        self.stream.close_nowait()


async def _blocked() -> None:
    await trio.testing.wait_all_tasks_blocked(0.01)


async def _task_steps(client: Client, requests: range) -> int:
    """Steps of the connection's task while ``client`` makes ``requests`` (GETs answered
    with ``hello``), from a task parked between requests."""
    steps = TaskSteps()
    await _blocked()
    trio.lowlevel.add_instrument(steps)
    try:
        for i in requests:
            await client.send(GET % i)
            assert (await client.response())[2] == b"hello\n"
        await _blocked()
    finally:
        trio.lowlevel.remove_instrument(steps)
    return steps.steps


async def test_keep_alive_requests_go_through_the_lane_without_waking_the_task() -> None:
    backend = Backend()
    async with proxy(backend) as p:
        client = Client(p.port)
        await client.send(GET % 0)
        assert (await client.response())[0] == 200  # the first: connects upstream (the task)
        steps = await _task_steps(client, range(1, 41))
        client.close()
        assert len(backend.requests) == 41
        assert backend.connections == 1  # the pooled connection served them all
        # The task-based path takes >= 2 steps per request (request, response).
        assert steps <= 2
        # Each went upstream as the task would send it: the mesh's headers added.
        last = backend.requests[-1].lower()
        assert last.startswith(b"get /40 http/1.1\r\n")
        for name in (b"x-request-id: ", b"traceparent: 00-", b"x-forwarded-for: 127.0.0.1"):
            assert name in last
        # ...and counted as the task would count it.
        counted = {key: sum(buckets) for key, buckets in p.shared.stats.http_view()}
        assert counted == {("outbound", "web", "app", "r", "GET", 200): 41}
        assert [sum(b) for _, b in p.shared.stats.endpoint_view()] == [41]


async def test_requests_the_lane_hands_back_are_served_in_order() -> None:
    """A body, a pipelined pair, a HEAD and an error, between lane requests."""

    def answer(request: bytes) -> bytes:
        body = request.partition(b"\r\n\r\n")[2]
        if request.startswith(b"POST"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        return OK

    backend = Backend(answer)
    async with proxy(backend) as p:
        client = Client(p.port)
        for i in range(3):
            await client.send(GET % i)
            assert (await client.response())[0] == 200
        await client.send(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nabcde")
        assert await client.response() == (200, {b"content-length": b"5"}, b"abcde")
        # A body that comes after its head: the task streams it.
        await client.send(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 6\r\n\r\nabc")
        await trio.sleep(0.05)
        await client.send(b"def")
        assert await client.response() == (200, {b"content-length": b"6"}, b"abcdef")
        await client.send((GET % 10) + (GET % 11))  # pipelined: answered in order
        assert (await client.response())[2] == b"hello\n"
        assert (await client.response())[2] == b"hello\n"
        await client.send(b"HEAD /h HTTP/1.1\r\nHost: app\r\n\r\n")
        status, _, body = await client.response_head_only()
        assert status == 200 and body == b""
        await client.send(b"GET /bad%zz HTTP/1.1\r\nHost: app\r\n\r\n")
        assert (await client.response())[0] == 400
        assert await client.closed()
        client.close()
        assert [r.split(b" ")[1] for r in backend.requests] == [
            b"/0",
            b"/1",
            b"/2",
            b"/up",
            b"/up",
            b"/10",
            b"/11",
            b"/h",
        ]


async def test_a_response_larger_than_a_read_is_finished_by_the_task() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    backend = Backend(lambda _: response)
    async with proxy(backend) as p:
        client = Client(p.port)
        for _ in range(3):
            await client.send(GET % 1)
            status, _, body = await client.response()
            assert status == 200 and body == big
        await client.send(GET % 2)
        await trio.sleep(0.2)  # a client slow to read: the proxy's sends block
        status, _, body = await client.response()
        assert status == 200 and body == big
        client.close()
        assert backend.connections == 1


async def test_route_timeout_while_the_lane_waits_for_the_upstream() -> None:
    hang = {"now": False}

    def answer(_: bytes) -> bytes | None:
        return None if hang["now"] else OK

    backend = Backend(answer)
    async with proxy(backend, route={"timeout_s": 0.3}) as p:
        client = Client(p.port)
        for i in range(2):
            await client.send(GET % i)
            assert (await client.response())[0] == 200
        hang["now"] = True
        await client.send(GET % 2)
        status, headers, _ = await client.response()
        assert (status, headers[b"x-meshd-error"]) == (504, b"upstream_timeout")
        assert await client.closed()
        client.close()
        # The connection the lane had taken is not pooled again.
        hang["now"] = False
        second = Client(p.port)
        await second.send(GET % 3)
        assert (await second.response())[0] == 200
        second.close()
        assert backend.connections == 2


async def test_idle_keep_alive_timeout_and_drain_reach_a_connection_in_the_lane() -> None:
    async with proxy(Backend(), listener={"idle_timeout_s": 0.3}) as p:
        client = Client(p.port)
        for i in range(2):
            await client.send(GET % i)
            assert (await client.response())[0] == 200
        assert await client.closed()  # the idle timeout
        client.close()
    async with proxy(Backend()) as p:
        client = Client(p.port)
        for i in range(2):
            await client.send(GET % i)
            assert (await client.response())[0] == 200
        await _blocked()
        p.shared.start_drain()
        assert await client.closed()
        client.close()
        assert not p.shared.connections


async def test_upstream_failures_in_the_lane_answer_as_the_task_does() -> None:
    mode = {"now": "ok"}

    def answer(_: bytes) -> bytes:
        if mode["now"] == "rst":
            return b"RST"
        if mode["now"] == "garbage":
            return b"NOT HTTP AT ALL\r\n\r\n"
        return OK

    backend = Backend(answer)
    async with proxy(backend) as p:
        client = Client(p.port)
        for i in range(2):
            await client.send(GET % i)
            assert (await client.response())[0] == 200
        mode["now"] = "garbage"
        await client.send(GET % 2)
        status, headers, _ = await client.response()
        assert (status, headers[b"x-meshd-error"]) == (502, b"upstream_protocol_error")
        mode["now"] = "ok"
        await client.send(GET % 3)
        assert (await client.response())[0] == 200
        mode["now"] = "rst"
        await client.send(b"POST /p HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n")
        status, headers, _ = await client.response()
        assert (status, headers[b"x-meshd-error"]) == (502, b"upstream_reset")
        client.close()


async def test_client_leaving_ends_the_connection_in_the_lane() -> None:
    async with proxy(Backend()) as p:
        for _ in range(3):
            client = Client(p.port)
            for i in range(2):
                await client.send(GET % i)
                assert (await client.response())[0] == 200
            client.close()
        with trio.fail_after(5):
            while p.shared.connections:
                await trio.sleep(0.01)
        # A head cut short by the client's end is a 400 as before.
        client = Client(p.port)
        await client.send(GET % 1)
        assert (await client.response())[0] == 200
        await client.send(b"GET /x HTTP/1.1\r\nHo")
        client.sock.shutdown(socket.SHUT_WR)
        assert (await client.response())[0] == 400
        client.close()


async def test_last_request_per_connection_and_close_requests() -> None:
    async with proxy(Backend(), listener={"max_requests_per_connection": 3}) as p:
        client = Client(p.port)
        for i in range(3):
            await client.send(GET % i)
            status, headers, _ = await client.response()
            assert status == 200
        assert headers.get(b"connection") == b"close"
        assert await client.closed()
        client.close()
        client = Client(p.port)
        await client.send(GET % 1)
        assert (await client.response())[0] == 200
        await client.send(b"GET /c HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        status, headers, _ = await client.response()
        assert (status, headers.get(b"connection")) == (200, b"close")
        assert await client.closed()
        client.close()
        client = Client(p.port)  # HTTP/1.0, as `openssl s_time -www` asks
        await client.send(b"GET /old HTTP/1.0\r\n\r\n")
        status, headers, body = await client.response()
        assert (status, headers.get(b"connection"), body) == (200, b"close", b"hello\n")
        assert await client.closed()
        client.close()


def test_lane_is_on_where_epoll_is() -> None:
    assert connection_module.LANE


@pytest.mark.parametrize(("down", "up"), [(True, False), (False, True), (True, True)])
async def test_mtls_connections_go_through_the_lane(tls: Tls, down: bool, up: bool) -> None:
    big = bytes(range(256)) * 1024  # 256 KiB: 16 TLS records
    responses = iter(
        [OK] * 43 + [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)]
    )
    backend = Backend(lambda _: next(responses, OK))
    async with proxy(backend, tls=tls, tls_down=down, tls_up=up) as p:
        client: Client = await TlsClient.connect(p.port, tls) if down else Client(p.port)
        await client.send(GET % 0)
        assert (await client.response())[0] == 200
        assert await _task_steps(client, range(1, 41)) <= 2
        # Two requests in two TLS records that arrive together: a record read doesn't drain
        # the socket, and no event will come for the second.
        await client.send(GET % 50)
        await client.send(GET % 51)
        assert (await client.response())[2] == b"hello\n"
        assert (await client.response())[2] == b"hello\n"
        # Records beyond a burst: the task finishes the body, then the lane goes on.
        await client.send(GET % 41)
        assert (await client.response())[2] == big
        for i in range(42, 45):
            await client.send(GET % i)
            assert (await client.response())[2] == b"hello\n"
        client.close()
        assert backend.connections == 1
        counted = {key: sum(buckets) for key, buckets in p.shared.stats.http_view()}
        assert counted == {("outbound", "web", "app", "r", "GET", 200): 47}


async def test_a_body_until_the_upstream_closes_is_relayed_and_counted() -> None:
    until_close = b"HTTP/1.1 200 OK\r\nX-Until-Close: 1\r\n\r\nto the end"
    answers = iter([OK, until_close])
    async with proxy(Backend(lambda _: next(answers, OK))) as p:
        client = Client(p.port)
        await client.send(GET % 1)
        assert (await client.response())[0] == 200
        await client.send(GET % 2)
        with trio.fail_after(10):  # chunked for an HTTP/1.1 client: the connection stays
            while not client.buffered.endswith(b"\r\n0\r\n\r\n"):
                client.buffered += await client._more()
        assert client.buffered.endswith(b"\r\n\r\na\r\nto the end\r\n0\r\n\r\n")
        assert b"transfer-encoding: chunked" in client.buffered.lower()
        client.buffered = b""
        await client.send(GET % 3)
        assert (await client.response())[0] == 200
        client.close()
        counted = {key: sum(buckets) for key, buckets in p.shared.stats.http_view()}
        assert counted == {("outbound", "web", "app", "r", "GET", 200): 3}


async def test_a_retry_policys_first_try_goes_through_the_lane_and_retries_in_the_task() -> None:
    statuses = iter([200] * 21 + [503, 200, 200])

    def answer(_: bytes) -> bytes:
        status = next(statuses, 200)
        if status == 503:
            return b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
        return OK

    retries = {"attempts": 3, "retry_on": ["gateway-error", "connect-failure"]}
    backend = Backend(answer)
    async with proxy(backend, route={"retries": retries}) as p:
        client = Client(p.port)
        await client.send(GET % 0)
        assert (await client.response())[0] == 200
        # The policy configured, not triggered: all in the lane.
        assert await _task_steps(client, range(1, 21)) <= 2
        # A 503 held back (the client never sees it), retried by the task: 200.
        await client.send(GET % 21)
        assert (await client.response())[:3:2] == (200, b"hello\n")
        await client.send(GET % 22)
        assert (await client.response())[0] == 200
        # POST is not idempotent: its 503 is not held, not retried.
        statuses = iter([503])
        await client.send(b"POST /p HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n")
        assert (await client.response())[0] == 503
        client.close()
        assert len(backend.requests) == 25
        assert [r.split(b" ")[1] for r in backend.requests[21:23]] == [b"/21", b"/21"]
        retried = p.shared.stats.policy.value("meshd_upstream_retries", "app", "gateway-error")
        assert retried == 1


async def test_the_client_side_closed_under_a_try_in_flight_is_no_upstream_failure() -> None:
    """As a revocation closes a revoked peer's stream: the try ends, nothing is sent again,
    and the upstream is not blamed (no upstream error, no failure for outlier detection)."""
    hang = {"now": False}
    backend = Backend(lambda _: None if hang["now"] else OK)
    async with proxy(backend) as p:
        client = Client(p.port)
        for i in range(2):
            await client.send(GET % i)
            assert (await client.response())[0] == 200
        hang["now"] = True
        await client.send(GET % 2)
        with trio.fail_after(5):
            while len(backend.requests) < 3:
                await trio.sleep(0.01)
        await _blocked()
        p.downstreams[-1].close_nowait()
        assert await client.closed()
        client.close()
        with trio.fail_after(5):
            while p.shared.connections:
                await trio.sleep(0.01)
        assert len(backend.requests) == 3
        assert p.shared.stats.upstream_error_view() == []
