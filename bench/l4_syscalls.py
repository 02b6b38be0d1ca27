#!/usr/bin/env python3
"""The L4 path's syscalls per request, meshd's against haproxy's, counted by ``perf stat``.

Not a suite (no ``run_suite``): a tool for working on meshd's TCP relay
(``meshd/net/reactor.py``) next to ``bench/profile_l7.py --l4``. It starts the ``dataplane``
backend nginx, haproxy's ``mode tcp`` frontend (``nbthread 1``) and one meshd per checkout named
(the ``dataplane`` bootstrap; ``mypyc:DIR`` is DIR's compiled build, as ``bench/run`` runs it),
then loads each proxy in turn with wrk (``BENCH_*`` settings: a warm-up, then the measured run)
while ``perf stat -e 'syscalls:sys_enter_*' -p PID`` counts every syscall the proxy enters,
and prints, per proxy and round, the syscalls per request by name, their total, and the CPU
per request split into user and system time (``/proc/PID/stat``).

    .venv/bin/python bench/l4_syscalls.py --rounds 2 mypyc:/tmp/base mypyc:.

Counts per request depend on how many sockets each wake-up finds ready (batching), so they
move with load less than CPU time does, but they do move: compare checkouts within one run.
Needs ``perf`` with the syscall tracepoints readable (root, or ``perf_event_paranoid`` <= 1).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataplane as dp
from common import (
    CLK_TCK,
    BenchError,
    Context,
    ProcessGroup,
    WrkParams,
    ensure_tools,
    free_ports,
    rss_kb,
    run_wrk,
)
from profile_l7 import _checkout_ctx, user_sys_ticks

TOOLS = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk"}


def parse_perf(text: str) -> Counter[str]:
    """``perf stat -x,`` output: ``count,,syscalls:sys_enter_NAME,...`` lines."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[2].startswith("syscalls:sys_enter_"):
            continue
        try:
            n = int(fields[0])
        except ValueError:
            continue  # "<not counted>"
        if n:
            counts[fields[2].removeprefix("syscalls:sys_enter_")] = n
    return counts


def measure(
    perf: str, wrk: str, params: WrkParams, name: str, port: int, pid: int, top: int
) -> tuple[float, float, float]:
    """One warm-up and one counted wrk run on ``port``; prints and returns (syscalls, user µs,
    system µs) per request."""
    url = f"http://127.0.0.1:{port}/"
    if params.warmup_s:
        run_wrk(wrk, url, params, params.warmup_s)
    with tempfile.NamedTemporaryFile("r", suffix=".perf") as out:
        counter = subprocess.Popen(
            [perf, "stat", "-x,", "-o", out.name, "-e", "syscalls:sys_enter_*", "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            before = user_sys_ticks(pid)
            result = run_wrk(wrk, url, params, params.duration_s)
            after = user_sys_ticks(pid)
        finally:
            counter.send_signal(signal.SIGINT)
            _, err = counter.communicate(timeout=30)
        counts = parse_perf(Path(out.name).read_text())
    if not counts:
        raise BenchError(f"perf counted nothing for {name} (pid {pid}):\n{err}")
    requests = max(result.requests, 1)
    scale = 1e6 / CLK_TCK / requests
    user, system = ((a - b) * scale for a, b in zip(after, before, strict=True))
    total = sum(counts.values()) / requests
    shown = "  ".join(f"{k} {v / requests:.3f}" for k, v in counts.most_common(top))
    print(
        f"{name}: rps={result.rps:.0f} cpu_us/req={user + system:.1f} (user {user:.1f}, "
        f"sys {system:.1f}) syscalls/req={total:.3f}: {shown}",
        flush=True,
    )
    return total, user, system


def record(
    perf: str, wrk: str, params: WrkParams, name: str, port: int, pid: int, tmp: Path, top: int
) -> None:
    """Sample ``pid`` with ``perf record -e cpu-clock`` during one wrk run; print the top
    shared objects and symbols."""
    data = tmp / f"perf-{port}.data"
    url = f"http://127.0.0.1:{port}/"
    sampler = subprocess.Popen(
        [perf, "record", "-q", "-e", "cpu-clock", "-F", "4999", "-o", str(data), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_wrk(wrk, url, params, params.duration_s)
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.communicate(timeout=60)
    for sort in ("dso", "dso,sym"):
        report = subprocess.run(
            [perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [ln for ln in report.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        if sort != "dso":  # the user-space symbols (the kernel's are the table's sys time)
            lines = [ln for ln in lines if "[k]" not in ln]
        print(f"{name} perf record by {sort}:")
        for line in lines[: top * (1 if sort == "dso" else 4)]:
            print(f"  {' '.join(line.split())}")


def main(argv: list[str]) -> int:
    """Start the proxies, count each one's syscalls under wrk, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", help="meshd trees (mypyc:DIR: DIR compiled)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--top", type=int, default=8, help="syscalls shown per run")
    parser.add_argument("--no-haproxy", action="store_true", help="count only the meshds")
    parser.add_argument(
        "--record",
        action="store_true",
        help="then sample one more run per proxy with `perf record -e cpu-clock` and print "
        "the shares by shared object and by symbol (kernel and user)",
    )
    args = parser.parse_args(argv)
    perf = shutil.which("perf")
    if perf is None:
        raise BenchError("needs perf (linux-perf)")
    tools = ensure_tools(TOOLS)
    params = WrkParams.from_env()
    with tempfile.TemporaryDirectory(prefix="meshd-l4sys-") as tmp, ProcessGroup() as procs:
        base = Context(Path.cwd(), sys.executable, params, Path(tmp))
        backend, hap_l7, hap_l4 = free_ports(3)
        dp.start_nginx(base, procs, tools["nginx"], "backend", "nginx-backend.conf", port=backend)
        targets: list[tuple[str, int, int]] = []
        if not args.no_haproxy:
            hap = dp.start_haproxy(
                base, procs, tools["haproxy"], backend_port=backend, l7_port=hap_l7, l4_port=hap_l4
            )
            dp.check_path(dp.BenchPath("haproxy-l4", hap_l4, None))
            targets.append(("haproxy-l4", hap_l4, hap.pid))
        for i, spec in enumerate(args.checkouts):
            ctx = _checkout_ctx(base, spec, i)
            l7, l4, admin = free_ports(3)
            proc = dp._start_meshd(
                ctx,
                procs,
                backend_port=backend,
                l7_port=l7,
                l4_port=l4,
                admin_port=admin,
                name=f"meshd-{i}",
            )
            dp.check_path(dp.BenchPath(spec, l4, None))
            targets.append((spec, l4, proc.pid))
        time.sleep(1.0)  # as the dataplane suite reads meshd_idle: settled after the checks
        for spec, _, pid in targets[0 if args.no_haproxy else 1 :]:
            print(f"{spec}: VmRSS before any load {rss_kb(pid) / 1024:.2f} MB", flush=True)
        print(f"l4_syscalls: {params.describe()}, warm-up {params.warmup_s}s", flush=True)
        totals: dict[str, list[float]] = {name: [] for name, _, _ in targets}
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for name, port, pid in order:
                total, _, _ = measure(perf, tools["wrk"], params, name, port, pid, args.top)
                totals[name].append(total)
        for name, values in totals.items():
            values.sort()
            print(f"SYSCALLS_PER_REQ {name}: median={values[len(values) // 2]:.3f} {values}")
        if args.record:
            for name, port, pid in targets:
                record(perf, tools["wrk"], params, name, port, pid, Path(tmp), args.top)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as exc:
        print(f"l4_syscalls: {exc}", file=sys.stderr)
        sys.exit(1)
