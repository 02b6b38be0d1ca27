"""meshd's HTTP (L7) and TCP (L4) proxying against nginx and haproxy, driven by wrk.

Every path gets the same wrk load in the same run against the same nginx backend; each proxy
has one worker/thread. Prints a table (rps, p50, p99, proxy CPU per request, errors), then
``RATIO l7_cpu_vs_nginx``, ``RATIO l4_cpu_vs_haproxy``, ``RATIO l7_rps_vs_nginx``,
``RATIO l4_rps_vs_haproxy``, ``RATIO telemetry_overhead`` (meshd-l7 with telemetry on, and
with a tap active, against both off: ``telemetry_overhead.py``) and ``RSS_MB meshd_idle`` and a
verdict, after INFO lines with the floors any Trio proxy has here: a bare Trio byte relay
against nginx and haproxy, and the resident memory of the required (and recommended) libraries
imported by themselves. With the compiled build (``bench/run``'s default), a pure-Python meshd
is measured beside it at the end (INFO lines only).
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from common import (
    CLK_TCK,
    BenchError,
    Context,
    ManagedProcess,
    ProcessGroup,
    Target,
    WrkResult,
    children,
    cpu_ticks,
    descendants,
    ensure_tools,
    free_ports,
    http_get,
    print_table,
    print_verdicts,
    ratio,
    ratio_line,
    render,
    rss_kb,
    run_wrk,
    start_meshd,
    wait_for_port,
)
from meshd_build import PURE, compare_pure
from rounds import median_figures, paired_order, rounds_from_env, rounds_lines

BODY = b"hello world\n"
TOOLS = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk"}


@dataclass(frozen=True)
class BenchPath:
    """One way from wrk to the backend: the port wrk hits and whose CPU the requests cost."""

    name: str
    port: int
    #: The proxy processes to charge CPU to (``None``: no proxy on this path).
    cpu_pids: Callable[[], list[int]] | None


@dataclass(frozen=True)
class Measured:
    """A path's wrk result and the proxy CPU spent on it."""

    path: BenchPath
    wrk: WrkResult
    cpu_us_per_req: float | None


def _user_line() -> str:
    # Workers as root, so they can use the temp dirs the root-owned harness created.
    return "user root;" if os.geteuid() == 0 else ""


