#!/usr/bin/env python3
"""meshd's L7 path in user-space instructions per request: an A/B that load can't move.

Not a suite (no ``run_suite``): a tool for working on the hot path next to
``bench/profile_l7.py``. CPU time per request on a shared machine moves 5-10% between rounds
of the same code; an instruction count does not. Each checkout runs meshd's HTTP proxy code
(``serve_http`` with the ``dataplane`` listener and cluster, metrics on, access log off) in one
process and one trio loop, with a canned keep-alive backend and clients on loopback sockets,
under ``valgrind --tool=callgrind``; two runs with different request counts give the
instructions per request, start-up cancelled out. A run without the proxy (clients straight
to the backend) gives the harness's own share, subtracted.

    .venv/bin/python bench/l7_instructions.py /tmp/base .
    .venv/bin/python bench/l7_instructions.py mypyc:/tmp/base mypyc:.   # the compiled builds
    .venv/bin/python bench/l7_instructions.py --policy mypyc:.   # with the suite's policy

A checkout named ``mypyc:DIR`` runs DIR's mypyc-compiled build, made as ``bench/run`` makes it
(``meshd_build.py``: from the compile cache, or compiled there first).

Counted: user-space instructions (Python, trio, llhttp, libc), deterministic to about 0.01%
with ``PYTHONHASHSEED=0``. Not counted: the kernel's share (syscalls, about a quarter of
meshd's CPU), and cache or scheduling effects, so a change of syscalls or of wake-ups still
needs ``profile_l7.py --paired``. Each run takes a minute or two (valgrind is ~50x slower).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CONNECTIONS = 8
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 14:30:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)
_COLLECTED = re.compile(r"Collected : (\d+)")


def _listen() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.setblocking(False)
    return sock, int(sock.getsockname()[1])


#: ``--policy``: the ``dataplane`` suite's resilience policy (bench/templates/meshd-snapshot.yaml),
#: configured and never triggered, less its health check (a timer: its checks would land
#: unevenly in the two runs whose difference is counted).
POLICY_ROUTE = {
    "timeout_s": 30,
    "retries": {"attempts": 3, "retry_on": ["connect-failure", "gateway-error"]},
}
POLICY_CLUSTER = {
    "lb_policy": "ewma",
    "limits": {
        "max_connections": 100000,
        "max_pending_requests": 100000,
        "max_requests": 100000,
        "max_retries": 100000,
    },
    "outlier_detection": {
        "consecutive_5xx": 5,
        "consecutive_gateway_errors": 5,
        "consecutive_local_origin_failures": 5,
        "interval_s": 10,
    },
}


def snapshot_doc(proxy_port: int, backend_port: int, *, l4: bool, policy: bool) -> dict[str, Any]:
    """The harness's snapshot: one outbound listener to the one cluster, with ``policy`` the
    dataplane suite's (:data:`POLICY_ROUTE`, :data:`POLICY_CLUSTER`) on a route table."""
    listener: dict[str, Any] = {
        "name": "bench-l7",
        "direction": "outbound",
        "address": f"127.0.0.1:{proxy_port}",
    }
    cluster: dict[str, Any] = {
        "name": "backend",
        "service": "backend",
        "endpoints": [{"host": "127.0.0.1", "port": backend_port}],
    }
    doc: dict[str, Any] = {"version": 1, "listeners": [listener], "clusters": [cluster]}
    if l4:
        listener.update(protocol="tcp", cluster="backend")
    elif policy:
        listener["route_table"] = "bench"
        route = {"name": "all", "backends": [{"cluster": "backend"}], **POLICY_ROUTE}
        doc["route_tables"] = [{"name": "bench", "routes": [route]}]
        cluster.update(POLICY_CLUSTER)
    else:
        listener["cluster"] = "backend"
    return doc


