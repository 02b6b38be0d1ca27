"""The registry's blocking queries: how fast one change wakes 1000 parked watchers, and its RSS.

Starts ``controld registry`` (127.0.0.1, free port, its own data dir under the suite's temp
dir), then parks ``BENCH_REGISTRY_WATCHERS`` (default 1000) blocking queries
``GET /v1/kv/bench/key?index=N&wait=5m``, one keep-alive connection each, all driven by one
thread with non-blocking sockets and epoll (no thread per watcher). Each round
(``BENCH_REGISTRY_ROUNDS``, default 20):

1. every watcher sends its request with the current index; after a settle time
   (``BENCH_REGISTRY_SETTLE_MS``, default 1 ms per watcher, at least 500 ms) none may have
   answered yet, as nothing changed;
2. one ``PUT /v1/kv/bench/key`` goes out on its own connection, through the same epoll loop;
3. each watcher's wake latency is the time from the PUT's acknowledgement (its response
   fully read) to the watcher's response fully read, both stamped when epoll reports them,
   so the client's own parsing does not count; a watcher answered before the
   acknowledgement counts as 0 ms. Each must carry an ``X-Consul-Index`` above the old one.

Prints a per-round table, then exactly::

    BLOCKING_WAKE_MS p99=<p99 over every watcher of every round, ms>
    REGISTRY_RSS_MB watchers=<n> value=<VmRSS of the registry (+ children) with the watchers
                                        parked, in the last round, MB = kB / 1024>

and a verdict against the target (p99 <= 50 ms). A round where a watcher errs, answers early
or is not woken within 30 s fails the suite (``BenchError``). Each round is bounded; the
registry is stopped by pid at the end, and every socket closed.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from dataclasses import dataclass, field

from common import (
    BenchError,
    Context,
    ManagedProcess,
    ProcessGroup,
    Response,
    env_int,
    free_ports,
    http_get,
    parse_response,
    percentile,
    print_table,
    raise_fd_limit,
    tree_rss_kb,
    wait_for_port,
)

TARGET_P99_MS = 50.0
KEY_PATH = "/v1/kv/bench/key"
ROUND_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 30.0


# -- a minimal HTTP/1.1 client over non-blocking sockets ------------------------------------


@dataclass(eq=False)
class Conn:
    """One keep-alive connection and the response it waits for."""

    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    pending: bytes = b""
    waiting: bool = False
    done_at: float | None = None
    response: Response | None = None


class Client:
    """Non-blocking connections to one port, multiplexed by one epoll selector."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.conns: list[Conn] = []

    def close(self) -> None:
        """Close every connection and the selector."""
        for conn in self.conns:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn.sock)
            conn.sock.close()
        self.conns.clear()
        self.selector.close()

    def open(self, count: int) -> list[Conn]:
        """``count`` connected sockets (connects in flight together, bounded in time)."""
        fresh: list[Conn] = []
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        batch = 200  # stay under the listener's accept backlog
        for first in range(0, count, batch):
            connecting: dict[int, Conn] = {}
            for _ in range(min(batch, count - first)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                conn = Conn(sock)
                self.conns.append(conn)
                fresh.append(conn)
                sock.connect_ex(("127.0.0.1", self.port))
                connecting[sock.fileno()] = conn
                self.selector.register(sock, selectors.EVENT_WRITE, conn)
            while connecting:
                if time.monotonic() > deadline:
                    raise BenchError(f"{len(connecting)} connections not established in time")
                for key, _ in self.selector.select(timeout=1.0):
                    conn = key.data
                    err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise BenchError(f"connect to 127.0.0.1:{self.port}: {os.strerror(err)}")
                    self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
                    connecting.pop(conn.sock.fileno(), None)
        return fresh

    def send(self, conn: Conn, request: bytes) -> None:
        """Queue ``request`` on ``conn``; it goes out as the socket accepts it."""
        conn.buf.clear()
        conn.response = None
        conn.done_at = None
        conn.waiting = True
        conn.pending = request
        self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        while conn.pending:
            try:
                sent = conn.sock.send(conn.pending)
            except BlockingIOError:
                break
            conn.pending = conn.pending[sent:]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.pending else 0)
        self.selector.modify(conn.sock, events, conn)

    def poll(self, timeout: float) -> list[Conn]:
        """One epoll round: the connections whose response completed, stamped with its time."""
        finished: list[Conn] = []
        events = self.selector.select(timeout=timeout)
        stamp = time.perf_counter()  # when the kernel said the data was there
        for key, mask in events:
            conn = key.data
            if mask & selectors.EVENT_WRITE:
                self._flush(conn)
            if not mask & selectors.EVENT_READ:
                continue
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                raise BenchError("the registry closed a connection")
            if not conn.waiting:
                raise BenchError("the registry sent bytes nobody asked for")
            conn.buf += data
            parsed = parse_response(conn.buf)
            if parsed is not None:
                conn.response, _ = parsed
                conn.done_at = stamp
                conn.waiting = False
                finished.append(conn)
        return finished


