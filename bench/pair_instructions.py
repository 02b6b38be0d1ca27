#!/usr/bin/env python3
"""The mTLS sidecar pair in user-space instructions (and system calls) per request.

Not a suite (no ``run_suite``): a tool for working on the pair's per-request cost next to
``bench/profile_mtls.py``, whose CPU figures move between rounds of the same code on a shared
machine. Each checkout's ``mtls`` suite pair (``meshd-outbound`` -> ``meshd-inbound`` -> the
``dataplane`` backend nginx; identity from files, one process each) runs with both sidecars
under ``valgrind --tool=callgrind``, in two modes:

* ``mtls``: the suite's pair (plaintext in, TLS 1.3 with client certificates out, pooled;
  the inbound side STRICT);
* ``plain``: the same bootstraps and snapshots without the identity, so both hops are
  plaintext: two plain L7 hops, the inbound one with its inbound listener.

``--connections`` keep-alive clients (threads in this process, not counted) send ``--warm``
requests each, then ``--requests`` in all between two callgrind dumps of each sidecar; the
tool prints each sidecar's instructions per request, the pair's, and the ``mtls`` pair's
excess over the ``plain`` one. ``--objects`` splits each sidecar's count by shared object
(libcrypto, libssl, libc, the interpreter, meshd's compiled extension, ...); ``--calls``
adds calls per request of the functions that say how the I/O goes (``SSL_read_ex``,
``SSL_write_ex``, ``recv``, ``read``, ``epoll_wait``, ...).

    .venv/bin/python bench/pair_instructions.py --objects --calls mypyc:.
    .venv/bin/python bench/pair_instructions.py --mode mtls mypyc:/tmp/base mypyc:.

``--syscalls`` measures instead, without valgrind, the system calls per request of each
sidecar under ``wrk`` (``BENCH_*`` settings, the warm-up then ``BENCH_DURATION`` seconds),
counted by ``perf stat`` on the ``syscalls:sys_enter_*`` tracepoints (root).

Counted under callgrind: user-space instructions of both sidecar processes, deterministic to
a fraction of a percent with ``PYTHONHASHSEED=0`` (how often a read finds the next request
there depends on timing, which moves the count a little). Not counted: the kernel, cache
misses and scheduling. A checkout takes one to two minutes per mode.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import dataplane as dp
import mtls
from certs import Pki
from dataplane import BODY
from mtls_instructions import OUT, backend_and_pki, by_object, dump, start_callgrind_meshd
from profile_l7 import _checkout_ctx, user_sys_ticks

MODES = ("plain", "mtls")
SIDES = (("meshd-outbound", "web"), ("meshd-inbound", "api"))
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
#: Functions whose calls per request ``--calls`` shows (OpenSSL's, libc's I/O wrappers).
CALLED = (
    "SSL_read_ex",
    "SSL_write_ex",
    "SSL_pending",
    "read",
    "write",
    "recv",
    "send",
    "epoll_wait",
    "epoll_ctl",
    "poll",
)
#: How long perf gets to attach before the measured run.
PERF_SETTLE_S = 3.0
_NAMED = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")
_PERF = re.compile(r"^(\d+),[^,]*,syscalls:sys_enter_(\w+),", re.M)


def calls(path: Path, names: tuple[str, ...]) -> Counter[str]:
    """Calls of each of ``names`` in a callgrind dump (from every caller)."""
    ids: dict[str, str] = {}
    found: Counter[str] = Counter()
    callee = ""
    for line in path.read_text(errors="replace").splitlines():
        named = _NAMED.match(line)
        if named is not None:
            ident, name = named.groups()
            if name:
                ids[ident] = name
            if line.startswith("cfn="):
                callee = ids.get(ident, "")
        elif line.startswith("calls=") and callee in names:
            found[callee] += int(line[6:].split()[0])
    return found


@dataclass
class Side:
    """One sidecar of a pair: what the dumps counted per request."""

    name: str
    per_request: float = 0.0
    objects: Counter[str] | None = None
    called: Counter[str] | None = None


def start_pair(
    ctx: common.Context,
    procs: common.ProcessGroup,
    pki: Pki,
    backend: int,
    mode: str,
    *,
    callgrind: bool,
) -> tuple[int, list[common.ManagedProcess]]:
    """The pair of ``mode`` (outbound first); returns the outbound port and the processes."""
    inbound, outbound, in_admin, out_admin = common.free_ports(4)
    ports = {"app_port": backend, "inbound_port": inbound}
    procs_started = []
    # The inbound side first: the outbound one connects to it.
    for (name, service), port, admin in zip(
        SIDES[::-1], (inbound, outbound), (in_admin, out_admin), strict=True
    ):
        workdir = ctx.tempdir(f"{name}-{mode}")
        bootstrap = mtls.sidecar_config(workdir, pki, service, port=port, admin_port=admin, **ports)
        if mode == "plain":
            mtls.without_identity(bootstrap)
        if callgrind:
            proc = start_callgrind_meshd(ctx, procs, name, bootstrap, port, admin)
        else:
            proc = common.start_meshd(ctx, procs, name, bootstrap, [port], admin)
        procs_started.append(proc)
    dp.check_path(dp.BenchPath(f"pair-{mode}", outbound, None))
    return outbound, procs_started[::-1]


def _client(port: int, warm: int, count: int, barrier: threading.Barrier) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=120.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for phase, n in enumerate((warm, count)):
            for _ in range(n):
                sock.sendall(REQUEST)
                got = b""
                while not got.endswith(BODY):
                    piece = sock.recv(65536)
                    if not piece:
                        raise common.BenchError("the pair closed a client connection")
                    got += piece
                if not got.startswith(b"HTTP/1.1 200 "):
                    raise common.BenchError(f"unexpected response: {got[:300]!r}")
            if phase == 0:
                barrier.wait()  # warmed up: the dumps
                barrier.wait()  # counted from here


def count_pair(
    port: int, sidecars: list[common.ManagedProcess], connections: int, warm: int, requests: int
) -> list[Path]:
    """Warm the pair up, count ``requests`` (rounded to the connections); each sidecar's dump."""
    barrier = threading.Barrier(connections + 1, timeout=1800.0)
    each = requests // connections
    outs = [Path(proc.log.parent) / OUT for proc in sidecars]
    with ThreadPoolExecutor(connections) as pool:
        clients = [pool.submit(_client, port, warm, each, barrier) for _ in range(connections)]
        barrier.wait()
        for proc, out in zip(sidecars, outs, strict=True):
            dump(proc, out)
        barrier.wait()
        for client in clients:
            client.result()
    return [dump(proc, out) for proc, out in zip(sidecars, outs, strict=True)]