def harness(requests: int, direct: bool, l4: bool = False, policy: bool = False) -> None:
    """Serve ``requests`` requests (after a warm-up) through meshd's proxy code (its TCP
    listener's with ``l4``; with ``policy``, the dataplane suite's resilience policy), or
    straight to the backend with ``direct``; imports meshd from ``sys.path`` (the checkout)."""
    import trio

    from meshcore.model import Bootstrap, Snapshot
    from meshd.accesslog import AccessLog
    from meshd.cluster.pool import PoolManager
    from meshd.config import build_runtime
    from meshd.context import ProxyShared
    from meshd.http.config import HttpListenerConfig
    from meshd.http.connection import serve_http
    from meshd.net.stream import SocketStream
    from meshd.stats import Stats
    from meshd.tcp.config import TcpListenerConfig
    from meshd.tcp.proxy import serve_tcp

    async def accept(lsock: socket.socket, handle: object, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(lsock)
            try:
                sock, _ = lsock.accept()
            except BlockingIOError:
                continue
            nursery.start_soon(handle, sock)  # type: ignore[arg-type]

    async def backend(sock: socket.socket) -> None:
        sock.setblocking(False)
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                sock.close()
                return
            sock.send(RESPONSE * data.count(b"\r\n\r\n"))

    async def client(port: int, count: int, request: bytes) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        await trio.lowlevel.wait_writable(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            sock.send(request)
            got = b""
            while not got.endswith(b"hello world\n"):
                await trio.lowlevel.wait_readable(sock)
                try:
                    piece = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not piece:
                    raise RuntimeError("the proxy closed the connection")
                got += piece
            if not got.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"unexpected response: {got!r}")
        sock.close()

    async def main() -> None:
        backend_sock, backend_port = _listen()
        proxy_sock, proxy_port = _listen()
        bootstrap = Bootstrap.model_validate(
            {
                "service": "bench",
                "app": f"127.0.0.1:{backend_port}",
                "admin": "127.0.0.1:1",
                "snapshot": {"file": "snapshot.yaml"},
                "access_log": {"enabled": False},
            }
        )
        snapshot = Snapshot.model_validate(
            snapshot_doc(proxy_port, backend_port, l4=l4, policy=policy)
        )
        cfg = build_runtime(bootstrap, snapshot, PoolManager()).listeners["bench-l7"]
        shared = ProxyShared(stats=Stats(), access_log=AccessLog(enabled=False, sample_rate=1.0))

        async def proxy(sock: socket.socket) -> None:
            if isinstance(cfg, TcpListenerConfig):
                await serve_tcp(SocketStream(sock), cfg, shared)
            else:
                assert isinstance(cfg, HttpListenerConfig)
                await serve_http(SocketStream(sock), cfg, shared)

        port = backend_port if direct else proxy_port
        request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept, backend_sock, backend, nursery)
            nursery.start_soon(accept, proxy_sock, proxy, nursery)
            for count in (100, requests // CONNECTIONS):  # warm-up, then the measured run
                async with trio.open_nursery() as clients:
                    for _ in range(CONNECTIONS):
                        clients.start_soon(client, port, count, request)
            nursery.cancel_scope.cancel()

    trio.run(main)


def instructions(
    valgrind: str,
    checkout: Path,
    requests: int,
    *,
    direct: bool,
    l4: bool = False,
    policy: bool = False,
) -> int:
    """User-space instructions of one harness run of ``checkout``."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(checkout)}
    cmd = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    cmd += [__file__, "--worker", str(requests), *(["--direct"] if direct else [])]
    cmd += ["--l4"] if l4 else []
    cmd += ["--policy"] if policy else []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"harness failed for {checkout}:\n{done.stderr[-3000:]}")
    return int(found.group(1))


def per_request(
    valgrind: str,
    checkout: Path,
    requests: int,
    *,
    direct: bool = False,
    l4: bool = False,
    policy: bool = False,
) -> float:
    """Instructions per request: the difference of a run of ``requests`` and one of thrice
    as many, so start-up and warm-up cancel out."""
    low = instructions(valgrind, checkout, requests, direct=direct, l4=l4, policy=policy)
    high = instructions(valgrind, checkout, 3 * requests, direct=direct, l4=l4, policy=policy)
    return (high - low) / (2 * (requests // CONNECTIONS) * CONNECTIONS)


def _tree(spec: str, work: Path) -> Path:
    """The directory whose ``meshd`` the harness imports: ``DIR`` as it is, or for
    ``mypyc:DIR`` DIR's compiled build, assembled under ``work``."""
    kind, sep, where = spec.partition("mypyc:")
    if not sep or kind:
        return Path(spec).resolve()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import meshd_build  # only a compiled build needs it (and hatchling)

    build = meshd_build.prepare(Path(where).resolve(), "mypyc", work)
    print(f"{spec}: {build.info_line()}", flush=True)
    assert build.path is not None
    return build.path


def main(argv: list[str]) -> int:
    """Parse the arguments, measure each checkout, print instructions per request."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkouts", nargs="*", help="meshd source trees (mypyc:DIR: DIR's compiled build)"
    )
    parser.add_argument("--requests", type=int, default=1600)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--l4",
        action="store_true",
        help="through meshd's TCP listener (bytes relayed by meshd/net/reactor.py)",
    )
    parser.add_argument(
        "--policy",
        action="store_true",
        help="with the dataplane suite's resilience policy (retries, breakers, outlier "
        "detection, EWMA; no health check), as bench/run dataplane's meshd-l7",
    )
    args = parser.parse_args(argv)
    if args.l4 and args.policy:
        parser.error("--policy is for the HTTP listener")
    if args.worker is not None:
        harness(args.worker, args.direct, args.l4, args.policy)
        return 0
    if not args.checkouts:
        parser.error("name at least one checkout")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="l7-instructions-") as work:
        roots = [_tree(spec, Path(work) / str(i)) for i, spec in enumerate(args.checkouts)]
        own = per_request(valgrind, roots[0], args.requests, direct=True)
        print(f"harness alone (clients and backend): {own:,.0f} instructions/request", flush=True)
        first = 0.0
        for spec, root in zip(args.checkouts, roots, strict=True):
            proxied = per_request(valgrind, root, args.requests, l4=args.l4, policy=args.policy)
            proxied -= own
            first = first or proxied
            print(
                f"IR_PER_REQ {spec}: {proxied:,.0f} (x{proxied / first:.4f} of the first)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
