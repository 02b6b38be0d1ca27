#!/usr/bin/env python3
"""The L4 (or L7) path's syscalls per request, meshd's against haproxy's (nginx's), counted by
``perf stat``.

Not a suite (no ``run_suite``): a tool for working on meshd's TCP relay
(``meshd/net/reactor.py``) next to ``bench/profile_l7.py --l4``. It starts the ``dataplane``
backend nginx, haproxy's ``mode tcp`` frontend (``nbthread 1``) and one meshd per checkout named
(the ``dataplane`` bootstrap; ``mypyc:DIR`` is DIR's compiled build, as ``bench/run`` runs it),
then loads each proxy in turn with wrk (``BENCH_*`` settings: a warm-up, then the measured run)
while ``perf stat -e 'syscalls:sys_enter_*' -p PID`` counts every syscall the proxy enters,
and prints, per proxy and round, the syscalls per request by name, their total, and the CPU
per request split into user and system time (``/proc/PID/stat``).

    .venv/bin/python bench/l4_syscalls.py --rounds 2 mypyc:/tmp/base mypyc:.

``--l7`` loads each meshd's HTTP listener instead, against nginx as the L7 proxy (the
``dataplane`` suite's ``nginx-l7``: its one worker counted). ``--events`` counts more ``perf``
events per request beside the syscalls (e.g. ``page-faults,context-switches,cpu-migrations``);
when it names syscall tracepoints itself (``syscalls:sys_enter_brk``), only those are traced
rather than every syscall, whose tracing adds system time. Each run also prints the involuntary
context switches per request of the counted process's main thread
(``nonvoluntary_ctxt_switches`` in ``/proc/PID/status``).

    .venv/bin/python bench/l4_syscalls.py --l7 --events page-faults,context-switches mypyc:.

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
_SYSCALL = "syscalls:sys_enter_"


def parse_perf(text: str) -> tuple[Counter[str], Counter[str]]:
    """``perf stat -x,`` output (``count,,EVENT,...`` lines): the syscalls entered by name
    (``syscalls:sys_enter_NAME``), and the other events' counts by event."""
    counts: Counter[str] = Counter()
    others: Counter[str] = Counter()
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3:
            continue
        try:
            n = int(fields[0])
        except ValueError:
            continue  # "<not counted>"
        if fields[2].startswith(_SYSCALL):
            if n:
                counts[fields[2].removeprefix(_SYSCALL)] = n
        elif fields[2]:
            others[fields[2]] = n
    return counts, others


def involuntary_switches(pid: int) -> int:
    """``nonvoluntary_ctxt_switches`` of ``pid``'s main thread."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("nonvoluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def measure(
    perf: str,
    wrk: str,
    params: WrkParams,
    name: str,
    port: int,
    pid: int,
    top: int,
    events: tuple[str, ...] = (),
) -> tuple[float, float, float]:
    """One warm-up and one counted wrk run on ``port``; prints and returns (syscalls, user µs,
    system µs) per request."""
    url = f"http://127.0.0.1:{port}/"
    if params.warmup_s:
        run_wrk(wrk, url, params, params.warmup_s)
    # Without syscalls in ``events``, every syscall (tracing them all adds system time).
    traced = events if any(e.startswith(_SYSCALL) for e in events) else (f"{_SYSCALL}*", *events)
    with tempfile.NamedTemporaryFile("r", suffix=".perf") as out:
        counter = subprocess.Popen(
            [perf, "stat", "-x,", "-o", out.name, *(f"-e{e}" for e in traced), "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(0.2)  # perf attached before the run starts
            before = user_sys_ticks(pid)
            switched = involuntary_switches(pid)
            result = run_wrk(wrk, url, params, params.duration_s)
            after = user_sys_ticks(pid)
            switched = involuntary_switches(pid) - switched
        finally:
            counter.send_signal(signal.SIGINT)
            _, err = counter.communicate(timeout=30)
        counts, others = parse_perf(Path(out.name).read_text())
    if not counts and not others:
        raise BenchError(f"perf counted nothing for {name} (pid {pid}):\n{err}")
    requests = max(result.requests, 1)
    scale = 1e6 / CLK_TCK / requests
    user, system = ((a - b) * scale for a, b in zip(after, before, strict=True))
    total = sum(counts.values()) / requests
    shown = "  ".join(f"{k} {v / requests:.3f}" for k, v in counts.most_common(top))
    more = "".join(f" {k}/req={v / requests:.4f}" for k, v in others.items())
    print(
        f"{name}: rps={result.rps:.0f} cpu_us/req={user + system:.1f} (user {user:.1f}, "
        f"sys {system:.1f}) syscalls/req={total:.3f}: {shown}{more} "
        f"involuntary_cs/req={switched / requests:.4f}",
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
    parser.add_argument(
        "--no-haproxy", action="store_true", help="count only the meshds (no haproxy or nginx)"
    )
    parser.add_argument(
        "--l7",
        action="store_true",
        help="load the HTTP listeners, against nginx as the L7 proxy (instead of haproxy's TCP)",
    )
    parser.add_argument(
        "--events", default="", help="more perf events to count per request, comma-separated"
    )
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
        if args.l7 and not args.no_haproxy:
            nginx = dp.start_nginx(
                base,
                procs,
                tools["nginx"],
                "nginx-proxy",
                "nginx-proxy.conf",
                port=hap_l7,
                backend_port=backend,
            )
            dp.check_path(dp.BenchPath("nginx-l7", hap_l7, None))
            targets.append(("nginx-l7", hap_l7, dp.nginx_workers(nginx)()[0]))
        elif not args.no_haproxy:
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
            port = l7 if args.l7 else l4
            dp.check_path(dp.BenchPath(spec, port, None))
            targets.append((spec, port, proc.pid))
        time.sleep(1.0)  # as the dataplane suite reads meshd_idle: settled after the checks
        for spec, _, pid in targets[0 if args.no_haproxy else 1 :]:
            print(f"{spec}: VmRSS before any load {rss_kb(pid) / 1024:.2f} MB", flush=True)
        print(
            f"l4_syscalls{' --l7' if args.l7 else ''}: {params.describe()}, "
            f"warm-up {params.warmup_s}s",
            flush=True,
        )
        events = tuple(e for e in args.events.split(",") if e)
        totals: dict[str, list[float]] = {name: [] for name, _, _ in targets}
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for name, port, pid in order:
                total, _, _ = measure(perf, tools["wrk"], params, name, port, pid, args.top, events)
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