def _request(method: str, path: str, port: int, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if method != "GET":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _index(resp: Response) -> int:
    raw = resp.headers.get("x-consul-index")
    if raw is None:
        raise BenchError(f"response without X-Consul-Index (status {resp.status})")
    return int(raw)


# -- the suite --------------------------------------------------------------------------------


def _start_registry(ctx: Context, procs: ProcessGroup) -> tuple[ManagedProcess, int]:
    (port,) = free_ports(1)
    workdir = ctx.tempdir("registry")
    argv = [ctx.python, "-m", "controld", "registry", "--listen", f"127.0.0.1:{port}"]
    argv += ["--data-dir", str(workdir / "data")]
    proc = procs.start("registry", argv, cwd=workdir, env=ctx.project_env())
    wait_for_port(port, proc, timeout=30.0)
    deadline = time.monotonic() + 30.0
    while True:
        status, body, head = http_get(port, "/v1/status/leader")
        if status == 200 and body.strip() not in (b"", b'""'):
            return proc, port
        if time.monotonic() > deadline or not proc.alive():
            raise BenchError(f"registry not ready: {head}\n{body!r}\n{proc.log_tail()}")
        time.sleep(0.1)


def _rss_mb(pid: int) -> float:
    return tree_rss_kb(pid) / 1024


def _put(client: Client, writer: Conn, value: int) -> float:
    """PUT the key through the epoll loop; returns its acknowledgement time (perf_counter)."""
    body = str(value).encode()
    client.send(writer, _request("PUT", KEY_PATH, client.port, body))
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    while writer.waiting:
        if time.monotonic() > deadline:
            raise BenchError("the PUT was not acknowledged in time")
        client.poll(0.5)
    assert writer.response is not None and writer.done_at is not None
    if writer.response.status != 200 or writer.response.body.strip() != b"true":
        raise BenchError(f"PUT failed: {writer.response.status} {writer.response.body!r}")
    return writer.done_at


def _round(
    client: Client, watchers: list[Conn], writer: Conn, index: int, value: int, settle_s: float
) -> tuple[list[float], int]:
    """Park every watcher at ``index``, change the key, collect wake latencies (ms)."""
    request = _request("GET", f"{KEY_PATH}?index={index}&wait=5m", client.port)
    for conn in watchers:
        client.send(conn, request)
    settle_until = time.monotonic() + settle_s
    while (left := settle_until - time.monotonic()) > 0:
        early = [c for c in client.poll(left) if c is not writer]
        if early:
            resp = early[0].response
            raise BenchError(
                f"{len(early)} watcher(s) answered before any change "
                f"(status {resp.status if resp else '?'}, index {index})"
            )
    acked = _put(client, writer, value)
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    while any(c.waiting for c in watchers):
        if time.monotonic() > deadline:
            left_over = sum(c.waiting for c in watchers)
            raise BenchError(f"{left_over} watchers not woken within {ROUND_TIMEOUT_S}s")
        client.poll(0.5)
    latencies = []
    new_index = index
    for conn in watchers:
        assert conn.response is not None and conn.done_at is not None
        if conn.response.status != 200:
            raise BenchError(f"watcher got {conn.response.status}: {conn.response.body[:200]!r}")
        got = _index(conn.response)
        if got <= index:
            raise BenchError(f"watcher woke with index {got}, not above {index}")
        new_index = max(new_index, got)
        latencies.append(max(0.0, conn.done_at - acked) * 1000.0)
    return latencies, new_index


def run_suite(ctx: Context) -> None:
    """Start the registry, run the rounds, print the figures."""
    n_watchers = env_int("BENCH_REGISTRY_WATCHERS", 1000, 1, 5000)
    rounds = env_int("BENCH_REGISTRY_ROUNDS", 20, 1, 200)
    settle_ms = env_int("BENCH_REGISTRY_SETTLE_MS", max(500, n_watchers), 100, 30_000)
    settle_s = settle_ms / 1000.0
    raise_fd_limit(2 * n_watchers + 256)
    with ProcessGroup() as procs:
        proc, port = _start_registry(ctx, procs)
        with contextlib.closing(Client(port)) as client:
            (writer,) = client.open(1)
            _put(client, writer, 0)
            client.send(writer, _request("GET", KEY_PATH, port))
            while writer.waiting:
                client.poll(1.0)
            assert writer.response is not None
            index = _index(writer.response)
            watchers = client.open(n_watchers)
            rows = []
            every: list[float] = []
            rss_mb = 0.0
            for number in range(1, rounds + 1):
                latencies, index = _round(client, watchers, writer, index, number, settle_s)
                if number == rounds:
                    # Measured on the next parking, so the watchers are parked right now.
                    request = _request("GET", f"{KEY_PATH}?index={index}&wait=5m", port)
                    for conn in watchers:
                        client.send(conn, request)
                    time.sleep(settle_s)
                    rss_mb = _rss_mb(proc.pid)
                every += latencies
                rows.append(
                    [
                        str(number),
                        f"{min(latencies):.2f}",
                        f"{percentile(latencies, 50):.2f}",
                        f"{percentile(latencies, 99):.2f}",
                        f"{max(latencies):.2f}",
                    ]
                )
            if not proc.alive():
                raise BenchError(f"registry died during the run:\n{proc.log_tail()}")
    print(f"{n_watchers} watchers on {KEY_PATH}, {rounds} rounds, settle {settle_s:.1f}s")
    print_table(["round", "min_ms", "p50_ms", "p99_ms", "max_ms"], rows)
    p99 = percentile(every, 99)
    print(f"BLOCKING_WAKE_MS p99={p99:.2f}")
    print(f"REGISTRY_RSS_MB watchers={n_watchers} value={rss_mb:.2f}")
    verdict = "meets" if p99 <= TARGET_P99_MS else "MISSES"
    print(f"verdict: wake p99 {p99:.2f} ms {verdict} the target (<= {TARGET_P99_MS:.0f} ms)")
