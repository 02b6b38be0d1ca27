#!/usr/bin/env python3
"""Where meshd's L7 time goes: CPU per request (A/B between checkouts) and a py-spy profile.

Not a suite (no ``run_suite``): a tool for working on the hot path. It starts the
``dataplane`` backend nginx and one meshd per checkout named (the ``dataplane`` bootstrap:
metrics on, access logs off, one worker), then for ``--rounds`` rounds runs wrk on each
meshd's HTTP listener in turn (the order alternates each round) and prints each run's rps and
meshd's CPU microseconds per request. With ``--profile``, one more wrk run per checkout is
sampled by ``py-spy record`` (``--py-spy`` or ``$PY_SPY``, else ``py-spy`` on ``PATH``), and
the top functions by own time and by total time are printed, as shares of the samples.

    .venv/bin/python bench/profile_l7.py --rounds 3 --profile . /tmp/baseline-checkout

With ``--paired``, each round loads every meshd at the same time (one wrk each) instead of
one after the other, and prints each checkout's CPU per request as a ratio to the first
checkout's in the same round. On a shared machine whose load comes and goes, runs in turn
compare different moments (10% apart for the same code); paired runs share them.

``--policy`` runs each meshd with the ``policy`` suite's snapshot instead (retries, breakers,
outlier detection, a health check, EWMA, a rate limit on every request: none triggered).

A checkout named ``mypyc:DIR`` runs DIR's mypyc-compiled build (as ``bench/run`` does by
default: ``meshd_build.py``, compiled modules cached by source), e.g. ``. mypyc:.`` compares
pure Python with the compiled build of the same tree.

Each checkout runs with itself first on ``PYTHONPATH``, in this interpreter. Settings:
``BENCH_DURATION``, ``BENCH_WARMUP``, ``BENCH_THREADS``, ``BENCH_CONNECTIONS`` as for
``bench/run``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataplane as dp
import meshd_build
import policy
from common import (
    CLK_TCK,
    BenchError,
    Context,
    ManagedProcess,
    ProcessGroup,
    WrkParams,
    _stat_fields,
    cpu_ticks,
    ensure_tools,
    free_ports,
    run_wrk,
    start_meshd,
)

TOOLS = {"nginx": "nginx-light", "wrk": "wrk"}


def parse_collapsed(text: str) -> tuple[Counter[str], Counter[str], int]:
    """Own and total samples per function from py-spy's ``--format raw`` (collapsed stacks).

    Each line is ``frame;frame;...;frame count``, outermost first; a frame is
    ``function (file:line)``. Functions are named ``function (file)``: lines are merged, and a
    function counts once per stack in the totals however deep it recurses.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_function(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    return own, total, samples


def _function(frame: str) -> str:
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    # The package-relative path is enough to find it (and keeps site-packages paths short).
    for marker in ("/site-packages/", "/meshd/", "/meshcore/", "/lib/python3"):
        index = path.find(marker)
        if index >= 0:
            path = path[index + 1 :]
            break
    return f"{name} ({path})"


def format_top(counts: Counter[str], samples: int, limit: int) -> list[str]:
    """``limit`` lines ``share%  function``, largest first."""
    return [
        f"{100.0 * n / samples:6.1f}%  {name}" for name, n in counts.most_common(limit) if samples
    ]


def paired_ratio(first: list[float], second: list[float]) -> float:
    """The median of ``second[i] / first[i]``: each round's two runs shared the machine's
    load of that moment, so their ratio moves less than the figures themselves."""
    ratios = sorted(b / a for a, b in zip(first, second, strict=True) if a > 0)
    return statistics.median(ratios) if ratios else float("nan")


def user_sys_ticks(pid: int) -> tuple[int, int]:
    """utime and stime of ``pid`` (all threads), in clock ticks."""
    fields = _stat_fields(pid)
    return int(fields[11]), int(fields[12])


def _checkout_ctx(ctx: Context, spec: str, index: int) -> Context:
    """``DIR`` as it is, or ``mypyc:DIR``: DIR's compiled build, assembled in the workdir."""
    kind, sep, where = spec.partition("mypyc:")
    root = Path(where if sep and not kind else spec).resolve()
    build = meshd_build.PURE
    if sep and not kind:
        build = meshd_build.prepare(root, "mypyc", ctx.workdir / f"build-{index}")
        print(f"{spec}: {build.info_line()}", flush=True)
    return Context(root, ctx.python, ctx.wrk, ctx.workdir, build)


def main(argv: list[str]) -> int:
    """Parse the arguments, run the rounds, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkouts", nargs="+", help="meshd source trees to compare (mypyc:DIR: DIR compiled)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also sample each with py-spy")
    parser.add_argument("--py-spy", default=os.environ.get("PY_SPY") or shutil.which("py-spy"))
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--l4", action="store_true", help="load the TCP listener instead of the HTTP one"
    )
    parser.add_argument(
        "--close",
        action="store_true",
        help="a new connection per request (wrk sends `Connection: close`): measures what "
        "a connection costs (accept, upstream connect, close) rather than a request",
    )
    parser.add_argument(
        "--policy",
        action="store_true",
        help="the policy suite's snapshot (policy configured, not triggered) on the HTTP listener",
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only while the GIL is held: Python's own work, without syscalls or "
        "time spent preempted inside one (on a busy machine a send that wakes the peer "
        "often gives it the CPU)",
    )
    parser.add_argument("--keep", help="directory to keep py-spy's collapsed stacks in")
    parser.add_argument(
        "--paired", action="store_true", help="load all the checkouts at once in each round"
    )
    parser.add_argument(
        "--ratio",
        metavar="NAME",
        help="also print `RATIO NAME=<x>`: the median over rounds of the second checkout's "
        "CPU per request divided by the first's in the same round (e.g. mypyc_cpu_vs_pure)",
    )
    args = parser.parse_args(argv)
    if args.policy and args.l4:
        parser.error("--policy loads the HTTP listener: not with --l4")
    if args.profile and not args.py_spy:
        parser.error("--profile needs py-spy (--py-spy PATH or $PY_SPY)")
    tools = ensure_tools(TOOLS)
    wrk_params = WrkParams.from_env()
    # The temp dir goes however the run ends (a failed build or start leaves nothing behind).
    with tempfile.TemporaryDirectory(prefix="meshd-profile-") as tmp, ProcessGroup() as procs:
        workroot = Path(tmp)
        base = Context(Path.cwd(), sys.executable, wrk_params, workroot)
        script = _close_script(workroot) if args.close else None
        (backend,) = free_ports(1)
        dp.start_nginx(base, procs, tools["nginx"], "backend", "nginx-backend.conf", port=backend)
        meshds = []
        for i, root in enumerate(args.checkouts):
            ctx = _checkout_ctx(base, root, i)
            l7, l4, admin = free_ports(3)
            if args.policy:
                bootstrap = policy.write_sidecar(
                    ctx.tempdir(f"meshd-{i}"),
                    backend_port=backend,
                    port=l7,
                    admin_port=admin,
                    policy=True,
                )
                proc = start_meshd(ctx, procs, f"meshd-{i}", bootstrap, (l7,), admin)
            else:
                proc = dp._start_meshd(
                    ctx,
                    procs,
                    backend_port=backend,
                    l7_port=l7,
                    l4_port=l4,
                    admin_port=admin,
                    name=f"meshd-{i}",
                )
            path = dp.BenchPath(f"meshd-{i}", l4 if args.l4 else l7, dp.process_tree(proc))
            dp.check_path(path)
            meshds.append((root, proc, path))
        print(f"profile_l7: {wrk_params.describe()}, warm-up {wrk_params.warmup_s}s", flush=True)
        per_req: dict[int, list[float]] = {i: [] for i in range(len(meshds))}
        if args.paired:
            _paired_rounds(args.rounds, tools["wrk"], wrk_params, meshds, per_req, script)
        for rnd in range(0 if args.paired else args.rounds):
            order = list(range(len(meshds)))
            if rnd % 2:
                order.reverse()
            for i in order:
                root, proc, path = meshds[i]
                url = f"http://127.0.0.1:{path.port}/"
                if wrk_params.warmup_s:
                    run_wrk(tools["wrk"], url, wrk_params, wrk_params.warmup_s, script=script)
                before = user_sys_ticks(proc.pid)
                result = run_wrk(
                    tools["wrk"], url, wrk_params, wrk_params.duration_s, script=script
                )
                after = user_sys_ticks(proc.pid)
                scale = 1e6 / CLK_TCK / max(result.requests, 1)
                user, system = ((a - b) * scale for a, b in zip(after, before, strict=True))
                per_req[i].append(user + system)
                print(
                    f"round {rnd} {root}: rps={result.rps:.0f} cpu_us/req={user + system:.1f} "
                    f"(user {user:.1f}, sys {system:.1f}) "
                    f"errors={result.non_2xx + result.socket_errors}",
                    flush=True,
                )
        for i, (root, _, _) in enumerate(meshds):
            values = sorted(per_req[i])
            if values:
                print(f"CPU_US_PER_REQ {root}: median={values[len(values) // 2]:.1f} {values}")
        if args.ratio and len(meshds) >= 2:
            print(f"RATIO {args.ratio}={paired_ratio(per_req[0], per_req[1]):.2f}")
        if args.profile:
            for root, proc, path in meshds:
                _profile(
                    args, tools["wrk"], wrk_params, root, proc.pid, path.port, workroot, script
                )
    return 0


def _paired_rounds(
    rounds: int,
    wrk: str,
    params: WrkParams,
    meshds: list[tuple[str, ManagedProcess, dp.BenchPath]],
    per_req: dict[int, list[float]],
    script: Path | None,
) -> None:
    """Rounds that load every meshd at once; ratios to the first checkout per round."""
    ratios: dict[int, list[float]] = {i: [] for i in range(1, len(meshds))}
    urls = [f"http://127.0.0.1:{path.port}/" for _, _, path in meshds]
    with ThreadPoolExecutor(max_workers=len(meshds)) as pool:
        for rnd in range(rounds):
            if params.warmup_s:
                list(
                    pool.map(
                        lambda url: run_wrk(wrk, url, params, params.warmup_s, script=script),
                        urls,
                    )
                )
            before = [user_sys_ticks(proc.pid) for _, proc, _ in meshds]
            results = list(
                pool.map(
                    lambda url: run_wrk(wrk, url, params, params.duration_s, script=script), urls
                )
            )
            after = [user_sys_ticks(proc.pid) for _, proc, _ in meshds]
            line = []
            for i, result in enumerate(results):
                ticks = sum(after[i]) - sum(before[i])
                per_req[i].append(ticks * 1e6 / CLK_TCK / max(result.requests, 1))
                line.append(f"{meshds[i][0]}: rps={result.rps:.0f} cpu_us/req={per_req[i][-1]:.1f}")
            for i, values in ratios.items():
                values.append(per_req[i][-1] / per_req[0][-1])
            print(f"paired round {rnd}: " + "  ".join(line), flush=True)
    for i, values in ratios.items():
        values.sort()
        shown = ", ".join(f"{v:.3f}" for v in values)
        print(
            f"PAIRED_RATIO {meshds[i][0]} / {meshds[0][0]}: median={values[len(values) // 2]:.3f} "
            f"[{shown}]"
        )


def _close_script(workroot: Path) -> Path:
    """A wrk Lua script that asks for a new connection per request."""
    script = workroot / "close.lua"
    script.write_text('wrk.headers["Connection"] = "close"\n')
    return script


def _profile(
    args: argparse.Namespace,
    wrk: str,
    params: WrkParams,
    root: str | Path,
    pid: int,
    port: int,
    workroot: Path,
    script: Path | None = None,
) -> None:
    out = workroot / f"profile-{pid}.txt"
    duration = params.duration_s
    spy = subprocess.Popen(
        [
            args.py_spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--duration",
            str(duration + 1),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
            *(["--gil"] if args.gil else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    before = cpu_ticks([pid])
    result = run_wrk(wrk, f"http://127.0.0.1:{port}/", params, duration, script=script)
    spent = cpu_ticks([pid]) - before
    _, err = spy.communicate(timeout=duration + 60)
    if spy.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')}")
    text = out.read_text()
    if args.keep:
        spec = str(root)
        compiled = "-mypyc" if spec.startswith("mypyc:") else ""
        name = Path(spec.removeprefix("mypyc:")).resolve().name or "root"
        kept = Path(args.keep) / f"profile-{name}{compiled}.txt"
        kept.write_text(text)
        print(f"(collapsed stacks kept in {kept})")
    own, total, samples = parse_collapsed(text)
    cpu = spent / CLK_TCK * 1e6 / max(result.requests, 1)
    print(f"\nPROFILE {root}: {samples} samples, rps={result.rps:.0f} cpu_us/req={cpu:.1f}")
    print(f"-- top {args.top} by own time")
    print("\n".join(format_top(own, samples, args.top)))
    print(f"-- top {args.top} by total time (inclusive)")
    print("\n".join(format_top(total, samples, args.top)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
