"""meshd's resident memory: idle, and holding 1000 open keep-alive connections.

One meshd (one worker, metrics on, access log off, the policy suite's snapshot with retries,
breakers, outlier detection, health checks, EWMA and a rate limit: configured, not triggered)
in front of the dataplane suite's nginx backend. After start-up and one check request it idles
for ``BENCH_MEMORY_SETTLE`` seconds (default 2); its VmRSS is then sampled five times, 0.2 s
apart, and the median reported. Then ``BENCH_MEMORY_CONNECTIONS`` clients (default 1000)
connect, each sends one GET, reads the answer and keeps its connection open; after the same
settle time VmRSS is sampled again. Prints a table (VmRSS, RssAnon, RssFile, Pss in MB) and:

    RSS_MB meshd_idle=<x>
    RSS_MB meshd_<N>_conns=<x>
    INFO kb_per_conn=<(RSS with N connections - idle RSS) / N>
    INFO idle_cpu_ms_per_s meshd=<x> meshd_<N>_conns=<x> nginx_backend=<x>

and a one-line verdict against the target (idle <= 40 MB). The CPU line is what the idle
sidecar costs its host (CPU milliseconds per second over ``BENCH_MEMORY_CPU_S`` seconds,
default 10): without connections, then with the N connections open and idle; the backend
nginx's workers, as idle, over the first window for reference.
"""

from __future__ import annotations

import os
import selectors
import socket
import statistics
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from common import (
    CLK_TCK,
    LOOPBACK,
    BenchError,
    Context,
    ProcessGroup,
    cpu_ticks,
    ensure_tools,
    env_int,
    free_ports,
    http_get,
    parse_response,
    print_table,
    raise_fd_limit,
    start_meshd,
)
from dataplane import nginx_workers, start_nginx
from policy import write_sidecar

TOOLS = {"nginx": "nginx-light"}
#: Target of idle VmRSS (issue 15), reported, not failed.
TARGET_IDLE_MB = 40.0
#: The /proc/PID/status and smaps_rollup fields reported, in kB.
FIELDS = ("VmRSS", "RssAnon", "RssFile", "Pss")
_SAMPLES = 5
_BATCH = 100
_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench-memory\r\n\r\n"


@dataclass(frozen=True)
class MemoryParams:
    """The suite's knobs (``BENCH_MEMORY_*`` environment variables, clamped)."""

    connections: int = 1000
    settle_s: int = 2
    #: How long idle CPU is measured, idle and then with the connections open.
    cpu_s: int = 10

    @classmethod
    def from_env(cls) -> MemoryParams:
        """``BENCH_MEMORY_CONNECTIONS`` (1-20000), ``BENCH_MEMORY_SETTLE`` (0-60 s) and
        ``BENCH_MEMORY_CPU_S`` (1-120 s)."""
        return cls(
            connections=env_int("BENCH_MEMORY_CONNECTIONS", 1000, 1, 20000),
            settle_s=env_int("BENCH_MEMORY_SETTLE", 2, 0, 60),
            cpu_s=env_int("BENCH_MEMORY_CPU_S", 10, 1, 120),
        )


def parse_memory(status: str, smaps_rollup: str = "") -> dict[str, int]:
    """The :data:`FIELDS` (kB) found in ``/proc/PID/status`` and ``smaps_rollup`` texts."""
    out: dict[str, int] = {}
    for text in (status, smaps_rollup):
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if name in FIELDS and name not in out and parts and parts[0].isdigit():
                out[name] = int(parts[0])
    if "VmRSS" not in out:
        raise BenchError("no VmRSS in /proc/PID/status")
    return out


def read_memory(pid: int) -> dict[str, int]:
    """:func:`parse_memory` of process ``pid`` now."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError as exc:
        raise BenchError(f"process {pid} vanished while being measured") from exc
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        rollup = ""  # Pss needs a kernel >= 4.14 (and the right to read it)
    return parse_memory(status, rollup)


def median_memory(samples: list[dict[str, int]]) -> dict[str, int]:
    """Field by field median of ``samples`` (fields missing from one are left out)."""
    fields = [f for f in FIELDS if all(f in s for s in samples)]
    return {f: int(statistics.median(s[f] for s in samples)) for f in fields}


def sample(pid: int, count: int = _SAMPLES, every_s: float = 0.2) -> dict[str, int]:
    """The median of ``count`` readings of ``pid``'s memory, ``every_s`` apart."""
    readings = []
    for i in range(count):
        if i:
            time.sleep(every_s)
        readings.append(read_memory(pid))
    return median_memory(readings)


def mb(kb: int) -> float:
    """kB as MB (1024 kB each)."""
    return kb / 1024