def measure(
    base: common.Context,
    spec: str,
    index: int,
    pki: Pki,
    backend: int,
    mode: str,
    args: argparse.Namespace,
) -> list[Side]:
    """Both sidecars' instructions per request of one checkout in one mode."""
    workdir = base.tempdir(f"{index}-{mode}")
    ctx = _checkout_ctx(common.Context(base.root, base.python, base.wrk, workdir), spec, index)
    with common.ProcessGroup() as procs:
        port, sidecars = start_pair(ctx, procs, pki, backend, mode, callgrind=True)
        dumps = count_pair(port, sidecars, args.connections, args.warm, args.requests)
    counted = args.requests // args.connections * args.connections
    sides = []
    for proc, path in zip(sidecars, dumps, strict=True):
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, args.keep / f"{index}-{mode}-{proc.name}.callgrind")
        objects = by_object(path)
        side = Side(proc.name, sum(objects.values()) / counted)
        if args.objects:
            side.objects = objects
        if args.calls:
            side.called = calls(path, CALLED)
        sides.append(side)
    return sides


def _show(spec: str, mode: str, sides: list[Side], counted: int) -> None:
    pair = sum(s.per_request for s in sides)
    each = "  ".join(f"{s.name} {s.per_request:,.0f}" for s in sides)
    print(f"IR_PER_REQ {spec} {mode}: pair {pair:,.0f}  ({each})", flush=True)
    for side in sides:
        if side.objects:
            top = side.objects.most_common(7)
            print(f"    {side.name}: " + ", ".join(f"{n} {c / counted:,.0f}" for n, c in top))
        if side.called is not None:
            shown = ", ".join(f"{n} {side.called[n] / counted:.2f}" for n in CALLED)
            print(f"    {side.name} calls/request: {shown}")


