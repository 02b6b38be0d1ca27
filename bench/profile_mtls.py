#!/usr/bin/env python3
"""meshd's mTLS costs, A/B between checkouts: CPU per full handshake and per request.

Not a suite (no ``run_suite``): a tool for working on the mTLS path. It writes the ``mtls``
suite's PKI, starts the ``dataplane`` backend nginx and, per checkout named, the ``mtls``
suite's meshd pair (``meshd-outbound`` -> mTLS -> ``meshd-inbound`` -> backend); with
``--nginx``, the suite's ``nginx-back`` too (handshakes only). Each of ``--rounds`` rounds
loads every server at the same time (paired: on a shared machine, runs in turn compare
different moments):

* ``handshakes``: one ``openssl s_time -new -tls1_3`` client (the suite's settings) per
  inbound side for ``BENCH_MTLS_HS_SECONDS``, started in an order that alternates each round;
  the inbound process's CPU per completed full handshake;
* ``pair``: one wrk per meshd pair (warm-up, then ``BENCH_DURATION``); both sidecars' CPU
  per request.

Prints each round's figures, then per figure the median of each checkout and the median of the
per-round ratios to the first checkout (``PAIRED_RATIO``); the handshake figure also split into
user and system time (``hs_user``, ``hs_sys``). ``--syscalls`` adds each inbound server's
system calls and context switches per handshake (``perf stat``, root). A checkout compared
with itself (``. .``) shows the noise floor.

    BENCH_DURATION=4 .venv/bin/python bench/profile_mtls.py --rounds 5 /tmp/base .

A checkout named ``mypyc:DIR`` runs DIR's mypyc-compiled build (what ``bench/run`` measures),
as in ``bench/profile_l7.py``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataplane as dp
import mtls
from certs import Pki, write_pki
from common import (
    CLK_TCK,
    BenchError,
    Context,
    ManagedProcess,
    ProcessGroup,
    WrkParams,
    cpu_ticks,
    ensure_tools,
    free_ports,
    run_wrk,
)
from profile_l7 import _checkout_ctx, paired_ratio, user_sys_ticks

FIGURES = ("handshakes", "pair")
#: Handshake figures split by where the CPU went (``cpu_us/hs`` of user and system time).
SPLIT = ("hs_user", "hs_sys")
#: Completed handshakes per second of each side's ``s_time`` client: what the suite's
#: ``handshakes_vs_nginx`` compares, the client's own work per handshake included (it shares
#: the machine's CPUs), unlike ``cpu_us/hs``.
RATE = "hs_per_s"
#: How long perf gets to attach before the clients start (``--syscalls``).
PERF_SETTLE_S = 3.0
_PERF = re.compile(r"^(\d+),[^,]*,(?:syscalls:sys_enter_)?([\w-]+),", re.M)


@dataclass
class Server:
    """One inbound side under test, and its pair's outbound port (None: no pair)."""

    name: str
    port: int
    cpu_pids: Callable[[], list[int]]
    refused: Callable[[], int]
    pair_port: int | None = None
    pair_pids: Callable[[], list[int]] | None = None
    response_len: int = 0
    #: False for a pair without TLS (``--plain``): no handshakes to measure.
    handshake: bool = True
    figures: dict[str, list[float]] = field(default_factory=dict)
    #: ``--syscalls``: system calls (by name) and context switches per completed handshake,
    #: summed over the rounds, and the rounds counted.
    syscalls: dict[str, float] = field(default_factory=dict)

    def as_mtls_server(self) -> mtls.MtlsServer:
        """What ``mtls._handshakes`` measures."""
        return mtls.MtlsServer(self.name, self.port, self.cpu_pids, self.refused)


def _meshd_pair(
    ctx: Context, procs: ProcessGroup, pki: Pki, name: str, backend: int, *, plain: bool = False
) -> Server:
    inbound, outbound, in_admin, out_admin = free_ports(4)
    ports = {"app_port": backend, "inbound_port": inbound}
    mesh_in = mtls._start_sidecar(
        ctx, procs, pki, "api", {**ports, "port": inbound, "admin_port": in_admin}, plain=plain
    )
    mesh_out = mtls._start_sidecar(
        ctx, procs, pki, "web", {**ports, "port": outbound, "admin_port": out_admin}, plain=plain
    )
    dp.check_path(dp.BenchPath(name, outbound, None))
    in_pids = dp.process_tree(mesh_in)
    return Server(
        name,
        inbound,
        in_pids,
        lambda: mtls._meshd_refused(in_admin),
        pair_port=outbound,
        pair_pids=mtls._both(in_pids, dp.process_tree(mesh_out)),
    )