def start_nginx(
    ctx: Context, procs: ProcessGroup, nginx: str, name: str, template: str, **ports: int
) -> ManagedProcess:
    workdir = ctx.tempdir(name)
    conf = render(template, workdir / "nginx.conf", dir=workdir, user_line=_user_line(), **ports)
    argv = [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    proc = procs.start(name, argv, cwd=workdir)
    wait_for_port(ports["port"], proc)
    return proc


def start_haproxy(
    ctx: Context,
    procs: ProcessGroup,
    haproxy: str,
    *,
    backend_port: int,
    l7_port: int,
    l4_port: int,
) -> ManagedProcess:
    """haproxy from ``haproxy.cfg``: an HTTP frontend on ``l7_port``, a TCP one on ``l4_port``,
    both to the backend; returns once both listen."""
    workdir = ctx.tempdir("haproxy")
    cfg = render(
        "haproxy.cfg",
        workdir / "haproxy.cfg",
        backend_port=backend_port,
        l7_port=l7_port,
        l4_port=l4_port,
    )
    proc = procs.start("haproxy", [haproxy, "-db", "-f", str(cfg)], cwd=workdir)
    wait_for_port(l7_port, proc)
    wait_for_port(l4_port, proc)
    return proc


def nginx_workers(master: ManagedProcess) -> Callable[[], list[int]]:
    def pids() -> list[int]:
        workers = children(master.pid)
        if not workers:
            raise BenchError(f"{master.name}: no worker process under master {master.pid}")
        return workers

    return pids


def process_tree(proc: ManagedProcess) -> Callable[[], list[int]]:
    return lambda: [proc.pid, *descendants(proc.pid)]


def _start_meshd(
    ctx: Context,
    procs: ProcessGroup,
    *,
    backend_port: int,
    l7_port: int,
    l4_port: int,
    admin_port: int,
    workers: int = 1,
    name: str = "meshd",
) -> ManagedProcess:
    workdir = ctx.tempdir(name)
    render(
        "meshd-snapshot.yaml",
        workdir / "snapshot.yaml",
        backend_port=backend_port,
        l7_port=l7_port,
        l4_port=l4_port,
    )
    bootstrap = render(
        "meshd-bootstrap.yaml",
        workdir / "bootstrap.yaml",
        backend_port=backend_port,
        admin_port=admin_port,
    )
    if workers > 1:
        text = bootstrap.read_text().rstrip("\n")
        bootstrap.write_text(f"{text}\nworkers: {workers}\n")
    return start_meshd(ctx, procs, name, bootstrap, (l7_port, l4_port), admin_port)


def _free_pair() -> int:
    """A free port whose successor is free too (worker 1 serves its admin API there)."""
    for _ in range(50):
        (port,) = free_ports(1)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise BenchError("no two consecutive free ports on 127.0.0.1")


def check_path(path: BenchPath) -> None:
    """One request must come back 200 with the backend's body, or there is nothing to measure."""
    status, body, head = http_get(path.port)
    if status != 200 or body != BODY:
        raise BenchError(
            f"path {path.name} (127.0.0.1:{path.port}) is broken: expected 200 {BODY!r}, "
            f"got:\n{head}\n\n{body[:500]!r}"
        )


def measure_path(ctx: Context, wrk: str, path: BenchPath) -> Measured:
    url = f"http://127.0.0.1:{path.port}/"
    if ctx.wrk.warmup_s:
        run_wrk(wrk, url, ctx.wrk, ctx.wrk.warmup_s)
    pids = path.cpu_pids() if path.cpu_pids is not None else []
    before = cpu_ticks(pids)
    result = run_wrk(wrk, url, ctx.wrk, ctx.wrk.duration_s)
    spent = cpu_ticks(pids) - before
    cpu = None
    if path.cpu_pids is not None and result.requests:
        cpu = spent / CLK_TCK * 1e6 / result.requests
    return Measured(path, result, cpu)


#: The libraries the project requires in the daemon, and those it recommends on top.
#: The required libraries an idle file-mode meshd imports (hypercorn is controld's; meshd
#: writes the Prometheus text format itself), and the recommended ones it imports too.
REQUIRED_IMPORTS = ("trio", "structlog")
RECOMMENDED_IMPORTS = ("pydantic", "httptools", "yaml")


def import_floor_kb(ctx: Context, modules: tuple[str, ...]) -> int:
    """VmRSS (kB) of a fresh interpreter that imported ``modules`` and nothing else."""
    script = pathlib.Path(__file__).parent / "reference" / "import_floor.py"
    done = subprocess.run(
        [ctx.python, str(script), *modules],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=ctx.project_env(),
    )
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise BenchError(f"import floor of {modules} failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.strip())


def print_measured(results: Iterable[Measured]) -> None:
    """The table of measured paths (rps, latency, CPU per request, errors)."""
    rows = [
        [
            m.path.name,
            f"{m.wrk.rps:.0f}",
            f"{m.wrk.p50_s * 1e3:.3f}",
            f"{m.wrk.p99_s * 1e3:.3f}",
            "-" if m.cpu_us_per_req is None else f"{m.cpu_us_per_req:.1f}",
            str(m.wrk.requests),
            str(m.wrk.non_2xx),
            str(m.wrk.socket_errors),
        ]
        for m in results
    ]
    headers = ["path", "rps", "p50_ms", "p99_ms", "cpu_us/req", "requests", "non2xx", "sock_err"]
    print_table(headers, rows)


def _report(
    results: list[Measured],
    extra: list[list[Measured]],
    meshd_rss_kb: int,
    floors_kb: tuple[int, int],
    telemetry: Callable[[], float],
) -> None:
    """Print the tables, INFO, RATIO and RSS lines and the verdict; ``telemetry`` prints the
    telemetry sidecars' table and INFO lines and returns ``RATIO telemetry_overhead``.
    ``extra``: the later rounds of the compared paths (:mod:`rounds`); each ratio is the
    median of the rounds'."""
    later = [
        replace(m, path=replace(m.path, name=f"{m.path.name}#{index}"))
        for index, measured in enumerate(extra, start=2)
        for m in measured
    ]
    print_measured(results + later)
    for m in results + later:
        if m.wrk.non_2xx or m.wrk.socket_errors:
            print(
                f"WARNING {m.path.name}: {m.wrk.non_2xx} non-2xx responses, "
                f"{m.wrk.socket_errors} socket errors; its figures are suspect"
            )
    rps = {m.path.name: m.wrk.rps for m in results}
    if not rps["nginx-l7"] or not rps["haproxy-l4"]:
        raise BenchError("a reference proxy completed no requests; no ratio to report")
    rss_mb = meshd_rss_kb / 1024
    # Context, not targets: two SO_REUSEPORT workers, and the floor of a proxy that parks a
    # task per read (meshd's L4 reactor parks none).
    print(f"INFO l7_rps_vs_nginx_workers2={rps['meshd-l7-w2'] / rps['nginx-l7']:.2f}")
    print(f"INFO l7_trio_relay_floor_vs_nginx={rps['trio-relay'] / rps['nginx-l7']:.2f}")
    # The relay moves bytes with no HTTP work: the L4 floor of a Trio proxy as well.
    print(f"INFO l4_trio_relay_floor_vs_haproxy={rps['trio-relay'] / rps['haproxy-l4']:.2f}")
    required, recommended = (kb / 1024 for kb in floors_kb)
    print(
        f"INFO rss_mb_required_imports={required:.2f} (+pydantic/httptools/yaml {recommended:.2f})"
    )
    overhead = telemetry()
    each = [ratios(results), *(ratios(measured) for measured in extra)]
    if extra:
        for line in rounds_lines(each):
            print(line)
    figures = median_figures(each)
    for name, value in figures.items():
        print(ratio_line(name, value))
    print(ratio_line(TELEMETRY_TARGET.name, overhead))
    print(f"RSS_MB meshd_idle={rss_mb:.2f}")
    print_verdicts(
        [
            *((t, figures[t.name]) for t in TARGETS),
            (TELEMETRY_TARGET, overhead),
            (RSS_TARGET, rss_mb),
        ]
    )


#: The paths behind the ratios, measured again in each later round.
COMPARED = ("nginx-l7", "meshd-l7", "haproxy-l4", "meshd-l4")


#: The targets (issue 15: CPU per request, which moves less between machines than rps).
TARGETS = (
    Target("l7_cpu_vs_nginx", 2.0, at_most=True),
    Target("l4_cpu_vs_haproxy", 1.5, at_most=True),
    Target("l7_rps_vs_nginx", 0.8, at_most=False),
    Target("l4_rps_vs_haproxy", 0.8, at_most=False),
)
RSS_TARGET = Target("rss_mb", 40, at_most=True)
#: Issue 14: meshd-l7's rps with telemetry on, and with a tap active, over both off
#: (``telemetry_overhead.py``).
TELEMETRY_TARGET = Target("telemetry_overhead", 0.95, at_most=False)


def ratios(results: list[Measured]) -> dict[str, float | None]:
    """meshd against the reference proxies: CPU per request and rps, L7 and L4, by name.

    A CPU ratio above 1 means meshd spends more CPU per request; an rps ratio below 1 means it
    completes fewer requests per second. None when a figure is missing (no requests).
    """
    by_name = {m.path.name: m for m in results}

    def cpu(name: str) -> float | None:
        return by_name[name].cpu_us_per_req

    def rps(name: str) -> float:
        return by_name[name].wrk.rps

    return {
        "l7_cpu_vs_nginx": ratio(cpu("meshd-l7"), cpu("nginx-l7")),
        "l4_cpu_vs_haproxy": ratio(cpu("meshd-l4"), cpu("haproxy-l4")),
        "l7_rps_vs_nginx": ratio(rps("meshd-l7"), rps("nginx-l7")),
        "l4_rps_vs_haproxy": ratio(rps("meshd-l4"), rps("haproxy-l4")),
    }


def run_suite(ctx: Context) -> None:
    """Start backend, nginx, haproxy and meshd on loopback; check, load and compare each path."""
    import telemetry_overhead as to  # here: it imports this module's pieces

    tools = ensure_tools(TOOLS)
    ports = free_ports(13)
    backend, nginx_l7, haproxy_l7, haproxy_l4, meshd_l7, meshd_l4, admin = ports[:7]
    w2_l7, w2_l4, relay, pure_l7, pure_l4, pure_admin = ports[7:13]
    w2_admin = _free_pair()
    print(
        f"dataplane: {ctx.wrk.describe()} per path after a {ctx.wrk.warmup_s}s warm-up; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; meshd on {ctx.python}",
        flush=True,
    )
    with ProcessGroup() as procs:
        backend_proc = start_nginx(
            ctx, procs, tools["nginx"], "backend", "nginx-backend.conf", port=backend
        )
        nginx = start_nginx(
            ctx,
            procs,
            tools["nginx"],
            "nginx-proxy",
            "nginx-proxy.conf",
            port=nginx_l7,
            backend_port=backend,
        )
        haproxy = start_haproxy(
            ctx,
            procs,
            tools["haproxy"],
            backend_port=backend,
            l7_port=haproxy_l7,
            l4_port=haproxy_l4,
        )
        meshd = _start_meshd(
            ctx, procs, backend_port=backend, l7_port=meshd_l7, l4_port=meshd_l4, admin_port=admin
        )
        meshd_w2 = _start_meshd(
            ctx,
            procs,
            backend_port=backend,
            l7_port=w2_l7,
            l4_port=w2_l4,
            admin_port=w2_admin,
            workers=2,
            name="meshd-w2",
        )
        relay_script = pathlib.Path(__file__).parent / "reference" / "trio_relay.py"
        relay_proc = procs.start(
            "trio-relay",
            [ctx.python, str(relay_script), str(relay), str(backend)],
            cwd=ctx.tempdir("trio-relay"),
            env=ctx.project_env(),
        )
        wait_for_port(relay, relay_proc)
        # The compiled build's cost beside pure Python's (what development runs), same run.
        pure = None
        if ctx.build.path is not None:
            pure = _start_meshd(
                replace(ctx, build=PURE),
                procs,
                backend_port=backend,
                l7_port=pure_l7,
                l4_port=pure_l4,
                admin_port=pure_admin,
                name="meshd-pure",
            )
        paths = [
            BenchPath("direct", backend, None),
            BenchPath("nginx-l7", nginx_l7, nginx_workers(nginx)),
            BenchPath("haproxy-l7", haproxy_l7, process_tree(haproxy)),
            BenchPath("meshd-l7", meshd_l7, process_tree(meshd)),
            BenchPath("haproxy-l4", haproxy_l4, process_tree(haproxy)),
            BenchPath("meshd-l4", meshd_l4, process_tree(meshd)),
            BenchPath("meshd-l7-w2", w2_l7, process_tree(meshd_w2)),
            BenchPath("trio-relay", relay, process_tree(relay_proc)),
        ]
        for path in paths:
            check_path(path)
        status, _, head = http_get(admin, "/metrics")
        if status != 200:
            raise BenchError(f"meshd /metrics is not serving:\n{head}")
        # Idle: let the check requests' connections settle before reading the footprint.
        time.sleep(1.0)
        idle_rss = sum(rss_kb(pid) for pid in process_tree(meshd)())
        pure_rss = sum(rss_kb(pid) for pid in process_tree(pure)()) if pure else 0
        pure_lines = []
        results = []
        for path in paths:
            results.append(measure_path(ctx, tools["wrk"], path))
            print(f"dataplane: measured {path.name}", file=sys.stderr, flush=True)
        compared = [p for p in paths if p.name in COMPARED]
        extra = []
        for index in range(1, rounds_from_env()):
            order = paired_order(compared, index)
            extra.append([measure_path(ctx, tools["wrk"], p) for p in order])
            print(f"dataplane: measured round {index + 1}", file=sys.stderr, flush=True)
        if pure is not None:
            mine, pure_tree = process_tree(meshd), process_tree(pure)
            pairs = {"l7": ((meshd_l7, mine), (pure_l7, pure_tree))}
            pairs["l4"] = ((meshd_l4, mine), (pure_l4, pure_tree))
            pure_lines = compare_pure(ctx, tools["wrk"], pairs)
            pure_lines.append(f"INFO rss_mb_meshd_idle_pure={pure_rss / 1024:.2f}")
        started = (backend_proc, nginx, haproxy, meshd, meshd_w2, relay_proc)
        for proc in (*started, *([pure] if pure else [])):
            if not proc.alive():
                raise BenchError(f"{proc.name} died during the run:\n{proc.log_tail()}")
        # Started only now, so their reports and taps cost the paths above nothing.
        with to.sidecars(ctx, procs, backend) as side:
            rounds = to.measure(ctx, tools["wrk"], side)
            print("dataplane: measured the telemetry sidecars", file=sys.stderr, flush=True)
            side.check()
    floors = (
        import_floor_kb(ctx, REQUIRED_IMPORTS),
        import_floor_kb(ctx, REQUIRED_IMPORTS + RECOMMENDED_IMPORTS),
    )
    _report(results, extra, idle_rss, floors, lambda: to.report(rounds, side).ratio)
    for line in pure_lines:
        print(line)