def report_lines(
    idle: Mapping[str, int],
    loaded: Mapping[str, int],
    connections: int,
    cpu: Mapping[str, float] | None = None,
) -> list[str]:
    """The RSS_MB / INFO lines and the verdict, from the two samples; with ``cpu`` (CPU
    milliseconds per second: ``meshd_idle``, ``meshd_conns``, ``nginx_idle``) its line too."""
    idle_mb, loaded_mb = mb(idle["VmRSS"]), mb(loaded["VmRSS"])
    per_conn = (loaded["VmRSS"] - idle["VmRSS"]) / connections
    verdict = "ok" if idle_mb <= TARGET_IDLE_MB else "MISS"
    lines = [
        f"RSS_MB meshd_idle={idle_mb:.2f}",
        f"RSS_MB meshd_{connections}_conns={loaded_mb:.2f}",
        f"INFO kb_per_conn={per_conn:.1f}",
    ]
    if cpu is not None:
        lines.append(
            f"INFO idle_cpu_ms_per_s meshd={cpu['meshd_idle']:.2f} "
            f"meshd_{connections}_conns={cpu['meshd_conns']:.2f} "
            f"nginx_backend={cpu['nginx_idle']:.2f}"
        )
    lines.append(f"memory: idle rss<={TARGET_IDLE_MB:g}MB {verdict}")
    return lines


def cpu_ms_per_s(pids: list[int], seconds: float) -> float:
    """CPU milliseconds per second of wall time the processes ``pids`` use over ``seconds``."""
    before = cpu_ticks(pids)
    started = time.monotonic()
    time.sleep(seconds)
    spent = cpu_ticks(pids) - before
    return spent / CLK_TCK * 1000 / (time.monotonic() - started)


def open_keepalive(port: int, count: int, timeout_s: float = 60.0) -> list[socket.socket]:
    """``count`` connections to ``port``, each having had one 200 answer, left open.

    Opened in batches (the listener's backlog is finite); every socket is closed on error.
    """
    opened: list[socket.socket] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(opened) < count:
            batch = [socket.socket() for _ in range(min(_BATCH, count - len(opened)))]
            opened += batch
            _one_request_each(batch, port, deadline)
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


def _one_request_each(socks: list[socket.socket], port: int, deadline: float) -> None:
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sock.setblocking(False)
            sock.connect_ex((LOOPBACK, port))
            sel.register(sock, selectors.EVENT_WRITE, bytearray())
        pending = len(socks)
        while pending:
            if time.monotonic() > deadline:
                raise BenchError(f"{pending} keep-alive connections still unanswered")
            for key, events in sel.select(timeout=1.0):
                conn, buf = key.fileobj, key.data
                assert isinstance(conn, socket.socket) and isinstance(buf, bytearray)
                if events & selectors.EVENT_WRITE:
                    error = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        raise BenchError(f"connect to {port}: {os.strerror(error)}")
                    conn.sendall(_REQUEST)  # small: fits the empty send buffer
                    sel.modify(conn, selectors.EVENT_READ, buf)
                    continue
                data = conn.recv(65536)
                if not data:
                    raise BenchError("meshd closed a keep-alive connection")
                buf += data
                parsed = parse_response(buf)
                if parsed is None:
                    continue
                response, _used = parsed
                if response.status != 200:
                    raise BenchError(f"keep-alive request answered {response.status}")
                sel.unregister(conn)
                pending -= 1


def _row(name: str, memory: Mapping[str, int]) -> list[str]:
    return [name, *(f"{mb(memory[f]):.2f}" if f in memory else "-" for f in FIELDS)]


def run_suite(ctx: Context) -> None:
    """Start the backend and one meshd; sample its memory idle, then with N connections."""
    params = MemoryParams.from_env()
    tools = ensure_tools(TOOLS)
    # The client's sockets, and meshd's (it inherits the limit): downstream + upstream each.
    raise_fd_limit(3 * params.connections + 256)
    backend, port, admin = free_ports(3)
    print(
        f"memory: {params.connections} keep-alive connections, {params.settle_s}s settle; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; meshd on {ctx.python}",
        flush=True,
    )
    with ProcessGroup() as procs:
        nginx = start_nginx(
            ctx, procs, tools["nginx"], "backend", "nginx-backend.conf", port=backend
        )
        bootstrap = write_sidecar(
            ctx.tempdir("meshd"), backend_port=backend, port=port, admin_port=admin, policy=True
        )
        meshd = start_meshd(ctx, procs, "meshd", bootstrap, (port,), admin)
        status, _body, head = http_get(port)
        if status != 200:
            raise BenchError(f"meshd's listener answered {status}:\n{head}")
        time.sleep(params.settle_s)
        idle = sample(meshd.pid)
        # Idle CPU: what a sidecar costs its host while nothing happens (timers, sweeps); the
        # backend nginx, as idle, for reference. Both measured over the same window.
        with ThreadPoolExecutor(1) as pool:
            ref = pool.submit(cpu_ms_per_s, nginx_workers(nginx)(), params.cpu_s)
            cpu = {"meshd_idle": cpu_ms_per_s([meshd.pid], params.cpu_s)}
            cpu["nginx_idle"] = ref.result()
        conns = open_keepalive(port, params.connections)
        try:
            time.sleep(params.settle_s)
            loaded = sample(meshd.pid)
            cpu["meshd_conns"] = cpu_ms_per_s([meshd.pid], params.cpu_s)
        finally:
            for sock in conns:
                sock.close()
        if not meshd.alive():
            raise BenchError(f"meshd exited during the run:\n{meshd.log_tail()}")
    print_table(
        ["state", *(f"{f}_MB" for f in FIELDS)],
        [_row("idle", idle), _row(f"{params.connections} conns", loaded)],
    )
    for line in report_lines(idle, loaded, params.connections, cpu):
        print(line)