def _handshake_round(
    ctx: Context,
    openssl: str,
    pki: Pki,
    servers: list[Server],
    pool: ThreadPoolExecutor,
    rnd: int,
    *,
    procs: ProcessGroup | None = None,
) -> None:
    """One round of handshakes on every TLS server at once; with ``procs``, each server's
    system calls too (``perf stat``, started in ``procs``: it slows the server down, so
    compare those rounds' CPU only with each other)."""
    settings = mtls.Settings.from_env()
    settings = mtls.Settings(settings.rate_connections, 1, settings.hs_seconds)

    def one(server: Server) -> mtls.Handshakes:
        sub = Context(ctx.root, ctx.python, ctx.wrk, ctx.tempdir(f"hs-{rnd}-{server.port}"))
        return mtls._handshakes(
            sub, openssl, pki, settings, server.as_mtls_server(), server.response_len
        )

    # The clients start in turn: the order alternates each round, so neither side always
    # starts first.
    tls = [s for s in servers if s.handshake]
    order = tls if rnd % 2 == 0 else tls[::-1]
    perfs = _start_perf(ctx, procs, order, rnd) if procs is not None else []
    before = [[user_sys_ticks(pid) for pid in s.cpu_pids()] for s in order]
    results = list(pool.map(one, order))
    after = [[user_sys_ticks(pid) for pid in s.cpu_pids()] for s in order]
    for perf, _ in perfs:
        perf.popen.send_signal(signal.SIGINT)
    for perf, _ in perfs:
        perf.popen.wait(60)
    for i, (server, result) in enumerate(zip(order, results, strict=True)):
        if result.cpu_us_per_hs is None or not result.completed:
            continue
        server.figures.setdefault("handshakes", []).append(result.cpu_us_per_hs)
        server.figures.setdefault(RATE, []).append(result.per_s)
        for j, name in enumerate(SPLIT):
            ticks = sum(a[j] - b[j] for a, b in zip(after[i], before[i], strict=True))
            server.figures.setdefault(name, []).append(ticks / CLK_TCK * 1e6 / result.completed)
        if perfs:
            text = perfs[i][1].read_text()
            for m in _PERF.finditer(text):
                name, count = m.group(2), int(m.group(1)) / result.completed
                server.syscalls[name] = server.syscalls.get(name, 0.0) + count
            server.syscalls["rounds"] = server.syscalls.get("rounds", 0.0) + 1


def _start_perf(
    ctx: Context, procs: ProcessGroup, servers: list[Server], rnd: int
) -> list[tuple[ManagedProcess, Path]]:
    perfs = []
    for server in servers:
        out = ctx.tempdir(f"perf-{rnd}-{server.port}") / "perf.csv"
        pids = ",".join(str(pid) for pid in server.cpu_pids())
        argv = ["perf", "stat", "-x,", "-o", str(out), "-e", "syscalls:sys_enter_*"]
        argv += ["-e", "context-switches", "-p", pids]
        perf = procs.start("perf", argv, cwd=out.parent, stop_signal=signal.SIGINT)
        perfs.append((perf, out))
    time.sleep(PERF_SETTLE_S)  # attaching to ~350 tracepoints takes perf a moment
    for perf, _ in perfs:
        if not perf.alive():
            raise BenchError(f"perf exited:\n{perf.log_tail()}")
    return perfs


def _pair_round(
    wrk: str, params: WrkParams, servers: list[Server], pool: ThreadPoolExecutor
) -> None:
    pairs = [s for s in servers if s.pair_port is not None and s.pair_pids is not None]
    urls = [f"http://127.0.0.1:{s.pair_port}/" for s in pairs]
    if params.warmup_s:
        list(pool.map(lambda url: run_wrk(wrk, url, params, params.warmup_s), urls))
    pids = [s.pair_pids() for s in pairs if s.pair_pids is not None]
    before = [cpu_ticks(p) for p in pids]
    results = list(pool.map(lambda url: run_wrk(wrk, url, params, params.duration_s), urls))
    after = [cpu_ticks(p) for p in pids]
    for server, result, b, a in zip(pairs, results, before, after, strict=True):
        per_req = (a - b) * 1e6 / CLK_TCK / max(result.requests, 1)
        server.figures.setdefault("pair", []).append(per_req)