def syscalls(
    base: common.Context, spec: str, index: int, pki: Pki, backend: int, mode: str, wrk: str
) -> None:
    """Each sidecar's system calls per request under wrk (perf stat on the tracepoints)."""
    workdir = base.tempdir(f"{index}-{mode}")
    ctx = _checkout_ctx(common.Context(base.root, base.python, base.wrk, workdir), spec, index)
    params = base.wrk
    with common.ProcessGroup() as procs:
        url_port, sidecars = start_pair(ctx, procs, pki, backend, mode, callgrind=False)
        url = f"http://127.0.0.1:{url_port}/"
        if params.warmup_s:
            common.run_wrk(wrk, url, params, params.warmup_s)
        perfs = []
        for proc in sidecars:
            out = proc.log.parent / "perf.csv"
            argv = ["perf", "stat", "-x,", "-o", str(out), "-e", "syscalls:sys_enter_*"]
            argv += ["-p", str(proc.pid)]
            perf = procs.start(f"perf-{proc.name}", argv, cwd=out.parent, stop_signal=signal.SIGINT)
            perfs.append((perf, out))
        time.sleep(PERF_SETTLE_S)  # attaching to ~350 tracepoints takes perf a moment
        for perf, _ in perfs:
            if not perf.alive():
                raise common.BenchError(f"{perf.name} exited:\n{perf.log_tail()}")
        before = [user_sys_ticks(proc.pid) for proc in sidecars]
        result = common.run_wrk(wrk, url, params, params.duration_s)
        after = [user_sys_ticks(proc.pid) for proc in sidecars]
        # All told at once: stopped one after the other, the second perf measured ignoring
        # its SIGINT once the first had exited (and wrote nothing when killed).
        for perf, _ in perfs:
            perf.popen.send_signal(signal.SIGINT)
        for perf, _ in perfs:
            perf.popen.wait(60)
        requests = max(result.requests, 1)
        for proc, (_, out), b, a in zip(sidecars, perfs, before, after, strict=True):
            counts = {m.group(2): int(m.group(1)) for m in _PERF.finditer(out.read_text())}
            if not counts:
                raise common.BenchError(f"perf counted nothing for {proc.name}")
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:7]
            shown = ", ".join(f"{n} {c / requests:.2f}" for n, c in top if c)
            user, system = ((a[i] - b[i]) * 1e6 / common.CLK_TCK / requests for i in (0, 1))
            print(
                f"SYSCALLS_PER_REQ {spec} {mode} {proc.name}: {sum(counts.values()) / requests:.2f}"
                f" ({shown}); cpu_us/req {user + system:.1f} (user {user:.1f}, sys {system:.1f}),"
                f" {result.rps:.0f} req/s",
                flush=True,
            )


def main(argv: list[str]) -> int:
    """Parse the arguments, measure each checkout in each mode, print the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("checkouts", nargs="+", help="meshd source trees (mypyc:DIR: compiled)")
    parser.add_argument("--mode", choices=MODES, action="append", help="default: both")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warm", type=int, default=50, help="requests per connection first")
    parser.add_argument("--requests", type=int, default=2400, help="counted, in all")
    parser.add_argument("--objects", action="store_true", help="split by shared object")
    parser.add_argument("--calls", action="store_true", help="I/O calls per request")
    parser.add_argument("--keep", type=Path, help="copy the counted dumps into this directory")
    parser.add_argument("--syscalls", action="store_true", help="perf stat under wrk instead")
    args = parser.parse_args(argv)
    modes = args.mode or list(MODES)
    needed = {"nginx": "nginx-light", **({"wrk": "wrk"} if args.syscalls else {})}
    tools = common.ensure_tools(needed)
    if not args.syscalls and shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    if args.syscalls and shutil.which("perf") is None:
        raise SystemExit("perf is needed (apt-get install linux-perf)")
    counted = args.requests // args.connections * args.connections
    with backend_and_pki("meshd-pair-instructions-", tools["nginx"]) as (base, pki, backend):
        for index, spec in enumerate(args.checkouts):
            pairs: dict[str, float] = {}
            for mode in modes:
                if args.syscalls:
                    syscalls(base, spec, index, pki, backend, mode, tools["wrk"])
                    continue
                sides = measure(base, spec, index, pki, backend, mode, args)
                pairs[mode] = sum(s.per_request for s in sides)
                _show(spec, mode, sides, counted)
            if len(pairs) == 2:
                extra = pairs["mtls"] - pairs["plain"]
                print(f"IR_TLS_EXTRA {spec}: {extra:,.0f} per request", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