def report(servers: list[Server]) -> list[str]:
    """Per figure: each server's median, then each one's median per-round ratio to the first."""
    lines = []
    for figure in FIGURES:
        measured = [s for s in servers if s.figures.get(figure)]
        if not measured:
            continue
        unit = "cpu_us/hs" if figure == "handshakes" else "cpu_us/req"
        medians = "  ".join(
            f"{s.name}={statistics.median(s.figures[figure]):.1f}" for s in measured
        )
        lines.append(f"{figure} ({unit}, median): {medians}")
        first = measured[0].figures[figure]
        for other in measured[1:]:
            values = other.figures[figure]
            if len(values) == len(first):
                ratio = paired_ratio(first, values)
                lines.append(
                    f"PAIRED_RATIO {figure} {other.name} / {measured[0].name}: {ratio:.3f}"
                )
    measured = [s for s in servers if s.figures.get(RATE)]
    if measured:
        medians = "  ".join(f"{s.name}={statistics.median(s.figures[RATE]):.1f}" for s in measured)
        lines.append(f"{RATE} (median): {medians}")
        first = measured[0].figures[RATE]
        for other in measured[1:]:
            if len(other.figures[RATE]) == len(first):
                ratio = paired_ratio(first, other.figures[RATE])
                lines.append(f"PAIRED_RATIO {RATE} {other.name} / {measured[0].name}: {ratio:.3f}")
    for figure in SPLIT:
        measured = [s for s in servers if s.figures.get(figure)]
        if measured:
            medians = "  ".join(
                f"{s.name}={statistics.median(s.figures[figure]):.1f}" for s in measured
            )
            lines.append(f"{figure} (cpu_us/hs, median): {medians}")
    for server in servers:
        rounds = server.syscalls.get("rounds", 0)
        if rounds:
            counts = {k: v / rounds for k, v in server.syscalls.items() if k != "rounds"}
            switches = counts.pop("context-switches", 0.0)
            ordered = sorted(counts.items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{k} {v:.2f}" for k, v in ordered if v >= 0.05)
            lines.append(
                f"SYSCALLS_PER_HS {server.name}: {sum(counts.values()):.2f} ({shown});"
                f" context switches {switches:.2f}"
            )
    return lines


def main(argv: list[str]) -> int:
    """Parse the arguments, start everything, run the rounds, print the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "checkouts", nargs="+", help="meshd source trees to compare (mypyc:DIR: DIR compiled)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=FIGURES, help="measure one figure only")
    parser.add_argument("--nginx", action="store_true", help="also nginx-back's handshakes")
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="handshakes: also system calls per handshake (perf stat, root; slows the servers)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="also each checkout's pair without TLS (pair only)"
    )
    args = parser.parse_args(argv)
    tools = ensure_tools(mtls.TOOLS)
    params = WrkParams.from_env()
    workroot = Path(tempfile.mkdtemp(prefix="meshd-profile-mtls-"))
    base = Context(Path.cwd(), sys.executable, params, workroot)
    pki = write_pki(base.tempdir("pki"), mtls.SERVICES)
    (backend,) = free_ports(1)
    with ProcessGroup() as procs, ThreadPoolExecutor(max_workers=8) as pool:
        dp.start_nginx(base, procs, tools["nginx"], "backend", "nginx-backend.conf", port=backend)
        servers = []
        for i, spec in enumerate(args.checkouts):
            workdir = base.tempdir(f"checkout-{i}")
            ctx = _checkout_ctx(Context(Path.cwd(), sys.executable, params, workdir), spec, i)
            servers.append(_meshd_pair(ctx, procs, pki, f"{i}:{spec}", backend))
            if args.plain:
                plain = _meshd_pair(ctx, procs, pki, f"{i}:{spec}:plain", backend, plain=True)
                plain.handshake = False
                servers.append(plain)
        if args.nginx:
            (back,) = free_ports(1)
            proc = dp.start_nginx(
                base, procs, tools["nginx"], "nginx-back", "nginx-mtls-back.conf",
                port=back, backend_port=backend,
            )  # fmt: skip
            not_ok = proc.log.parent / "not-ok.log"
            refused = lambda: len(not_ok.read_bytes().splitlines()) if not_ok.exists() else 0  # noqa: E731
            servers.append(Server("nginx-back", back, dp.nginx_workers(proc), refused))
        for server in servers:
            if server.handshake:
                server.response_len = mtls.check_mtls_server(server.name, server.port, pki)
        print(f"profile_mtls: {params.describe()}, warm-up {params.warmup_s}s", flush=True)
        for rnd in range(args.rounds):
            if args.only in (None, "handshakes"):
                perf_procs = procs if args.syscalls else None
                _handshake_round(base, tools["openssl"], pki, servers, pool, rnd, procs=perf_procs)
            if args.only in (None, "pair"):
                _pair_round(tools["wrk"], params, servers, pool)
            shown = "  ".join(
                f"{s.name}: " + " ".join(f"{k}={v[-1]:.1f}" for k, v in s.figures.items())
                for s in servers
            )
            print(f"round {rnd}: {shown}", flush=True)
    print("\n".join(report(servers)))
    shutil.rmtree(workroot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
